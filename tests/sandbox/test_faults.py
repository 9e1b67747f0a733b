"""Faults in a gVisor sandbox (through Docker, and runsc run directly): each gives a clear
error and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from loadtest.hostmem import cmdlines
from sandbox.config import SandboxConfig
from sandbox.errors import HardTimeout, MemoryLimit, SandboxLost
from sandbox.handle import SandboxHandle, SandboxState
from sandbox.pool import launch

from .conftest import assert_no_leak


@pytest.fixture
async def box(contained_cfg: SandboxConfig) -> AsyncIterator[SandboxHandle]:
    handle = await launch(contained_cfg)
    cid = handle.process.id  # type: ignore[attr-defined]
    try:
        yield handle
    finally:
        await handle.close()
    await assert_no_leak([cid])


async def test_busy_loop_hits_the_soft_timeout(box: SandboxHandle) -> None:
    await box.exec("kept = 1")
    t0 = time.monotonic()
    r = await box.exec("while True: pass")
    assert r.error is not None and r.error["type"] == "TimeoutError"
    assert 1.9 < time.monotonic() - t0 < 4.0
    assert (await box.exec("kept + 1")).stdout == "2\n"
    assert box.state is SandboxState.READY


async def test_stuck_in_c_is_killed_at_the_hard_deadline(
    box: SandboxHandle, contained_cfg: SandboxConfig
) -> None:
    await box.exec("kept = 1")
    t0 = time.monotonic()
    with pytest.raises(HardTimeout, match="hard deadline of 5s"):
        await box.exec(
            "import collections, itertools\ncollections.deque(itertools.count(), maxlen=0)"
        )
    elapsed = time.monotonic() - t0
    assert contained_cfg.hard_timeout_s <= elapsed < contained_cfg.hard_timeout_s + 3
    assert box.state is SandboxState.LOST
    with pytest.raises(HardTimeout):
        await box.get_var("kept")  # the session learns its sandbox is gone


async def test_swallowed_timeouts_are_killed(box: SandboxHandle) -> None:
    code = (
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            pass\n"
        "    except BaseException:\n"
        "        n += 1\n"
    )
    with pytest.raises(HardTimeout):
        await box.exec(code)
    assert box.state is SandboxState.LOST


async def test_memory_bomb(box: SandboxHandle) -> None:
    lost: SandboxLost | None = None
    try:
        r = await box.exec("blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))")
    except (MemoryLimit, SandboxLost) as exc:
        lost = exc
    if lost is not None:  # gVisor's OOM kills the whole sandbox
        assert "memory" in str(lost) or "killed" in str(lost), lost
        assert box.state is SandboxState.LOST
        return
    assert r.error is not None and r.error["type"] == "MemoryError", r
    r = await box.exec("del blocks\nimport gc\ngc.collect()\n'alive'")  # freed, usable again
    assert r.stdout == "'alive'\n"


async def test_fork_bomb_fails_cleanly(box: SandboxHandle) -> None:
    code = (
        "import os\n"
        "kids, err = [], None\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            import time\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError as exc:\n"
        "    err = exc\n"
        "print(len(kids), type(err).__name__)\n"
        "for k in kids:\n"
        "    os.kill(k, 9)\n"
        "for k in kids:\n"
        "    os.waitpid(k, 0)\n"
    )
    r = await box.exec(code)
    assert r.error is None, r.stderr
    forked, err = r.stdout.split()
    assert int(forked) < 64 and err in ("BlockingIOError", "OSError", "PermissionError"), r.stdout
    assert (await box.exec("'alive'")).stdout == "'alive'\n"


async def test_huge_print_is_truncated_quickly(box: SandboxHandle) -> None:
    t0 = time.monotonic()
    r = await box.exec("print('x' * (100 * 2**20))")
    assert time.monotonic() - t0 < 2.0
    assert r.error is None
    assert len(r.stdout) == box.cfg.output_cap_chars
    assert r.dropped_chars == 100 * 2**20 + 1 - box.cfg.output_cap_chars
    assert "more characters of output were dropped" in r.output()


async def test_huge_write_to_fd_is_truncated(box: SandboxHandle) -> None:
    r = await box.exec("import os\nfor _ in range(20):\n    os.write(1, b'y' * 2**20)")
    assert r.error is None, r.stderr
    assert "more bytes written to fd 1/2 were dropped" in r.stdout
    assert len(r.stdout) < box.cfg.output_cap_chars + 200


async def test_filling_tmp_fails_the_write(box: SandboxHandle) -> None:
    code = (
        "import errno\n"
        "written = 0\n"
        "try:\n"
        "    with open('/tmp/fill', 'wb') as f:\n"
        "        while True:\n"
        "            f.write(b'z' * 2**20)\n"
        "            written += 1\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode.get(exc.errno), written)\n"
    )
    r = await box.exec(code)
    assert r.error is None, r.stderr
    code_name, written = r.stdout.split()
    assert code_name in ("ENOSPC", "EFBIG") and int(written) <= 40, r.stdout
    r = await box.exec("import os\nos.remove('/tmp/fill')\nopen('/tmp/small', 'w').write('ok')")
    assert (r.stdout, r.error) == ("2\n", None)


async def test_killed_from_outside_mid_exec(
    box: SandboxHandle, contained_cfg: SandboxConfig
) -> None:
    from sandbox.docker_backend import client

    task = asyncio.create_task(box.exec("import time\ntime.sleep(1.5)"))
    await asyncio.sleep(0.5)
    cid = box.process.id  # type: ignore[attr-defined]
    if contained_cfg.backend == "docker":
        await asyncio.to_thread(lambda: client().containers.get(cid).kill())
    else:  # the sentry's host process, as an operator's (or the OOM killer's) kill would
        sentry = [p for p, c in cmdlines() if c.startswith("runsc-sandbox") and cid in c]
        os.kill(sentry[0], signal.SIGKILL)
    with pytest.raises(SandboxLost, match="sandbox lost") as info:
        await asyncio.wait_for(task, 10)
    assert not isinstance(info.value, HardTimeout)
    assert "exit" in str(info.value) or "disappeared" in str(info.value)
    assert box.state is SandboxState.LOST
    with pytest.raises(SandboxLost):
        await box.exec("1")


async def test_worker_death_is_reported(box: SandboxHandle) -> None:
    with pytest.raises(SandboxLost, match="exited with code 3"):
        await box.exec("import os\nos._exit(3)")
