"""Launching sandboxes and keeping a warm pool of them.

``launch`` starts one sandbox with the configured backend. ``SandboxPool`` keeps
``size`` ready sandboxes, refilled in the background, so taking one is a queue pop; it
reaps containers left by earlier runs at start-up and removes every sandbox it made at
shutdown. A sandbox is never returned to the pool: it held a session's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError, SandboxUnavailable
from sandbox.handle import SandboxHandle
from sandbox.process import LocalProcess, SandboxProcess

log = logging.getLogger(__name__)


async def _spawn_docker(cfg: SandboxConfig) -> SandboxProcess:
    from sandbox.docker_backend import DockerProcess

    return await DockerProcess.spawn(cfg)


_warned_local = False


async def _spawn_local(cfg: SandboxConfig) -> SandboxProcess:
    global _warned_local
    if not _warned_local:
        _warned_local = True
        log.warning(
            "RLM_SANDBOX=local: model-written code runs as a plain subprocess of the service "
            "with NO isolation. Never use this with untrusted input or in production."
        )
    return await LocalProcess.spawn(cfg)


BACKENDS: dict[str, Callable[[SandboxConfig], Awaitable[SandboxProcess]]] = {
    "docker": _spawn_docker,
    "local": _spawn_local,
}


async def launch(cfg: SandboxConfig) -> SandboxHandle:
    """Start one sandbox and wait for its worker to say hello."""
    try:
        spawn = BACKENDS[cfg.backend]
    except KeyError:
        raise SandboxUnavailable(
            f"unknown sandbox backend {cfg.backend!r} (RLM_SANDBOX: {', '.join(BACKENDS)})"
        ) from None
    return await SandboxHandle.start(await spawn(cfg), cfg)


class SandboxPool:
    """Warm sandboxes ready to hand out, and the registry of every live one."""

    def __init__(self, cfg: SandboxConfig, size: int, *, max_parallel_starts: int = 2) -> None:
        self.cfg = cfg
        self.size = max(0, size)
        self._idle: asyncio.Queue[SandboxHandle] = asyncio.Queue()
        self._live: set[SandboxHandle] = set()
        self._starting = 0
        self._no_starts = asyncio.Event()
        self._no_starts.set()
        self._start_gate = asyncio.Semaphore(max_parallel_starts)
        self._refill_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.last_error: str | None = None
        self.start_seconds: list[float] = []

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Reap leftovers of earlier runs, then fill the pool in the background."""
        if self.cfg.backend == "docker":
            from sandbox.docker_backend import reap

            removed = await reap(self.cfg.instance)
            if removed:
                log.info("removed %d sandbox containers left by an earlier run", removed)
        self._refill_task = asyncio.create_task(self._refill_loop(), name="sandbox-pool-refill")

    async def close(self) -> None:
        """Remove every sandbox this pool made (idle and handed out)."""
        self._closed = True
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task
        live = list(self._live)
        self._live.clear()
        await asyncio.gather(*(h.close() for h in live), return_exceptions=True)
        # Cold starts made for requests may still be in flight: each removes its own sandbox
        # when it sees the pool closed; wait for them so none outlives the service.
        try:
            await asyncio.wait_for(self._no_starts.wait(), self.cfg.start_timeout_s + 10)
        except TimeoutError:
            log.warning("%d sandbox starts still running at shutdown", self._starting)

    # ---- stats -------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        return self._idle.qsize()

    @property
    def starting(self) -> int:
        return self._starting

    @property
    def in_use(self) -> int:
        return len(self._live) - self._idle.qsize()

    @property
    def ready(self) -> bool:
        """Ready when warm sandboxes exist or (size 0) one could be started last time."""
        return self.idle > 0 or (self.size == 0 and self.last_error is None)

    # ---- acquire / release -------------------------------------------------------------

    async def acquire(self) -> SandboxHandle:
        """A ready sandbox: from the pool when one is warm, else started now."""
        while True:
            try:
                handle = self._idle.get_nowait()
            except asyncio.QueueEmpty:
                break
            self._wake.set()
            if handle.alive:
                return handle
            self._live.discard(handle)
        self._wake.set()
        return await self._launch()

    async def release(self, handle: SandboxHandle) -> None:
        """Close a sandbox that served a session."""
        self._live.discard(handle)
        await handle.close()

    async def _launch(self) -> SandboxHandle:
        if self._closed:
            raise SandboxUnavailable("the sandbox pool is shutting down")
        self._starting += 1
        self._no_starts.clear()
        t0 = time.perf_counter()
        try:
            try:
                async with self._start_gate:
                    handle = await launch(self.cfg)
            except SandboxError as exc:
                self.last_error = str(exc)
                raise
            self.last_error = None
            self.start_seconds = ([*self.start_seconds, time.perf_counter() - t0])[-100:]
            if self._closed:  # the pool shut down meanwhile: this sandbox has no owner
                await handle.close()
                raise SandboxUnavailable("the sandbox pool is shutting down")
            self._live.add(handle)
            return handle
        finally:
            self._starting -= 1
            if self._starting == 0:
                self._no_starts.set()

    async def _refill_loop(self) -> None:
        backoff = 0.5
        while not self._closed:
            missing = self.size - self._idle.qsize() - self._starting
            if missing <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                handle = await self._launch()
            except SandboxError as exc:
                log.warning("warm pool refill failed: %s (retry in %.1fs)", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            await self._idle.put(handle)
