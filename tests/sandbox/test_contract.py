"""The sandbox contract, run against every backend (local subprocess and Docker + runsc)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle

WORKER_SOURCE = Path(__file__).resolve().parents[2] / "sandbox" / "worker.py"


async def test_image_runs_this_checkouts_worker(docker_sandbox: SandboxHandle) -> None:
    """A stale image would make every Docker test exercise old code: `make image` fixes it."""
    r = await docker_sandbox.exec(
        "import hashlib\nhashlib.sha256(open('/opt/rlm/sandbox/worker.py','rb').read()).hexdigest()"
    )
    assert r.error is None, r.stderr
    want = hashlib.sha256(WORKER_SOURCE.read_bytes()).hexdigest()
    assert r.stdout.strip().strip("'") == want, "rlm-sandbox image is stale: run `make image`"


async def test_hello_reports_an_unprivileged_worker(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    assert sandbox.info["python"].startswith("3.")
    if cfg.backend != "local":
        assert sandbox.info["uid"] == 10001


async def test_last_expression_is_echoed(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec("x = 41\nx + 1")
    assert (r.stdout, r.error) == ("42\n", None)
    assert r.duration_ms >= 0
    r = await sandbox.exec("y = None\ny")  # None is not echoed, like the Python REPL
    assert r.stdout == ""
    r = await sandbox.exec("'text'")
    assert r.stdout == "'text'\n"


async def test_stdout_stderr_and_traceback(sandbox: SandboxHandle) -> None:
    code = (
        "import sys\n"
        "print('to out')\n"
        "print('to err', file=sys.stderr)\n"
        "def inner():\n"
        "    raise ValueError('bad value')\n"
        "inner()\n"
    )
    r = await sandbox.exec(code)
    assert r.stdout == "to out\n"
    assert r.error == {"type": "ValueError", "message": "bad value"}
    assert r.stderr.startswith("to err\nTraceback (most recent call last):")
    assert "raise ValueError('bad value')" in r.stderr and "in inner" in r.stderr
    assert "worker.py" not in r.stderr and "_run" not in r.stderr
    assert "to out" in r.output() and "ValueError: bad value" in r.output()


async def test_output_written_to_the_raw_fds_is_captured(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec(
        "import os\nos.write(1, b'raw one\\n')\nos.write(2, b'raw two\\n')\nNone"
    )
    assert r.error is None
    assert "raw one\n" in r.stdout and "raw two\n" in r.stdout
    r = await sandbox.exec("print('next')")
    assert r.stdout == "next\n"  # the capture was drained, not repeated


async def test_changed_names(sandbox: SandboxHandle) -> None:
    await sandbox.exec("a = [1]\nb = 2")
    r = await sandbox.exec("b = 3\nc = 'x'\n_hidden = 1\nstate_set('k', 1)")
    assert {c["name"]: c["repr"] for c in r.changed} == {"b": "3", "c": "'x'"}
    assert {c["name"]: c["type"] for c in r.changed} == {"b": "int", "c": "str"}


async def test_syntax_error_is_data(sandbox: SandboxHandle) -> None:
    await sandbox.exec("kept = 1")
    r = await sandbox.exec("kept = 2\ndef broken(:\n")
    assert r.error is not None and r.error["type"] == "SyntaxError"
    assert "SyntaxError" in r.stderr and "worker.py" not in r.stderr
    assert await sandbox.get_var("kept") == "1"  # nothing of the block ran


async def test_soft_timeout_keeps_the_namespace(sandbox: SandboxHandle) -> None:
    await sandbox.exec("x = 5")
    r = await sandbox.exec("import time\nwhile True:\n    time.sleep(0.01)", timeout_s=0.5)
    assert r.error is not None and r.error["type"] == "TimeoutError"
    assert "RLM_EXEC_TIMEOUT_S" in r.error["message"] and "0.5s" in r.error["message"]
    assert 400 <= r.duration_ms < 2000
    r = await sandbox.exec("x * 2")
    assert (r.stdout, r.error) == ("10\n", None)


async def test_output_cap_note(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec(
        "print('x' * 5000)\nimport sys\nprint('e' * 3000, file=sys.stderr)", output_cap=1000
    )
    assert r.error is None
    assert r.stdout == "x" * 1000
    assert r.dropped_chars == (5001 - 1000) + (3001 - 1000)
    assert r.output().endswith(f"[... {r.dropped_chars} more characters of output were dropped]")
    r = await sandbox.exec("import os\nos.write(1, b'y' * 3000)\nNone", output_cap=1000)
    assert r.stdout.startswith("y" * 1000) and "2000 more bytes" in r.stdout


async def test_final_var_final_and_answer(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec("res = 'forty-two'\nFINAL_VAR('res')")
    assert r.final == "forty-two"
    r = await sandbox.exec("FINAL_VAR([res])")  # a value, not a name
    assert r.final == "['forty-two']"
    r = await sandbox.exec("FINAL(6 * 7)")
    assert r.final == "42"
    r = await sandbox.exec("print('no final here')")
    assert r.final is None and r.answer is None
    r = await sandbox.exec("FINAL_VAR('missing')")
    assert r.final is None and "'missing' is not defined" in r.stdout
    r = await sandbox.exec("answer['content'] = 'draft'")
    assert r.answer is None  # not ready yet
    r = await sandbox.exec("answer['ready'] = True")
    assert r.answer == "draft"


async def test_get_var(sandbox: SandboxHandle) -> None:
    await sandbox.exec("y = {'a': 1}\ns = 'plain text'\n_private = 3")
    assert await sandbox.get_var("y") == "{'a': 1}"
    assert await sandbox.get_var("s") == "plain text"
    assert await sandbox.get_var("'s'") == "plain text"  # quoted, as models write it
    assert await sandbox.get_var("missing") is None
    assert await sandbox.get_var("_private") is None
    assert await sandbox.get_var("llm_query") is None  # helpers are not variables


async def test_variables(sandbox: SandboxHandle) -> None:
    await sandbox.exec("n = 3\nitems = list(range(100))\nstate['shared'] = 'yes'")
    out = await sandbox.variables()
    names = {v["name"]: v for v in out["vars"]}
    assert set(names) == {"n", "items"}
    assert names["n"] == {"name": "n", "type": "int", "repr": "3"}
    assert names["items"]["repr"].endswith("...]")  # short repr
    assert out["state"] == [{"name": "shared", "type": "str", "repr": "'yes'"}]


async def test_namespaces_are_isolated_but_share_state(sandbox: SandboxHandle) -> None:
    await sandbox.exec("secret = 1\nstate_set('k', 'from root')")
    info = await sandbox.new_namespace("child", context="child ctx")
    assert info["type"] == "str"
    r = await sandbox.exec(
        "print(state_get('k'), 'secret' in globals(), context)\nstate['k2'] = 2", "child"
    )
    assert (r.stdout, r.error) == ("from root False child ctx\n", None)
    r = await sandbox.exec("print(sorted(state_keys()), 'context' in globals())")
    assert r.stdout == "['k', 'k2'] False\n"
    await sandbox.drop_namespace("child")
    r = await sandbox.exec("'context' in globals()", "child")  # a new, empty namespace
    assert r.stdout == "False\n"
    r = await sandbox.exec("state_del('k')\nstate_keys()", "child")
    assert r.stdout == "['k2']\n"


async def test_reset(sandbox: SandboxHandle) -> None:
    await sandbox.exec("v = 1\nstate_set('k', 1)")
    await sandbox.new_namespace("other")
    await sandbox.reset()
    assert await sandbox.get_var("v") is None
    r = await sandbox.exec("state_keys()")
    assert r.stdout == "[]\n"
    assert (await sandbox.variables("other"))["vars"] == []


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("short context", "context == 'short context'"),
        (["a", "bb", {"n": 1}], "context == ['a', 'bb', {'n': 1}]"),
        (
            {"doc": "x" * 10, "ids": [1, 2]},
            "context['ids'] == [1, 2] and len(context['doc']) == 10",
        ),
        ("", "context == ''"),
    ],
)
async def test_load_small_values(sandbox: SandboxHandle, value: Any, check: str) -> None:
    info = await sandbox.load(value)
    assert info["type"] == type(value).__name__
    assert info["length"] == len(value)
    r = await sandbox.exec(check)
    assert (r.stdout, r.error) == ("True\n", None)


async def test_load_multi_chunk_text(sandbox: SandboxHandle) -> None:
    # 2-byte UTF-8 characters with an odd offset: chunk boundaries split characters.
    text = "a" + "é" * (3 * 1024 * 1024) + "END"
    assert len(text.encode()) > 4 * 1024 * 1024
    info = await sandbox.load(text, names=("context", "context_0"))
    assert info == {"type": "str", "length": len(text), "chars": len(text)}
    digest = hashlib.sha256(text.encode()).hexdigest()
    r = await sandbox.exec(
        "import hashlib\nprint(hashlib.sha256(context.encode()).hexdigest(), context is context_0)"
    )
    assert r.stdout == f"{digest} True\n"


async def test_a_context_resent_every_turn_is_kept_once(sandbox: SandboxHandle) -> None:
    # A stateless client sends the same context with every turn: one string, not one copy
    # per turn (the session's memory and its snapshot stay the size of one context).
    text = "the same context line\n" * 20_000  # 440 KB
    for turn in range(4):
        await sandbox.load(text, names=(f"context_{turn}", "context"))
    r = await sandbox.exec("print(context_0 is context_1 is context_2 is context_3 is context)")
    assert (r.stdout, r.error) == ("True\n", None)
    snap = await sandbox.snapshot(64 * 2**20)
    assert len(text) < len(snap.blob) < 2 * len(text)
    await sandbox.load(text + "!", names=("context_4", "context"))  # a new context: its own
    r = await sandbox.exec("print(context_4 is context_3, context_4 == context_3 + '!')")
    assert r.stdout == "False True\n"
    for turn in (5, 6):  # lists can change: equal ones are never shared
        await sandbox.load(["a", "b"], names=(f"context_{turn}", "context"))
    r = await sandbox.exec("print(context_5 is context_6, context_5 == context_6)")
    assert r.stdout == "False True\n"


async def test_load_multi_chunk_list(sandbox: SandboxHandle) -> None:
    docs = [f"doc {i} " + "z" * 1000 for i in range(6000)]  # about 6 MB of JSON
    info = await sandbox.load(docs, "child")
    assert info["type"] == "list" and info["length"] == 6000
    r = await sandbox.exec("len(context), context[5999][:8]", "child")
    assert r.stdout == "(6000, 'doc 5999')\n"


def make_handler(handle: SandboxHandle, log: list[tuple[str, Any]]) -> Any:
    """A test host: answers llm calls itself and runs rlm calls as nested code blocks."""
    depth_of: dict[str, int] = {}

    async def handler(kind: str, body: dict[str, Any]) -> Any:
        log.append((kind, body))
        if kind == "llm":
            return f"answer to {body['prompt']}"
        if kind == "llm_batched":

            async def one(i: int, p: str) -> str:
                await asyncio.sleep(random.random() * 0.05)  # finish out of order
                return f"{i}:{p.upper()}"

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(body["prompts"]))))
        if kind == "rlm":
            ns = f"child-{len(log)}"
            await handle.new_namespace(ns, context_ref=body["context_ref"])
            code = (
                "if len(context) > 1:\n"
                "    inner = rlm_query('again', context=context[1:])\n"
                "    FINAL(context[0] + '>' + inner + '|' + llm_query('leaf'))\n"
                "else:\n"
                "    FINAL('[' + context + ']')\n"
            )
            try:
                result = await handle.exec(code, ns, on_call=handler)
            finally:
                await handle.drop_namespace(ns)
            assert result.error is None, result.stderr
            depth_of[ns] = 1
            return result.final
        raise AssertionError(kind)

    return handler


async def test_llm_query_and_batched_order(sandbox: SandboxHandle) -> None:
    log: list[tuple[str, Any]] = []
    r = await sandbox.exec(
        "a = llm_query('what?')\nb = llm_query_batched([f'p{i}' for i in range(12)])\nprint(a)\nb",
        on_call=make_handler(sandbox, log),
    )
    assert r.error is None, r.stderr
    assert r.stdout.splitlines()[0] == "answer to what?"
    assert r.stdout.splitlines()[1] == repr([f"{i}:P{i}" for i in range(12)])
    assert [k for k, _ in log] == ["llm", "llm_batched"]
    assert log[0][1]["model"] is None
    assert (await sandbox.exec("llm_query_batched([])")).stdout == "[]\n"


async def test_rlm_query_depth_two(sandbox: SandboxHandle) -> None:
    log: list[tuple[str, Any]] = []
    await sandbox.exec("before = 'root var'")
    r = await sandbox.exec(
        "out = rlm_query('go', context='xyz')\nprint(out, before)",
        on_call=make_handler(sandbox, log),
    )
    assert r.error is None, r.stderr
    # depth 1 sees 'xyz', opens depth 2 on 'yz', which opens depth 3 on 'z'
    assert r.stdout == "x>y>[z]|answer to leaf|answer to leaf root var\n"
    assert [k for k, _ in log] == ["rlm", "rlm", "rlm", "llm", "llm"]
    # the root namespace is untouched by the children and usable
    r = await sandbox.exec(
        "sorted(k for k in globals() if not k.startswith('_') and k in ('out', 'before', 'inner'))"
    )
    assert r.stdout == "['before', 'out']\n"


async def test_rlm_query_batched(sandbox: SandboxHandle) -> None:
    log: list[tuple[str, Any]] = []
    handle_calls: list[str] = []

    async def handler(kind: str, body: dict[str, Any]) -> Any:
        handle_calls.append(kind)
        if kind == "rlm_batched":
            out = []
            for item in body["items"]:
                ns = f"b-{len(out)}"
                await sandbox.new_namespace(ns, context_ref=item["context_ref"])
                r = await sandbox.exec("FINAL(repr(globals().get('context')))", ns)
                out.append(f"{item['query']}={r.final}")
            return out
        return await make_handler(sandbox, log)(kind, body)

    r = await sandbox.exec(
        "rlm_query_batched(['q0', ('q1', [1, 2]), {'query': 'q2', 'context': 'c'}])",
        on_call=handler,
    )
    assert r.error is None, r.stderr
    assert r.stdout == repr(["q0=None", "q1=[1, 2]", "q2='c'"]) + "\n"


async def test_handler_failures_come_back_as_error_strings(sandbox: SandboxHandle) -> None:
    async def failing(kind: str, body: dict[str, Any]) -> Any:
        raise RuntimeError("upstream down")

    r = await sandbox.exec(
        "a = llm_query('x')\nb = llm_query_batched(['1', '2'])\nc = rlm_query('q')\nprint(a)\nprint(b)\nprint(c)",
        on_call=failing,
    )
    assert r.error is None, r.stderr
    assert r.stdout.splitlines() == [
        "Error: RuntimeError: upstream down",
        repr(["Error: RuntimeError: upstream down"] * 2),
        "Error: RuntimeError: upstream down",
    ]

    async def wrong_size(kind: str, body: dict[str, Any]) -> Any:
        return ["only one"]

    r = await sandbox.exec("llm_query_batched(['1', '2'])", on_call=wrong_size)
    assert "wrong size" in r.stdout
    r = await sandbox.exec("llm_query('no handler')")  # a block run without a handler
    assert r.stdout.startswith("'Error: ")


async def test_cancel_interrupts_and_sandbox_stays_usable(sandbox: SandboxHandle) -> None:
    await sandbox.exec("kept = 'still here'")
    task = asyncio.create_task(sandbox.exec("import time\nwhile True:\n    time.sleep(0.02)"))
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sandbox.quiesce()
    r = await sandbox.exec("kept")
    assert (r.stdout, r.error) == ("'still here'\n", None)


async def test_cancel_while_waiting_on_a_call(sandbox: SandboxHandle) -> None:
    started = asyncio.Event()

    async def slow(kind: str, body: dict[str, Any]) -> Any:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(
        sandbox.exec("r = llm_query('slow')\nstate_set('after', r)", on_call=slow)
    )
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sandbox.quiesce()
    r = await sandbox.exec("1 + 1")
    assert (r.stdout, r.error) == ("2\n", None)
    r = await sandbox.exec("state_get('after')")
    assert r.stdout in ("", "'Error: the request was cancelled'\n")


async def test_interrupt_is_a_keyboard_interrupt(sandbox: SandboxHandle) -> None:
    task = asyncio.create_task(sandbox.exec("import time\ntime.sleep(30)"))
    await asyncio.sleep(0.4)
    await sandbox.interrupt()
    r = await asyncio.wait_for(task, 5)
    assert r.error is not None and r.error["type"] == "KeyboardInterrupt"
    assert (await sandbox.exec("2")).stdout == "2\n"


async def test_forked_child_never_touches_the_channel(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec(
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    who = 'child'\n"  # the child falls back into the worker: it must just exit
        "else:\n"
        "    who = 'parent'\n"
        "    os.waitpid(pid, 0)\n"
        "who"
    )
    assert (r.stdout, r.error) == ("'parent'\n", None)
    assert (await sandbox.exec("who")).stdout == "'parent'\n"


async def test_hostile_str_cannot_hang_get_var(sandbox: SandboxHandle) -> None:
    await sandbox.exec(
        "class Evil:\n"
        "    def __str__(self):\n"
        "        while True:\n"
        "            pass\n"
        "    __repr__ = __str__\n"
        "evil = Evil()"
    )  # the changed-names repr of evil times out too, and the block still answers
    assert await sandbox.get_var("evil") == "<str() failed: TimeoutError>"
    out = await sandbox.variables()
    assert [v["name"] for v in out["vars"]] == ["Evil", "evil"]
    assert out["vars"][1]["repr"].startswith(("<Evil instance", "<unrepresentable Evil"))
    assert (await sandbox.exec("1")).stdout == "1\n"
