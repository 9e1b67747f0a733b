"""A reset is a fresh interpreter: nothing earlier code planted survives it.

Run on both backends like the contract suite. Earlier code plants everything it can (a
builtin, a patched module, a sys.modules entry, a thread, processes that escape with setsid
or a double fork, files in the scratch directories, a locked directory) and attacks the fork
server's parked spare (kill, stop, forged writes into its pipes, lowered limits); after the
reset none of it is there, and the session works. A REPL that dies any other way loses the
sandbox: it is never silently replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from typing import Any

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxLost, WorkerError
from sandbox.handle import SandboxHandle


@pytest.fixture
def docker_cfg(docker_cfg: SandboxConfig) -> SandboxConfig:
    """The shared Docker configuration with room for the fork server's processes.

    Under runsc's ptrace platform every live process costs host threads against the pids
    cap, growing with use (measured: an idle sandbox with the fork server, its REPL and the
    parked spare takes 49 host pids, and about 107 after 60 resets; the shared 64 kills the
    sandbox at its first reset).
    """
    return dataclasses.replace(docker_cfg, pids=max(docker_cfg.pids, 192))


async def run(box: SandboxHandle, code: str) -> str:
    r = await box.exec(code)
    assert r.error is None, r.output()
    return r.stdout


# Processes of the sandbox as sandbox code sees them: the server is our parent, the spare
# its other child.
FAMILY = """
import os
def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None, None
    return int(fields[1]), fields[0].decode()
def links(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out
SERVER = os.getppid()
import time
for _ in range(100):  # the spare is forked after us: it may not be there yet
    SPARES = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
              and _ppid(int(p))[0] == SERVER and _ppid(int(p))[1] != "Z"]
    if SPARES:
        break
    time.sleep(0.05)
time.sleep(0.2)  # and parked
"""

PLANT = r"""
import builtins, json, os, subprocess, sys, threading, time, types
TMP = os.environ.get("TMPDIR") or "/tmp"
builtins.RLM_PLANTED = "planted"
_real_dumps = json.dumps
def _spy(*a, **k):
    return _real_dumps(*a, **k)
_spy.planted = True
json.dumps = _spy
sys.modules["rlm_planted"] = types.ModuleType("rlm_planted")
state_set("planted", 1)
kept = "a variable"
open(os.path.join(TMP, "planted.txt"), "w").write("x")
os.makedirs(os.path.join(TMP, "deep", "er"))
open(os.path.join(TMP, "deep", "er", "f"), "w").write("x")
os.symlink("/etc/hostname", os.path.join(TMP, "link"))
os.chmod(os.path.join(TMP, "deep"), 0o500)  # a locked directory
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) and os.getpid() < 100:
    open("/dev/shm/planted", "w").write("x")  # the container's other tmpfs

def beat(name):
    while True:
        print(name + "-BEAT", flush=True)
        try:
            with open(os.path.join(TMP, name + "-beacon"), "a") as f:
                f.write(".")
        except OSError:
            pass
        time.sleep(0.02)

threading.Thread(target=beat, args=("thread",), daemon=True).start()
pids = []
proc = subprocess.Popen(["sleep", "1000"])
pids.append(proc.pid)
pid = os.fork()
if pid == 0:
    os.setsid()
    beat("setsid")
pids.append(pid)
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a double fork: the grandchild is an orphan in its own session
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        beat("orphan")
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.waitpid(pid, 0)
pids.append(int(os.read(r, 20)))
time.sleep(0.2)
sys.stdout.write("PIDS " + " ".join(map(str, pids)) + " END\n")  # one write
"""

CHECK = r"""
import builtins, json, os, sys, threading, time
TMP = os.environ.get("TMPDIR") or "/tmp"
time.sleep(0.3)  # a survivor would write its beacon again by now
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
print(hasattr(builtins, "RLM_PLANTED"), hasattr(json.dumps, "planted"),
      "rlm_planted" in sys.modules, threading.active_count())
