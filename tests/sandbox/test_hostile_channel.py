"""Hostile code on the channel, on every backend.

Code in a sandbox can reach the worker object behind ``llm_query`` and, through it, the
protocol module and the channel's write descriptor: it can write any bytes the worker could.
Each test forges frames that way and checks the host's answer: floods are refused quickly
with the event loop responsive and the host's memory bounded; malformed or unasked-for
frames lose that sandbox only, with a ProtocolViolation naming the problem; time limits hold
whatever the code does with signals or frames, and waiting on the host never counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import handle as handle_module
from sandbox.config import SandboxConfig
from sandbox.errors import HardTimeout, ProtocolViolation, SandboxLost
from sandbox.handle import SandboxHandle
from sandbox.pool import launch
from sandbox.process import LocalProcess

from .conftest import assert_no_leak

# What hostile code does first: find the worker, its protocol module and the write fd.
PRELUDE = """\
import json, os, signal, struct, threading, time
W = llm_query.__self__
P = W.send.__globals__["proto"]
EXEC_ID = W.exec_stack[-1]

def raw(data):
    view = memoryview(data)
    while view:
        view = view[os.write(W.wfd, view):]

def forged(env, text=b""):
    data = json.dumps(env).encode() + b"\\n" + text
    return struct.pack(">II", len(data), 0) + data

"""

Make = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture
async def make(cfg: SandboxConfig) -> AsyncIterator[Make]:
    """Start sandboxes of the backend under test (with config changes); all closed after."""
    made: list[SandboxHandle] = []

    async def start(**changes: Any) -> SandboxHandle:
        handle = await launch(dataclasses.replace(cfg, **changes))
        made.append(handle)
        return handle

    yield start
    ids = [getattr(h.process, "id", "") for h in made]
    for handle in made:
        await handle.close()
    if cfg.backend != "local":
        await assert_no_leak(ids)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class LoopProbe:
    """Measures the event loop's lag (how late a 5 ms sleep wakes) and the peak RSS."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.base_rss = self.peak_rss = rss_bytes()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            self.max_lag = max(self.max_lag, time.perf_counter() - t0 - 0.005)
            self.peak_rss = max(self.peak_rss, rss_bytes())

    async def __aenter__(self) -> LoopProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.02)
        self.max_lag = 0.0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def rss_growth(self) -> int:
        return self.peak_rss - self.base_rss


async def slow_handler(kind: str, body: dict[str, Any]) -> Any:
    await asyncio.sleep(30)
    return "late"


# ---- (a) floods of maximum-size frames ------------------------------------------------------

FLOODS = {
    # A header announcing the most a running block may send, then junk: refused once the
    # envelope's end is not found in its first 64 KiB (the rest is never read).
    "junk": (
        (
            "frame = struct.pack('>II', P.MAX_JSON_BYTES, 0) + b'x' * P.MAX_JSON_BYTES\n"
            "while True:\n"
            "    raw(frame)\n"
        ),
        "envelope is longer than 65,536 bytes",
    ),
    # Maximum-size state frames: a state frame carries no string, refused before decoding.
    "state": (
        (
            "text = b'y' * (P.MAX_JSON_BYTES - 200)\n"
            "frame = forged({'v': P.VERSION, 'type': 'state', 'id': EXEC_ID,\n"
            "                'body': {'s': {'\\x00': 0}}, 'strs': [len(text)]}, text)\n"
            "while True:\n"
            "    raw(frame)\n"
        ),
        "state frame carries a string of",
    ),
    # The costliest frame to take apart: a full envelope of small floats and the longest
    # prompt of 4-byte characters, decoded, then refused for the stray field.
    "heavy": (
        (
            "text = '\\U0001F600'.encode() * P.MAX_PROMPT_CHARS\n"
            "frame = forged({'v': P.VERSION, 'type': 'call', 'id': 5, 'parent': EXEC_ID,\n"
            "                'body': {'kind': 'llm', 'prompt': {'\\x00': 0}, 'model': None,\n"
            "                         'pad': [1e5] * 6500}, 'strs': [len(text)]}, text)\n"
            "assert len(frame) - len(text) < P.MAX_ENVELOPE_BYTES\n"
            "while True:\n"
            "    raw(frame)\n"
        ),
        "call has unexpected fields 'pad'",
    ),
    # Valid calls with the longest prompt, as fast as the channel takes them.
    "calls": (
        (
            "prompt = 'z' * P.MAX_PROMPT_CHARS\n"
            "for i in range(10**9):\n"
            "    W.send(P.Frame('call', 10**6 + i, EXEC_ID,\n"
            "                   {'kind': 'llm', 'prompt': prompt, 'model': None}))\n"
        ),
        "made a call before its previous one was answered",
    ),
}


