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
import logging
import os
import signal
import sys
from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxStartError

log = logging.getLogger(__name__)

WORKER_PATH = Path(__file__).with_name("worker.py")


def worker_args(cfg: SandboxConfig) -> list[str]:
    """Command-line flags of the worker for this configuration."""
    return [
        "--timeout", str(cfg.exec_timeout_s),
        "--output-cap", str(cfg.output_cap_chars),
        "--memory-bytes", str(max(0, cfg.memory_mb - 64) * 1024 * 1024),
    ]  # fmt: skip


class SandboxProcess(abc.ABC):
    """The transport and lifecycle of one worker."""

    name: str = ""

    @abc.abstractmethod
    async def read_exactly(self, n: int) -> bytes:
        """Read n bytes of the worker's channel; EOFError when it is gone."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Write to the worker's channel; EOFError when it is gone."""

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


class LocalProcess(SandboxProcess):
    """The worker as a host subprocess. NOT a sandbox: anything it runs can reach the host."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.name = f"local-{proc.pid}"
        self._closed = False
        self._stderr = b""
        self._stderr_task = asyncio.create_task(self._collect_stderr())

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

    async def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise EOFError("worker is gone") from exc

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
        try:
            code = await asyncio.wait_for(self._proc.wait(), 5)
        except TimeoutError:
            return "the worker stopped answering"
        if code < 0:
            return f"the worker was killed by signal {-code}"
        return f"the worker exited with code {code}"

    def diagnostics(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signal_group(signal.SIGKILL)
        try:
            await asyncio.wait_for(self._proc.wait(), 5)
        except TimeoutError:
            log.warning("local worker %s did not exit after SIGKILL", self.name)
        self._stderr_task.cancel()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