print(sorted(os.listdir(TMP)), os.path.exists("/dev/shm/planted"))
print([pid for pid in PIDS if alive(pid)])
print(json.dumps({"a": 1}))
"""


async def test_reset_forgets_everything_planted(sandbox: SandboxHandle, cfg: SandboxConfig) -> None:
    out = await run(sandbox, PLANT)
    pids = [int(p) for p in out.split("PIDS ", 1)[1].split(" END", 1)[0].split()]
    assert len(pids) == 3
    try:
        await _check_reset_forgets(sandbox, cfg, pids)
    finally:
        if cfg.backend == "local":  # host processes: never leave one behind, even on failure
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _ids(out: str) -> tuple[str, str]:
    """(pid, ppid) from the block's "ids" line."""
    [line] = [ln for ln in out.splitlines() if ln.startswith("ids ")]
    _, pid, ppid = line.split()
    return pid, ppid


async def _check_reset_forgets(sandbox: SandboxHandle, cfg: SandboxConfig, pids: list[int]) -> None:
    # (The planted thread may print its beat into this block's output: it runs while a block
    # runs. Only the "ids" line is ours.)
    before = _ids(await run(sandbox, "print('ids', os.getpid(), os.getppid())"))
    await sandbox.reset()
    assert await sandbox.get_var("kept") is None
    # The namespace and the shared state are empty.
    assert await run(sandbox, "print(SHOW_VARS(), state_keys())") == "{} []\n"
    r = await sandbox.exec(f"PIDS = {pids!r}\n" + CHECK)
    assert r.error is None, r.output()
    planted, files, alive, clean = r.stdout.splitlines()
    assert planted == "False False False 1"  # builtins, json.dumps, sys.modules, threads
    assert files == "[] False"  # /tmp (the local backend's private TMPDIR) and /dev/shm
    assert alive == "[]"  # subprocess, setsid child, double-forked orphan
    assert clean == '{"a": 1}'
    assert "BEAT" not in r.stdout
    after = _ids(await run(sandbox, "print('ids', os.getpid(), os.getppid())"))
    assert after[1] == before[1]  # same fork server...
    assert after[0] != before[0]  # ...new interpreter
    if cfg.backend == "local":  # host pids: check from here too
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    assert (await sandbox.exec("x = 20\nx + 22")).stdout == "42\n"


async def test_many_resets_in_a_row(sandbox: SandboxHandle) -> None:
    seen = set()
    for i in range(12):
        out = await run(
            sandbox, "print(globals().get('n'), state_keys())\nimport os\nprint(os.getpid())"
        )
        first, pid = out.splitlines()
        assert first == "None []", i
        seen.add(pid)
        await run(sandbox, f"n = {i}\nstate_set('k', n)")
        await sandbox.reset()
    assert len(seen) == 12  # a fresh interpreter every time
    assert await run(sandbox, "print(1 + 1)") == "2\n"


@pytest.mark.parametrize("attack", ["kill", "stop", "forge", "limit"])
async def test_reset_survives_an_attack_on_the_spare(sandbox: SandboxHandle, attack: str) -> None:
    """Earlier code kills, stops, writes into or lowers a limit of the parked spare."""
    blows = {
        "kill": "os.kill(pid, 9)",
        "stop": "os.kill(pid, signal.SIGSTOP)",
        # Open the spare's private pipes (its release pipe, its notes to the server) and write
        # junk into them: gVisor lets a same-uid process do it (Linux refuses unless we are
        # root, the spare being non-dumpable). The channel is ours as much as the spare's.
        "forge": (
            "for fd in os.listdir(f'/proc/{pid}/fd'):\n"
            "    try:\n"
            "        link = os.readlink(f'/proc/{pid}/fd/{fd}')\n"
            "        if not link.startswith('pipe:') or link in links('self'):\n"
            "            continue\n"
            "        w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)\n"
            "        os.write(w, b'\\x00' * 40)\n"
            "        os.close(w)\n"
            "        hit += 1\n"
            "    except OSError:\n"
            "        pass"
        ),
        "limit": "resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16))",
    }
    code = FAMILY + "import resource, signal\nhit = 0\nfor pid in SPARES:\n"
    code += "".join(f"    {line}\n" for line in blows[attack].splitlines())
    code += "print(len(SPARES), SERVER)\nplanted = 1"
    out = await run(sandbox, code)
    spares, server = out.split()
    assert spares == "1", out
    await sandbox.reset()
    out = await run(
        sandbox,
        "import os, resource\nprint(globals().get('planted'), os.getppid(), resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 16)",
    )
    assert out.split() == ["None", server, "True"]
    await sandbox.reset()  # and the server has a spare again
    assert await run(sandbox, "print('fine')") == "fine\n"