@pytest.mark.parametrize("flood", list(FLOODS))
async def test_a_flood_of_big_frames_is_refused_with_the_loop_responsive(
    make: Make, flood: str
) -> None:
    code, problem = FLOODS[flood]
    box = await make(exec_timeout_s=20.0)
    async with LoopProbe() as probe:
        t0 = time.perf_counter()
        with pytest.raises(ProtocolViolation, match=problem):
            await asyncio.wait_for(box.exec(PRELUDE + code, on_call=slow_handler), 30)
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.05)
    print(
        f"\n{box.cfg.backend} {flood}: lost after {elapsed:.2f}s, event-loop lag "
        f"{probe.max_lag * 1000:.1f} ms, RSS growth {probe.rss_growth / 2**20:.0f} MiB"
    )
    assert not box.alive and isinstance(box.lost_error, ProtocolViolation)
    assert elapsed < 10
    assert probe.max_lag < 0.5
    assert probe.rss_growth < 256 * 2**20  # one frame at a time, not 1.5 GB


# ---- (b) frames that break the schema or what the host asked for ----------------------------

FORGED = {
    "result_for_unknown_id": (
        "raw(forged({'v': P.VERSION, 'type': 'result', 'id': 999999, 'body': {}}))",
        "a result for request 999999, which is not pending",
    ),
    "second_hello": (
        "W.send(P.Frame('hello', 0, body={'python': '3', 'pid': 1, 'uid': 0}))",
        "a second hello",
    ),
    "unknown_call_kind": (
        "W.send(P.Frame('call', 10**6, EXEC_ID, {'kind': 'shell', 'cmd': 'id'}))",
        "unknown kind 'shell'",
    ),
    "ten_thousand_prompts": (
        (
            "W.send(P.Frame('call', 10**6, EXEC_ID,\n"
            "               {'kind': 'llm_batched', 'prompts': ['p'] * 10_000, 'model': None}))"
        ),
        "call.prompts has 10,000 items; between 1 and 1,000 allowed",
    ),
    "call_outside_a_code_block": (
        "W.send(P.Frame('call', 10**6, None, {'kind': 'llm', 'prompt': 'x', 'model': None}))",
        "a call from request None, which is not a running code block",
    ),
    "state_header_of_60_MB": (
        'raw(struct.pack(\'>II\', 60_000_000, 0) + b\'{"v":2,"type":"state","id":1,"body":{}}\\n\')',
        "frame of 60,000,000\\+0 bytes exceeds the size limits",
    ),
    "garbage_json": (
        "raw(struct.pack('>II', 18, 0) + b'{this is not json\\n')",
        "frame envelope is not JSON",
    ),
    "output_past_the_cap": (
        (
            "W.send(P.Frame('result', EXEC_ID, body={\n"
            "    'stdout': 'x' * (3 * W.output_cap), 'stderr': '', 'stdout_dropped': 0,\n"
            "    'stderr_dropped': 0, 'error': None, 'changed': [], 'duration_ms': 1}))"
        ),
        "result.stdout has .* characters, more than",
    ),
    "raw_blob": (
        "raw(struct.pack('>II', 0, 100) + b'b' * 100)",
        "announces a 100-byte blob; workers send none",
    ),
}


