"""The host side against deliberately broken workers: ones that never say hello, die at
start, send garbage, ignore interrupts, and user code that forges frames on the channel.
Each must end in a named error, with the process gone and the event loop unharmed."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import (
    HardTimeout,
    ProtocolViolation,
    SandboxLost,
    SandboxStartError,
    WorkerError,
)
from sandbox.handle import SandboxHandle
from sandbox.pool import launch
from sandbox.process import LocalProcess

CFG = SandboxConfig(backend="local", start_timeout_s=1.5, exec_timeout_s=1.0, hard_grace_s=1.0)


async def _fake(script: str) -> LocalProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    return LocalProcess(proc)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); its state in /proc says it is dead.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] in "ZX"


async def test_a_worker_that_never_says_hello_is_a_start_error() -> None:
    proc = await _fake("import time\ntime.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(SandboxStartError, match="RLM_SANDBOX_START_TIMEOUT_S"):
        await SandboxHandle.start(proc, CFG)
    assert time.perf_counter() - t0 < 5
    assert _gone(proc._proc.pid)


async def test_a_worker_that_dies_at_start_says_so() -> None:
    proc = await _fake("import sys\nsys.stderr.write('boom: cannot start')\nsys.exit(3)")
    with pytest.raises(SandboxStartError, match="died at start-up") as err:
        await SandboxHandle.start(proc, CFG)
    assert "exited with code 3" in str(err.value) and "boom" in str(err.value)


async def test_garbage_instead_of_frames_is_a_protocol_violation() -> None:
    proc = await _fake(
        """
        import sys, time
        sys.stdout.buffer.write(b"\\x00\\x00\\x00\\x05\\x00\\x00\\x00\\x00hello")
        sys.stdout.flush()
        time.sleep(60)
        """
    )
    with pytest.raises(SandboxStartError, match="broke the protocol"):
        await SandboxHandle.start(proc, CFG)
    assert _gone(proc._proc.pid)


async def test_an_oversized_frame_header_is_refused_before_reading_it() -> None:
    proc = await _fake(
        """
        import sys, time
        sys.stdout.buffer.write(b"\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x00")
        sys.stdout.flush()
        time.sleep(60)
        """
    )
    with pytest.raises(SandboxStartError, match="size limits"):
        await SandboxHandle.start(proc, CFG)


async def test_user_code_forging_frames_on_the_channel_loses_only_its_sandbox() -> None:
    handle = await launch(CFG)
    try:
        # Hostile code finds the channel's descriptor and writes a frame of its own.
        code = (
            "import os\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            "        if os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:') and fd != 3:\n"
            "            os.write(fd, b'\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x00{}')\n"
            "    except OSError:\n"
            "        pass\n"
        )
        with pytest.raises(SandboxLost) as err:
            await handle.exec(code)
        assert isinstance(err.value, ProtocolViolation)
        assert not handle.alive
    finally:
        await handle.close()
    # The host is fine: a new sandbox works.
    async with await launch(CFG) as fresh:
        assert (await fresh.exec("1 + 1")).stdout == "2\n"


async def test_code_that_ignores_interrupts_is_killed_when_cancelled() -> None:
    handle = await launch(CFG)
    try:
        code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"
        task = asyncio.ensure_future(handle.exec(code))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await handle.quiesce(timeout_s=0.5)  # it ignores SIGINT: the sandbox is killed
        assert not handle.alive
        assert isinstance(handle.lost_error, HardTimeout)
        with pytest.raises(SandboxLost):
            await handle.exec("1")
    finally:
        await handle.close()


async def test_a_request_the_worker_cannot_serve_is_a_worker_error_and_the_sandbox_lives() -> None:
    async with await launch(CFG) as handle:
        with pytest.raises(WorkerError, match="no value handed over"):
            await handle.new_namespace("child", context_ref="never-handed-over")
        assert handle.alive and (await handle.exec("1 + 1")).stdout == "2\n"