async def test_a_lowered_limit_on_the_server_loses_the_sandbox(sandbox: SandboxHandle) -> None:
    """The server cannot undo it and every REPL it forks would inherit it. The spare forked
    before the change still serves; the next one finds the change before it serves anything,
    and the sandbox ends (its reset may still get an answer: the loss shows just after).
    FAMILY waits for that spare: on a loaded machine the first block can run before the
    server has forked it, and a spare forked after the change rightly never serves."""
    await run(
        sandbox,
        FAMILY + "import resource\nresource.prlimit(SERVER, resource.RLIMIT_NOFILE, (20, 20))",
    )
    await sandbox.reset()
    out = await run(sandbox, "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))")
    assert out != "(20, 20)\n"
    with pytest.raises(SandboxLost, match="lost"):  # noqa: PT012 - lost at once or just after
        await sandbox.reset()
        for _ in range(200):
            r = await sandbox.exec(
                "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))"
            )
            assert r.stdout != "(20, 20)\n"  # never served with the planted limit
            await asyncio.sleep(0.05)
    assert not sandbox.alive
    assert "limits or scheduling of the worker" in str(sandbox.lost_error)


async def test_exit_loses_the_sandbox(sandbox: SandboxHandle) -> None:
    await run(sandbox, "kept = 1")
    with pytest.raises(SandboxLost, match="code 3"):
        await sandbox.exec("import os\nos._exit(3)")
    assert not sandbox.alive
    with pytest.raises(SandboxLost):
        await sandbox.reset()