@pytest.mark.parametrize("case", list(FORGED))
async def test_a_forged_frame_loses_only_its_sandbox(make: Make, case: str) -> None:
    code, problem = FORGED[case]
    victim, bystander = await make(), await make()
    # The bystander is mid-block while the victim breaks the protocol.
    other = asyncio.create_task(bystander.exec("import time\ntime.sleep(0.5)\n'still here'"))
    with pytest.raises(ProtocolViolation, match=problem) as err:
        await asyncio.wait_for(
            victim.exec(PRELUDE + code + "\ntime.sleep(20)", on_call=slow_handler), 30
        )
    assert str(err.value).startswith("the sandbox broke the protocol: ")
    assert not victim.alive and victim.lost_error is err.value
    with pytest.raises(ProtocolViolation):
        await victim.exec("1")
    assert (await other).stdout == "'still here'\n"
    assert (await bystander.exec("1 + 1")).stdout == "2\n"


async def test_a_frame_sent_while_nothing_is_pending_is_held_to_small_sizes(make: Make) -> None:
    """A thread left behind writes after its block answered: the host asked for nothing."""
    box = await make()
    code = (
        # The REPL keeps the GIL while it waits, so its threads cannot run between blocks;
        # but that is the worker's own courtesy, which code in the same process can undo.
        "W.libc = None\n"
        "def later():\n"
        "    time.sleep(0.3)\n"
        "    raw(struct.pack('>II', 1_000_000, 0))\n"
        "threading.Thread(target=later).start()\n"
        "'returned'"
    )
    assert (await box.exec(PRELUDE + code)).stdout == "'returned'\n"
    for _ in range(200):
        if box.lost_error is not None:
            break
        await asyncio.sleep(0.05)
    assert isinstance(box.lost_error, ProtocolViolation)
    assert "nothing the host is waiting for may take more than 131,072" in str(box.lost_error)


async def test_a_flood_of_state_frames_is_a_violation(make: Make) -> None:
    box = await make()
    code = "while True:\n    W.send(P.Frame('state', EXEC_ID, busy=False))\n"
    with pytest.raises(ProtocolViolation, match="flood of state frames"):
        await asyncio.wait_for(box.exec(PRELUDE + code), 30)


# ---- (c, d) time limits the sandbox cannot lie about ----------------------------------------

IGNORE_SIGNALS = (
    "import signal\n"
    "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
)


async def test_code_ignoring_signals_and_lying_with_state_frames_is_killed_on_time(
    make: Make,
) -> None:
    box = await make(exec_timeout_s=1.0, hard_grace_s=1.0)
    code = IGNORE_SIGNALS + (
        "t0 = last = time.time()\n"
        "while time.time() - t0 < 60:\n"  # asks for a minute under a 1 s limit
        "    if time.time() - last > 0.05:\n"
        "        W.send(P.Frame('state', EXEC_ID, busy=False))\n"  # "I am not running"
        "        last = time.time()\n"
    )
    t0 = time.monotonic()
    with pytest.raises(HardTimeout, match="hard deadline of 2s"):
        await asyncio.wait_for(box.exec(PRELUDE + code), 30)
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 2.0 + 4.0  # soft limit + grace, plus the kill itself
    assert not box.alive


async def test_waiting_on_a_slow_model_call_does_not_count(make: Make) -> None:
    box = await make(exec_timeout_s=1.0, hard_grace_s=1.0)

    async def slow(kind: str, body: dict[str, Any]) -> Any:
        await asyncio.sleep(3.0)  # longer than soft limit + grace
        return f"slow answer to {body['prompt']}"

    code = (
        "import time\n"
        "t = time.time()\n"
        "while time.time() - t < 0.3: pass\n"
        "a = llm_query('one')\n"
        "while time.time() - t < 3.6: pass\n"  # 0.3 s of work, 3 s of waiting, 0.3 s of work
        "print(a)"
    )
    t0 = time.monotonic()
    result = await box.exec(code, on_call=slow)
    assert (result.error, result.stdout) == (None, "slow answer to one\n")
    assert time.monotonic() - t0 >= 3.0
    assert box.alive


