"""More scripted-model policies for the load tests and benchmarks (``loadtest.upstream`` has
the base ones and the server).

Each policy plays the root model of an RLM run and works with this service's engine *and*
the official library (``rlms``): both send a system prompt containing ```` ```repl ````, so
``is_root_request`` tells root calls from sub-calls. The official library (0.1.x) only
finishes through the ``answer`` dict, so the policies that the comparison uses finish that
way; this engine accepts it too.

* ``needle_answer_policy``: the needle task in two root iterations (search, then
  ``answer["content"] = N``), for the side-by-side benchmarks;
* ``multi_turn_policy``: turn 1 stores a code word in a variable and in ``state``; turn 2
  reads both back and answers the variable's value (``mismatch``/``lost`` when they differ
  or are gone);
* ``wrong_needle_policy``: finds the number and answers another one (tests that the load
  test's check fails);
* ``IterationsPolicy(n)``: ``n`` root iterations of a trivial block each, then an answer
  (engine overhead per iteration);
* ``scenario_policy``: what the local load test's upstream runs, dispatching on the query
  to the needle or the multi-turn policy.
"""

from __future__ import annotations

import re
from typing import Any

from loadtest.upstream import (
    NEEDLE_CODE,
    Policy,
    is_root_request,
    needle_policy,
    sub_answer,
    text_of,
)

CODE_WORD_RE = re.compile(r"code word\s+([A-Za-z0-9_-]+)", re.IGNORECASE)


def _answer_block(value: str) -> str:
    return f'```repl\nanswer["content"] = {value!r}\nanswer["ready"] = True\n```'


def query_of(body: dict[str, Any]) -> str:
    """The user's query as the root model sees it (this engine's or the official prompts)."""
    for msg in body.get("messages") or []:
        if msg.get("role") != "user":
            continue
        text = text_of(msg)
        ours = re.search(r"Query: (.*?)\n\nYour next action:", text, re.DOTALL)
        if ours:
            return ours.group(1)
        official = re.search(r"Answer the following: (.*?)\n\n", text, re.DOTALL)
        if official:
            return official.group(1)
    return ""


def _repl_outputs(body: dict[str, Any]) -> list[str]:
    """Texts of the user messages that report REPL output, oldest first."""
    return [
        text_of(m)
        for m in body.get("messages") or []
        if m.get("role") == "user" and "REPL output" in text_of(m)
    ]


def needle_answer_policy(body: dict[str, Any]) -> str:
    """Search ``context`` for the magic number, then answer it through the ``answer`` dict."""
    if not is_root_request(body):
        return sub_answer(body)
    for text in reversed(_repl_outputs(body)):
        found = re.search(r"FOUND (\d+|nothing)", text)
        if found:
            return "The search printed the number.\n" + _answer_block(found.group(1))
    return "Let me search the context for the magic number.\n" + NEEDLE_CODE


def wrong_needle_policy(body: dict[str, Any]) -> str:
    """Like ``needle_policy`` but answers the number plus one: a load test must flag it."""
    reply = needle_policy(body)
    found = re.search(r"FINAL\((\d+)\)", reply)
    if found:
        return f"FINAL({int(found.group(1)) + 1})"
    return reply


def multi_turn_policy(body: dict[str, Any]) -> str:
    """Turn 1 ("remember the code word X"): store X; turn 2 ("what is the code word"): recall."""
    if not is_root_request(body):
        return sub_answer(body)
    query = query_of(body)
    outputs = _repl_outputs(body)
    last = outputs[-1] if outputs else ""
    stored = re.search(r"STORED (\S+)", last)
    if stored:
        return f"Stored it.\nFINAL(stored {stored.group(1)})"
    recalled = re.search(r"RECALL (\S+) (\S+)", last)
    if recalled:
        var, st = recalled.groups()
        return f"FINAL({var if var == st else f'mismatch {var} {st}'})"
    if outputs:  # the block ran but printed neither: the variable or state is gone
        return "FINAL(lost)"
    word = CODE_WORD_RE.search(query)
    if word and "remember" in query.lower():
        code = (
            f"code_word = {word.group(1)!r}\n"
            "state_set('code_word', code_word)\n"
            "print('STORED', code_word)"
        )
    else:
        code = "print('RECALL', code_word, state_get('code_word'))"
    return f"```repl\n{code}\n```"


class IterationsPolicy:
    """``n`` root iterations: ``n - 1`` trivial blocks, then an answer block (also code)."""

    def __init__(self, n: int) -> None:
        self.n = max(1, n)

    def __call__(self, body: dict[str, Any]) -> str:
        if not is_root_request(body):
            return sub_answer(body)
        done = sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")
        if done + 1 >= self.n:
            return _answer_block(f"done after {done + 1}")
        return f"```repl\nx = {done}\nprint('step', x)\n```"


def scenario_policy(body: dict[str, Any]) -> str:
    """The local load test's model: multi-turn queries by their words, the rest as needle."""
    if is_root_request(body) and CODE_WORD_RE.search(query_of(body)):
        return multi_turn_policy(body)
    return needle_answer_policy(body)


POLICIES: dict[str, Policy] = {
    "scenarios": scenario_policy,
    "needle": needle_policy,
    "needle-answer": needle_answer_policy,
    "multi": multi_turn_policy,
    "wrong-needle": wrong_needle_policy,
}
