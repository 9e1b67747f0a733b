"""What the root model is told: the system prompt and the per-iteration user prompts."""

from __future__ import annotations

import time
from typing import Any

SYSTEM_PROMPT = """You answer a query about a context that may be far too large to read at once. \
You work in a persistent Python REPL where the context is already loaded. Write Python in \
```repl fenced blocks; each block runs in order, and you see what it prints (long output is \
cut, so print summaries and slices, never the whole context).

In the REPL you have:
- `context`: the data to work on ({context_desc}).
- `llm_query(prompt, model=None) -> str`: ask a sub-model one question. It can read about \
{sub_chars} characters at a time, so send it chunks of the context.
- `llm_query_batched(prompts, model=None) -> list[str]`: many questions at once, answered \
concurrently, in input order. Prefer it to a loop of llm_query calls.
- `rlm_query(query, context=None) -> str`: hand a sub-problem to a recursive RLM that gets \
its own REPL with `context` (default: the query itself). {depth_note}
- `rlm_query_batched(items) -> list[str]`: several recursive runs at once; items are \
queries or (query, context) pairs.
- `state`, `state_get(key, default=None)`, `state_set(key, value)`, `state_del(key)`, \
`state_keys()`: a dict shared with recursive runs and kept across the session's turns.
- `print(...)` to see values; variables persist between blocks and turns. Code runs only while its block runs: processes a block starts are stopped when it returns, and threads wait.
Model calls that fail return a string starting with "Error:". {models_note}

Example:
```repl
chunks = [context[i:i + 100_000] for i in range(0, len(context), 100_000)]
notes = llm_query_batched([f"List every date in this text:\\n{{c}}" for c in chunks])
print(notes[:3])
```

When you know the answer, finish in one of these ways:
1. In a code block: `answer["content"] = ...` then `answer["ready"] = True`.
2. Outside code, on its own line: FINAL(your answer here)
3. Outside code, on its own line: FINAL_VAR(variable_name) to answer with a variable's value \
(create the variable in a code block first; FINAL_VAR is also callable inside code).
Do not finish before you have looked at the context and checked your answer."""

FIRST_TURN = """You have not looked at the context yet. Look at it in the REPL first (its \
type, size, a sample) before answering.

Query: {query}

Your next action:"""

NEXT_TURN = """Continue working in the REPL towards the answer to the query, or finish if \
you have it.

Query: {query}

Your next action:"""

FORCE_FINAL = """You are out of iterations. Give your final answer now, on its own line as \
FINAL(your answer), based on what you have found so far."""

NO_CODE_NO_ANSWER = """Your last response had no ```repl block and no final answer. Write a \
```repl block to work on the context, or finish with FINAL(...)."""

EMPTY_RESPONSE = """Your last response was empty. Write a ```repl block, or finish with \
FINAL(...)."""

CUT_OFF = """Your last response was cut off inside a ```repl block, so that block did not run. \
Write shorter code blocks."""

MISSING_VAR = """FINAL_VAR({name}) names no variable in the REPL, so it is not an answer. \
Create `{name}` in a ```repl block first, or finish with FINAL(...)."""


def describe_context(info: dict[str, Any]) -> str:
    kind = info.get("type", "str")
    parts = [f"a {kind}"]
    if "length" in info and kind != "str":
        parts.append(f"of {info['length']:,} items")
    if "chars" in info:
        parts.append(f"with {info['chars']:,} characters in total")
    if info.get("item_chars"):
        parts.append(f"(item sizes: {info['item_chars'][:10]})")
    if info.get("keys"):
        parts.append(f"(keys: {', '.join(info['keys'][:10])})")
    return " ".join(parts)


def system_prompt(
    context_info: dict[str, Any],
    depth: int,
    max_depth: int,
    turn: int = 0,
    models: tuple[str, ...] = (),
) -> str:
    if depth < max_depth:
        depth_note = f"Recursion is allowed ({max_depth - depth} more level(s))."
    else:
        depth_note = "At this depth it is answered by a single sub-model call."
    desc = describe_context(context_info)
    models_note = (
        f"`model=` may name only these models: {', '.join(models)} (default: {models[0]})."
        if models
        else ""
    )
    prompt = SYSTEM_PROMPT.format(
        context_desc=desc, sub_chars="100,000", depth_note=depth_note, models_note=models_note
    )
    if turn > 0:
        prompt += (
            f"\n\nThis is turn {turn} of a session: `context` is this turn's data "
            f"(also `context_{turn}`); earlier turns' data are `context_0`..`context_{turn - 1}` "
            f"and their final answers `history_0`..`history_{turn - 1}`."
        )
    return prompt


def restored_notice(unpicklable: tuple[str, ...], turns: int, saved_at: float) -> str:
    """Told to the model on the first turn after a session came back from a snapshot."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(saved_at))
    text = (
        f"Note: this session was restored from a snapshot taken at {when}, after {turns} "
        f"turn(s): your variables, `state` and the earlier turns' context_N/history_N as they "
        "were then are back."
    )
    if unpicklable:
        names = ", ".join(unpicklable[:30]) + (" ..." if len(unpicklable) > 30 else "")
        text += (
            f" These could not be kept (open files, sockets, generators, locks...) and are "
            f"gone: {names}. Recreate them if you need them."
        )
    return text