async def test_nested_code_blocks_each_have_their_own_clock(make: Make) -> None:
    """rlm_query children run while their parent waits: only the running block is charged.

    Three children queued at once each run 1.2 s under a 3 s hard limit: the last one
    finishes 3.6 s after it was sent, but it ran for 1.2 s of it, so nobody is killed.
    """
    box = await make(exec_timeout_s=2.0, hard_grace_s=1.0)
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass\nFINAL(context)"

    async def children(kind: str, body: dict[str, Any]) -> Any:
        async def child(i: int, item: dict[str, Any]) -> str:
            ns = f"child-{i}"
            await box.new_namespace(ns, context_ref=item["context_ref"])
            result = await box.exec(busy, ns)
            assert result.error is None, result.stderr
            return str(result.final)

        return list(await asyncio.gather(*(child(i, it) for i, it in enumerate(body["items"]))))

    t0 = time.monotonic()
    result = await box.exec(
        "print(rlm_query_batched([('q', 'a'), ('q', 'b'), ('q', 'c')]))", on_call=children
    )
    assert (result.error, result.stdout) == (None, "['a', 'b', 'c']\n")
    assert time.monotonic() - t0 >= 3.6
    assert box.alive


async def test_a_nested_block_ignoring_signals_is_killed_at_its_own_limit(make: Make) -> None:
    box = await make(exec_timeout_s=5.0, hard_grace_s=1.0)
    started: list[float] = []

    async def child(kind: str, body: dict[str, Any]) -> Any:
        await box.new_namespace("child", context_ref=body["context_ref"])
        started.append(time.monotonic())
        await box.exec(IGNORE_SIGNALS + "while True: pass", "child", timeout_s=0.5)
        return "unreachable"

    with pytest.raises(HardTimeout, match=r"hard deadline of 1\.5s"):
        await asyncio.wait_for(box.exec("rlm_query('q', context='c')", on_call=child), 30)
    # Killed 1.5 s into the child (its limit), not at the parent's 6 s.
    assert 1.5 <= time.monotonic() - started[0] < 1.5 + 4.0


async def test_get_var_is_policed_by_the_host_too(make: Make) -> None:
    box = await make(exec_timeout_s=1.0, hard_grace_s=1.0)
    await box.exec(
        IGNORE_SIGNALS + "class Evil:\n    def __str__(self):\n        while True: pass\n"
        "    def __repr__(self):\n        return 'Evil()'\nevil = Evil()"
    )
    t0 = time.monotonic()
    with pytest.raises(HardTimeout, match=r"reading variables \(get_var\)"):
        await asyncio.wait_for(box.get_var("evil"), 30)
    assert 2.0 <= time.monotonic() - t0 < 2.0 + 4.0
    with pytest.raises(SandboxLost):
        await box.exec("1")


# ---- a scripted worker: the limits only a forger reaches --------------------------------------

SCRIPTED_WORKER = """
import sys
sys.path.insert(0, {sandbox_dir!r})
import protocol as P
out, inp = sys.stdout.buffer, sys.stdin.buffer
def send(frame):
    out.write(P.encode(frame))
    out.flush()
send(P.Frame("hello", 0, body={{"python": "3", "pid": 1, "uid": 1}}))
while True:
    header = inp.read(8)
    json_len, blob_len = P.check_header(header)
    frame = P.decode(header, inp.read(json_len + blob_len), P.HOST_TYPES)
    if frame.type == "exec":  # every block makes one call at once and never finishes
        send(P.Frame("call", 10**6 + frame.id, frame.id, {{"kind": "llm", "prompt": "p", "model": None}}))
"""


async def test_calls_outstanding_at_once_are_capped() -> None:
    """A worker makes one call at a time per code block; past MAX_CONCURRENT_CALLS it lies."""
    script = SCRIPTED_WORKER.format(sandbox_dir=str(Path(handle_module.__file__).parent))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    cfg = SandboxConfig(backend="local", exec_timeout_s=60.0)
    box = await SandboxHandle.start(LocalProcess(proc), cfg)
    try:
        cap = handle_module.MAX_CONCURRENT_CALLS
        blocks = [asyncio.create_task(box.exec("x", on_call=slow_handler)) for _ in range(cap + 1)]
        done, _ = await asyncio.wait(blocks, timeout=30)
        assert len(done) == cap + 1
        errors = {type(t.exception()) for t in done}
        assert errors == {ProtocolViolation}
        assert f"more than {cap} calls at once" in str(box.lost_error)
    finally:
        await box.close()