async def test_killed_repl_loses_the_sandbox(sandbox: SandboxHandle) -> None:
    with pytest.raises(SandboxLost):
        await sandbox.exec("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert not sandbox.alive


async def test_a_reset_inside_a_code_block_is_refused(sandbox: SandboxHandle) -> None:
    refused: list[str] = []

    async def handler(kind: str, body: dict[str, Any]) -> Any:
        try:
            await sandbox.reset()
        except WorkerError as exc:
            refused.append(str(exc))
        return "ok"

    r = await sandbox.exec("kept = 5\nreply = llm_query('q')\nprint(reply, kept)", on_call=handler)
    assert r.error is None, r.output()
    assert r.stdout == "ok 5\n"
    assert refused and "while a code block runs" in refused[0]
    assert await sandbox.get_var("kept") == "5"


async def test_interrupt_reaches_the_repl_after_a_reset(sandbox: SandboxHandle) -> None:
    """The host signals the sandbox's first process (the server), which forwards it."""
    await sandbox.reset()
    task = asyncio.ensure_future(sandbox.exec("import time\ntime.sleep(20)"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sandbox.quiesce(timeout_s=5)
    assert sandbox.alive
    assert await run(sandbox, "print('after')") == "after\n"


async def test_docker_server_is_out_of_reach(docker_sandbox: SandboxHandle) -> None:
    """PID 1 is the fork server; REPL code can neither trace nor write it or the spare."""
    code = FAMILY + (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out = [SERVER]\n"
        "for pid in [SERVER, *SPARES]:\n"
        "    out.append(libc.ptrace(16, pid, 0, 0) == -1 and ctypes.get_errno())\n"
        "    try:\n"
        "        open(f'/proc/{pid}/mem', 'r+b').close()\n"
        "        out.append('MEM OPEN')\n"
        "    except OSError as exc:\n"
        "        out.append(exc.errno)\n"
        "print(*out)"
    )
    out = (await run(docker_sandbox, code)).split()
    assert out == ["1", "1", "13", "1", "13"]  # EPERM (Yama), EACCES, for the server and spare


async def test_docker_server_holds_no_more_descriptors_after_resets(
    docker_sandbox: SandboxHandle,
) -> None:
    # Once the spare is there (FAMILY waits for it), the server holds the same descriptors.
    count = FAMILY + "print(len(os.listdir(f'/proc/{SERVER}/fd')))"
    await docker_sandbox.reset()
    first = await run(docker_sandbox, count)
    for _ in range(8):
        await docker_sandbox.reset()
    assert await run(docker_sandbox, count) == first


IPC = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
C = 0o1000
"""


@pytest.fixture
async def contained(contained_cfg: SandboxConfig) -> Any:
    from sandbox.pool import launch

    box = await launch(dataclasses.replace(contained_cfg, pids=max(contained_cfg.pids, 192)))
    try:
        yield box
    finally:
        await box.close()


async def test_a_reset_removes_system_v_ipc_objects(contained: SandboxHandle) -> None:
    """Shared memory, message queues and semaphore sets outlive their processes: a reset
    removes them, keyed or private, attached or not, so nothing stored there reaches the
    next interpreter."""
    made = await run(contained, IPC + (
        "ids = [libc.shmget(0x5eed, 4096, C | 0o000), libc.shmget(0, 4096, C | 0o600),\n"
        "       libc.msgget(0x5eed, C | 0o600), libc.semget(0x5eed, 1, C | 0o600)]\n"
        "assert libc.shmat(ids[1], None, 0) not in (None, -1)\n"
        "print(ids)"
    ))  # fmt: skip
    shm_key, shm_private, msg, sem = eval(made)  # noqa: S307 - a list of ints we printed
    assert min(shm_key, shm_private, msg, sem) >= 0
    for _ in range(2):  # the second reset finds nothing new: the ids made since the first
        await contained.reset()
        left = await run(contained, IPC + (
            "buf = ctypes.create_string_buffer(512)\n"
            "print(libc.shmget(0x5eed, 0, 0), libc.msgget(0x5eed, 0), libc.semget(0x5eed, 0, 0),"
            f" libc.shmctl({shm_private}, 2, buf), libc.shmat({shm_private}, None, 0))"  # IPC_STAT
        ))  # fmt: skip
        # (The segment the last REPL still had attached cannot be attached by its id.)
        assert left == "-1 -1 -1 -1 -1\n"
    # Objects keep working after a reset (the probe ids are not in the way).
    assert await run(contained, IPC + "print(libc.shmget(0x5eed, 4096, C | 0o600) >= 0)") == (
        "True\n"
    )


async def test_a_reset_empties_a_full_ipc_table(contained: SandboxHandle) -> None:
    """Code that fills the shared-memory table (no id left for the reset's probe): the
    reset still removes every segment."""
    out = await run(contained, IPC + (
        "n = 0\n"
        "while libc.shmget(0, 1, C | 0o600) >= 0 and n < 40000:\n"
        "    n += 1\n"
        "print(n, ctypes.get_errno())"
    ))  # fmt: skip
    n, err = map(int, out.split())
    assert n >= 1000 and err == 28, out  # ENOSPC: the table is full
    await contained.reset()
    assert await run(contained, IPC + (
        "ids = [libc.shmget(0, 1, C | 0o600) for _ in range(100)]\nprint(min(ids) >= 0)"
    )) == "True\n"  # fmt: skip


MQ_OPEN = (
    "import ctypes, os\n"
    "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
    "print(rt.mq_open(b'/left', os.O_CREAT | os.O_RDWR, 0o600, None), ctypes.get_errno())\n"
)


async def test_posix_message_queues_are_refused(contained: SandboxHandle) -> None:
    """POSIX message queues would outlive a reset (gVisor mounts no /dev/mqueue to list
    them by): a REPL and its processes may not open one (ENOSYS, from a seccomp filter)."""
    assert await run(contained, MQ_OPEN) == "-1 38\n"
    # ENOSYS from the filter, not from a runtime without queues (this runsc has them).
    status = await run(contained, "print(open('/proc/self/status').read())")
    assert "Seccomp:\t2" in status, status
    child = (
        "import subprocess, sys\n"
        f"print(subprocess.run([sys.executable, '-c', {MQ_OPEN!r}], capture_output=True,"
        " text=True).stdout, end='')"
    )
    assert await run(contained, child) == "-1 38\n"
    await contained.reset()
    assert await run(contained, MQ_OPEN) == "-1 38\n"  # the fresh REPL too
    assert await run(contained, "print(6 * 7)") == "42\n"
