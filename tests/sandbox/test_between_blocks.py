"""Nothing of user code runs between code blocks (issue 12: CPU left burning after a block).

Processes a block starts are killed when it returns, however they tried to get away (setsid,
a double fork), and the block's output says so. Threads stay (their state is the user's), but
they run only while a block runs, on the block's own measured time: while the REPL waits for
the host it keeps the GIL. Run on both backends like the contract suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle

START = r"""
import os, subprocess, time
pids = [subprocess.Popen(["sleep", "1000"]).pid]
pid = os.fork()
if pid == 0:
    os.setsid()
    while True:
        pass  # burns a core until stopped
pids.append(pid)
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a double fork: the grandchild is an orphan in its own session
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        while True:
            time.sleep(0.01)
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.waitpid(pid, 0)
pids.append(int(os.read(r, 20)))
print(*pids)
"""

ALIVE = r"""
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
print([pid for pid in pids if alive(pid)])
"""


async def test_processes_a_block_started_are_stopped_when_it_returns(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    r = await sandbox.exec(START)
    assert r.error is None, r.output()
    pids = [int(p) for p in r.stdout.split()]
    try:
        assert len(pids) == 3
        assert "3 process(es) this block started were stopped" in r.stderr
        after = await sandbox.exec(ALIVE)
        assert after.stdout == "[]\n", after.output()
        assert "were stopped" not in after.stderr  # nothing new to stop, nothing said
        if cfg.backend == "local":  # host pids: check from here too
            for pid in pids:
                assert _zombie(pid)  # gone, or only waiting to be reaped
        # A process that ends within its block is none of this: no note.
        done = await sandbox.exec("import subprocess\nsubprocess.run(['true']).returncode")
        assert (done.stdout, done.stderr) == ("0\n", "")
        # The session goes on with its variables.
        assert (await sandbox.exec("len(pids)")).stdout == "3\n"
    finally:
        if cfg.backend == "local":  # never leave a host process behind, even on failure
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


SPIN = r"""
import threading, time
ticks = [0]
def spin():
    while True:
        ticks[0] += 1
threading.Thread(target=spin, daemon=True).start()
a = ticks[0]; time.sleep(0.3); rate = (ticks[0] - a) / 0.3  # ticks per second while we run
left_at = ticks[0]
"""


async def test_threads_do_not_run_between_blocks(sandbox: SandboxHandle) -> None:
    r = await sandbox.exec(SPIN)
    assert r.error is None, r.output()
    rate = float((await sandbox.exec("rate")).stdout)
    assert rate > 1000, rate  # the thread does run while a block runs
    mark = int((await sandbox.exec("ticks[0]")).stdout)
    await asyncio.sleep(1.5)  # the session is idle: the thread would spin all along
    # The first statement of the next block reads the counter before the thread gets a turn.
    idle = int((await sandbox.exec("ticks[0]")).stdout) - mark
    # A free-running thread would have made about rate * 1.5 ticks; it may only run in the
    # short slices the REPL takes to handle frames (the block reading the counter included).
    assert idle < rate * 0.25, (idle, rate)
    # And it still runs (and keeps its state) when a block runs again.
    r = await sandbox.exec("a = ticks[0]\ntime.sleep(0.2)\nticks[0] > a")
    assert r.stdout == "True\n", r.output()
