"""A running worker process, whatever runs it (modelled on ``subprocess.Popen``).

``SandboxProcess`` is the small interface every backend implements: exact reads and writes of
the private channel, ``interrupt`` (SIGINT to the worker), ``kill``, ``exit_reason`` and an
idempotent ``close`` that frees everything (container, processes). ``LocalProcess`` runs the
worker as a plain subprocess: for development and fast tests only, it isolates nothing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxStartError

log = logging.getLogger(__name__)

WORKER_PATH = Path(__file__).with_name("worker.py")
P = TypeVar("P", bound="SandboxProcess")


def worker_args(cfg: SandboxConfig) -> list[str]:
    """Command-line flags of the worker for this configuration."""
    return [
        "--timeout", str(cfg.exec_timeout_s),
        "--output-cap", str(cfg.output_cap_chars),
        "--memory-bytes", str(max(0, cfg.memory_mb - 64) * 1024 * 1024),
    ]  # fmt: skip


CGROUP_ROOT = "/sys/fs/cgroup"


def find_cpu_file(group: str, *, docker_scope: str = "") -> tuple[str, str] | None:
    """Where the host accounts a cgroup's CPU time: cgroup v1's cpuacct.usage (ns) or v2's
    cpu.stat (usage_usec). ``group`` is the path under each hierarchy (``docker/<id>``);
    ``docker_scope`` also tries systemd's layout for a Docker container of that id."""
    candidates = [
        (f"{CGROUP_ROOT}/cpuacct/{group}/cpuacct.usage", "ns"),
        (f"{CGROUP_ROOT}/cpu,cpuacct/{group}/cpuacct.usage", "ns"),
        (f"{CGROUP_ROOT}/{group}/cpu.stat", "stat"),
    ]
    if docker_scope:
        scope = f"system.slice/docker-{docker_scope}.scope"
        candidates += [
            (f"{CGROUP_ROOT}/cpuacct/{scope}/cpuacct.usage", "ns"),
            (f"{CGROUP_ROOT}/{scope}/cpu.stat", "stat"),
        ]
    for path, kind in candidates:
        if os.path.exists(path):
            return path, kind
    return None


def read_cpu_file(found: tuple[str, str]) -> float | None:
    """Seconds of CPU in a file ``find_cpu_file`` returned (None: gone or unreadable)."""
    path, kind = found
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    if kind == "ns":
        return int(data.strip() or 0) / 1e9
    for line in data.splitlines():
        if line.startswith(b"usage_usec "):
            return int(line.split()[1]) / 1e6
    return None


async def start_shielded(start: Awaitable[P]) -> P:
    """Await a sandbox's start so that cancelling the caller (a pool shutting down) lets a
    start already under way complete, and then closes what it started: nothing leaks."""
    task = asyncio.ensure_future(start)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        proc = None
        with contextlib.suppress(Exception):  # the start failed: nothing was left behind
            proc = await task
        if proc is not None:
            await proc.close()
        raise


class SandboxProcess(abc.ABC):
    """The transport and lifecycle of one worker."""

    name: str = ""

    @abc.abstractmethod
    async def read_exactly(self, n: int) -> bytes:
        """Read n bytes of the worker's channel; EOFError when it is gone."""

    @abc.abstractmethod
    async def write(self, *parts: bytes) -> None:
        """Write ``parts`` in order to the worker's channel; EOFError when it is gone."""

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Deliver SIGINT to the worker (KeyboardInterrupt in the running code block)."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the worker at once."""

    @abc.abstractmethod
    async def exit_reason(self) -> str:
        """Why the worker stopped, in words an operator understands."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Kill if needed and free every resource. Idempotent."""

    def diagnostics(self) -> str:
        """Whatever the worker wrote outside the channel before it died (bounded)."""
        return ""

    def cpu_seconds(self) -> float | None:
        """CPU time the sandbox has used so far, as the host accounts it (None: unknown)."""
        return None


# Pipe capacity for the channel (Linux's default is 64 KiB; 1 MiB is the unprivileged cap
# of /proc/sys/fs/pipe-max-size): a context of some hundred KB crosses in one write and one
# wake-up of the reader instead of one per 64 KiB. Under uvloop (the service's loop) a
# child's stdio is a socketpair, not a pipe, and is left as it is: a 4 MiB socket buffer did
# not change the time to load 625 KB into a runsc sandbox (2026-12-01, 40 loads each way).
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031


def _widen_pipe(stream: object) -> None:
    transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)


class PipeProcess(SandboxProcess):
    """A worker whose channel is a host process's stdin and stdout pipes: the worker itself
    (``LocalProcess``) or ``runsc run`` holding the sandbox's stdio (``RunscProcess``). The
    bytes go from the worker to this process through one pipe, with nothing relaying them."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self._proc = proc
        self.name = name
        self._closed = False
        self._stderr = b""
        self._stderr_task = asyncio.create_task(self._collect_stderr())
        for stream in (proc.stdin, proc.stdout):
            _widen_pipe(stream)

    async def _collect_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(65536):
            self._stderr = (self._stderr + chunk)[-8192:]

    async def read_exactly(self, n: int) -> bytes:
        assert self._proc.stdout is not None
        try:
            return await self._proc.stdout.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("worker closed its channel") from exc

    async def write(self, *parts: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            for data in parts:
                self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EOFError("worker is gone") from exc

    def diagnostics(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    async def _wait(self, timeout_s: float) -> int | None:
        """The host process's exit code, or None when it has not exited within the time."""
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout_s)
        except TimeoutError:
            return None

    def _close_pipes(self) -> None:
        self._stderr_task.cancel()
        if self._proc.stdin is not None:
            self._proc.stdin.close()


class LocalProcess(PipeProcess):
    """The worker as a host subprocess. NOT a sandbox: anything it runs can reach the host."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__(proc, f"local-{proc.pid}")

    @classmethod
    async def spawn(cls, cfg: SandboxConfig) -> LocalProcess:
        # A bare environment: no secret of the service reaches the worker's environment.
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-E", "-s", str(WORKER_PATH), *worker_args(cfg),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True, limit=2**20,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxStartError(f"could not start the local worker: {exc}") from exc
        return cls(proc)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def interrupt(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)

    async def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    async def exit_reason(self) -> str:
        code = await self._wait(5)
        if code is None:
            return "the worker stopped answering"
        if code < 0:
            return f"the worker was killed by signal {-code}"
        return f"the worker exited with code {code}"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signal_group(signal.SIGKILL)
        if await self._wait(5) is None:
            log.warning("local worker %s did not exit after SIGKILL", self.name)
        self._close_pipes()
