"""The RLM loop against the scripted upstream through the real openai client."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from loadtest.upstream import Reply, Script, ScriptedUpstream
from sandbox.handle import SandboxHandle
from service.errors import UpstreamError
from service.rlm.engine import RLMEngine
from service.rlm.trajectory import Redactor, TrajectoryWriter
from tests.service.conftest import Router, haystack, make_budget


def repl(code: str, prose: str = "Working.") -> str:
    return f"{prose}\n```repl\n{code}\n```"


async def run(
    engine: RLMEngine, sandbox: SandboxHandle, query: str, context: Any = "ctx", **budget: Any
):
    info = await sandbox.load(context, "root", ("context_0", "context"))
    events: list[dict[str, Any]] = []
    b = make_budget(**budget)
    result = await engine.run(
        query=query, sandbox=sandbox, context_info=info, budget=b, emit=events.append
    )
    return result, b, events


async def test_needle_in_ten_thousand_lines(engine, sandbox, up: ScriptedUpstream) -> None:
    result, _budget, events = await run(
        engine, sandbox, "What is the magic number?", haystack(magic=987654)
    )
    assert result.answer == "987654"
    assert result.how == "final" and result.stopped_by is None
    assert result.iterations == 2
    # The first prompt carried the safeguard and the context's size, never the context.
    first = up.stats.requests[0]["messages"]
    assert "not looked at the context yet" in first[-1]["content"]
    assert "characters" in first[0]["content"]
    assert "the magic number is" not in json.dumps(first)
    assert [e["event"] for e in events] == ["run_start", "iteration", "code", "iteration", "final"]


@pytest.mark.parametrize(
    ("reply", "expected", "how"),
    [
        (
            "Done.\nFINAL(the answer (with parens) is\nmulti-line)",
            "the answer (with parens) is\nmulti-line",
            "final",
        ),
        (repl("result = 6 * 7") + "\nFINAL_VAR(result)", "42", "final_var"),
        (repl("value = 'from code'\nFINAL_VAR('value')"), "from code", "final_var"),
        (
            repl("answer['content'] = 'dict protocol'\nanswer['ready'] = True"),
            "dict protocol",
            "answer",
        ),
    ],
)
async def test_each_finishing_protocol(
    engine, sandbox, up, reply: str, expected: str, how: str
) -> None:
    up.policy = Router([reply])
    result, _, _ = await run(engine, sandbox, "q")
    assert (result.answer, result.how) == (expected, how)
    assert up.stats.calls == 1


async def test_answer_dict_not_ready_is_not_an_answer(engine, sandbox, up) -> None:
    up.policy = Router([repl("answer['content'] = 'draft'"), "FINAL(final one)"])
    result, _, _ = await run(engine, sandbox, "q")
    assert result.answer == "final one"


async def test_final_var_of_missing_variable_is_told_and_loop_goes_on(engine, sandbox, up) -> None:
    up.policy = Router(
        [
            "FINAL_VAR(nothing_here)",
            repl("nothing_here = 'now it exists'") + "\nFINAL_VAR(nothing_here)",
        ]
    )
    result, _, _ = await run(engine, sandbox, "q")
    assert result.answer == "now it exists"
    second = up.stats.requests[1]["messages"]
    assert "names no variable" in second[-2]["content"]


async def test_several_blocks_run_in_order_and_an_exception_is_shown(engine, sandbox, up) -> None:
    reply = (
        repl("x = 1\nprint('first', x)")
        + "\n"
        + repl("x += 1\nprint('second', x)")
        + "\n"
        + repl("1 / 0")
    )
    up.policy = Router([reply, "FINAL(ok)"])
    result, _, events = await run(engine, sandbox, "q")
    assert result.answer == "ok"
    feedback = up.stats.requests[1]["messages"][-2]["content"]
    assert (
        feedback.index("first 1") < feedback.index("second 2") < feedback.index("ZeroDivisionError")
    )
    assert "Traceback" in feedback
    assert [e["block"] for e in events if e["event"] == "code"] == [0, 1, 2]


async def test_output_is_truncated_with_a_note(engine, sandbox, up) -> None:
    up.policy = Router([repl("print('y' * 50_000)"), "FINAL(done)"])
    await run(engine, sandbox, "q")
    feedback = up.stats.requests[1]["messages"][-2]["content"]
    assert "characters cut" in feedback
    assert len(feedback) < 21_000


async def test_forced_answer_at_the_iteration_limit(engine, sandbox, up) -> None:
    up.policy = Router(Script([repl("print(1)")] * 3 + ["FINAL(forced answer)"]))
    result, _, _ = await run(engine, sandbox, "q", max_iterations=3)
    assert result.answer == "forced answer"
    assert (result.how, result.stopped_by, result.iterations) == ("forced", "max_iterations", 3)
    assert "out of iterations" in up.stats.requests[-1]["messages"][-1]["content"]


async def test_empty_cut_off_and_code_free_responses_do_not_crash_or_spin(
    engine, sandbox, up
) -> None:
    up.policy = Router(
        ["", "```repl\nprint('never closed'", "just prose, no code", "FINAL(recovered)"]
    )
    result, _, _ = await run(engine, sandbox, "q")
    assert result.answer == "recovered" and result.iterations == 4
    msgs = up.stats.requests[-1]["messages"]
    text = json.dumps(msgs)
    assert "was empty" in text and "cut off" in text and "no ```repl block" in text


async def test_llm_query_batched_keeps_order_and_runs_concurrently(engine, sandbox, up) -> None:
    up.latency_s = 0.2
    code = "outs = llm_query_batched([f'item {i}' for i in range(8)])\nprint(outs)"
    up.policy = Router(
        [repl(code), "FINAL(done)"], sub=lambda b: "echo " + b["messages"][-1]["content"]
    )
    t0 = time.perf_counter()
    result, budget, _ = await run(engine, sandbox, "q")
    elapsed = time.perf_counter() - t0
    assert result.answer == "done"
    assert budget.sub_calls == 8
    assert up.stats.max_in_flight >= 8  # all eight in flight at once, not one by one
    # Two root calls plus one batch: about three call-times, far below the 10 of a serial loop.
    assert elapsed < 0.2 * 10
    feedback = [r for r in up.stats.requests if r["messages"][0]["role"] == "system"][1][
        "messages"
    ][-2]["content"]
    assert str([f"echo item {i}" for i in range(8)]) in feedback


async def test_rlm_query_depth_1_runs_a_child_with_its_own_namespace(engine, sandbox, up) -> None:
    def root(body: dict[str, Any]) -> str:
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if "sub-problem" in body["messages"][-1]["content"]:  # the child's root loop
            return repl(
                "print(type(context).__name__, len(context))\nanswer['content'] = 'child saw ' + context\nanswer['ready'] = True"
            )
        if n == 0:
            return repl(
                "secret_root_var = 1\nr = rlm_query('solve the sub-problem', context='abc')\nprint(r)"
            )
        return "FINAL(done)"

    up.policy = Router(root)
    result, _budget, events = await run(engine, sandbox, "q", max_depth=1)
    assert result.answer == "done"
    feedback = up.stats.requests[-1]["messages"][-2]["content"]
    assert "child saw abc" in feedback
    runs = {e["run"]: e["depth"] for e in events if e["event"] == "run_start"}
    assert sorted(runs.values()) == [0, 1]
    assert any(e["event"] == "sub_call" and e["kind"] == "rlm" for e in events)


async def test_rlm_query_depth_2_and_the_depth_limit(engine, sandbox, up) -> None:
    def root(body: dict[str, Any]) -> str:
        q = body["messages"][-1]["content"]
        if "level-two" in q:
            return repl("answer['content'] = 'L2:' + context\nanswer['ready'] = True")
        if "level-one" in q:
            return repl(
                "answer['content'] = 'L1>' + rlm_query('level-two', context=context + '!')\nanswer['ready'] = True"
            )
        return repl(
            "answer['content'] = rlm_query('level-one', context='ctx')\nanswer['ready'] = True"
        )

    up.policy = Router(root, sub=lambda b: "plain:" + b["messages"][-1]["content"][:20])
    result, _, events = await run(engine, sandbox, "q", max_depth=2)
    assert result.answer == "L1>L2:ctx!"
    assert sorted(e["depth"] for e in events if e["event"] == "run_start") == [0, 1, 2]

    # With max_depth 1 the second level is answered by one plain sub-model call.
    up.reset_stats()
    result, _, events = await run(engine, sandbox, "q", max_depth=1)
    assert result.answer.startswith("L1>plain:level-two")
    assert any(e["event"] == "sub_call" and e["kind"] == "rlm_as_llm" for e in events)


async def test_rlm_query_batched_and_state_shared_with_children(engine, sandbox, up) -> None:
    def root(body: dict[str, Any]) -> str:
        q = body["messages"][-1]["content"]
        if "child" in q and "Query: child" in q:
            return repl(
                "state_set('seen_' + context, state_get('from_root'))\nanswer['content'] = context.upper()\nanswer['ready'] = True"
            )
        return repl(
            "state_set('from_root', 'R')\nouts = rlm_query_batched([('child a', 'a'), ('child b', 'b'), ('child c', 'c')])\n"
            "answer['content'] = ','.join(outs) + '|' + ','.join(sorted(k for k in state_keys() if k.startswith('seen_')))\n"
            "answer['ready'] = True"
        )

    up.policy = Router(root)
    result, budget, _ = await run(engine, sandbox, "q")
    assert result.answer == "A,B,C|seen_a,seen_b,seen_c"
    assert budget.sub_calls == 3
    assert (await sandbox.variables())["state"][1]["repr"] == "'R'"


async def test_sub_call_budget_ends_the_run_with_a_partial_answer(engine, sandbox, up) -> None:
    code = "outs = [llm_query(f'q{i}') for i in range(5)]\nprint(outs)"
    up.policy = Router(["Trying.\n" + repl(code), "FINAL(never)"])
    result, budget, _ = await run(engine, sandbox, "q", max_sub_calls=3)
    assert result.stopped_by == "max_sub_calls" and result.how == "partial"
    assert result.answer == "Trying.\nWorking."
    assert budget.sub_calls == 3
    assert up.stats.calls == 1 + 3


async def test_token_budget_and_deadline(engine, sandbox, up) -> None:
    up.policy = Router(Script([repl("print('x')")] * 10))
    result, _budget, _ = await run(engine, sandbox, "q", max_total_tokens=1)
    assert result.stopped_by == "max_total_tokens" and result.iterations == 1

    up.latency_s = 0.3
    result, _budget, _ = await run(engine, sandbox, "q", timeout_s=0.5)
    assert result.stopped_by == "deadline"


async def test_usage_sums_equal_what_the_upstream_reported(engine, sandbox, up) -> None:
    code = "a = llm_query('one')\nb = llm_query_batched(['two', 'three'])\nc = rlm_query('child task', context='zz')"

    def root(body: dict[str, Any]) -> str:
        if "child task" in body["messages"][-1]["content"]:
            return "FINAL(child)"
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return repl(code) if n == 0 else "FINAL(ok)"

    up.policy = Router(root)
    _, budget, _ = await run(engine, sandbox, "q")
    assert budget.usage.prompt_tokens == up.stats.prompt_tokens > 0
    assert budget.usage.completion_tokens == up.stats.completion_tokens > 0
    assert budget.usage.calls == up.stats.calls == 6


async def test_upstream_errors_are_retried_then_reported(engine, sandbox, up) -> None:
    up.policy = Router(
        [Reply(status=429, text="slow down"), Reply(status=503), "FINAL(after retries)"]
    )
    result, _, _ = await run(engine, sandbox, "q")
    assert result.answer == "after retries" and up.stats.calls == 3

    up.policy = Router([Reply(status=400, text="bad model")])
    with pytest.raises(UpstreamError, match="400"):
        await run(engine, sandbox, "q")


async def test_sub_call_failure_reaches_code_as_error_string(engine, sandbox, up) -> None:
    up.policy = Router(
        [repl("r = llm_query('x')\nprint(r[:40])"), "FINAL(ok)"],
        sub=lambda b: Reply(status=400, text="nope"),
    )
    await run(engine, sandbox, "q")
    assert "Error: " in up.stats.requests[-1]["messages"][-2]["content"]


async def test_trajectory_file_in_the_official_shape_with_secrets_redacted(
    engine, sandbox, up, tmp_path
) -> None:
    writer = TrajectoryWriter(str(tmp_path), "traj-1", Redactor(["sk-very-secret-key"]))
    up.policy = Router(
        [repl("print('key is sk-very-secret-key')\nx = llm_query('hello')"), "FINAL(done)"]
    )
    info = await sandbox.load("ctx", "root", ("context",))
    await engine.run(
        query="q", sandbox=sandbox, context_info=info, budget=make_budget(), emit=writer
    )
    writer.write()
    lines = [json.loads(line) for line in (tmp_path / "traj-1.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "metadata" and lines[0]["root_model"] == "gpt-5"
    assert [x["type"] for x in lines[1:]] == ["iteration", "iteration"]
    block = lines[1]["code_blocks"][0]
    assert "[redacted]" in block["result"]["stdout"] and "sk-very-secret-key" not in json.dumps(
        lines
    )
    assert block["result"]["rlm_calls"][0]["prompt"] == "hello"
    assert lines[2]["final_answer"] == "done"
