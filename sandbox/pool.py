"""Launching sandboxes and keeping a warm pool of them.

``launch`` starts one sandbox with the configured backend. ``SandboxPool`` keeps
``size`` ready sandboxes, refilled in the background, so taking one is a queue pop; it
reaps containers left by earlier runs at start-up and removes every sandbox it made at
shutdown. A sandbox that served a session never goes back to the warm pool: it held a
session's data. With ``keep`` it may serve a later session *of the same owner* (API key),
after a reset (a fresh interpreter; its processes, scratch files and IPC objects gone).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError, SandboxStartError, SandboxUnavailable
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


async def _spawn_runsc(cfg: SandboxConfig) -> SandboxProcess:
    from sandbox.runsc_backend import RunscProcess

    return await RunscProcess.spawn(cfg)


BACKENDS: dict[str, Callable[[SandboxConfig], Awaitable[SandboxProcess]]] = {
    "docker": _spawn_docker,
    "runsc": _spawn_runsc,
    "local": _spawn_local,
}


class _Runtime:
    """A backend's housekeeping (leftovers, orphans, liveness), the same for the pool
    whichever runtime is behind it; the local backend has none."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg

    async def reap(self) -> int:
        if self.cfg.backend == "docker":
            from sandbox import docker_backend

            return await docker_backend.reap(self.cfg.instance)
        if self.cfg.backend == "runsc":
            from sandbox import runsc_backend

            _forget_checkpoints(self.cfg)  # the reaping removes them
            return await runsc_backend.reap(self.cfg)
        return 0

    async def remove_checkpoints(self) -> None:
        if self.cfg.backend == "runsc":
            from sandbox import runsc_backend

            _forget_checkpoints(self.cfg)
            await asyncio.to_thread(shutil.rmtree, runsc_backend.checkpoints_dir(self.cfg), True)

    async def ping(self) -> None:
        if self.cfg.backend == "docker":
            from sandbox import docker_backend

            await docker_backend.ping()
        elif self.cfg.backend == "runsc":
            from sandbox import runsc_backend

            await runsc_backend.ping(self.cfg)

    def orphans(self) -> int:
        if self.cfg.backend == "docker":
            from sandbox import docker_backend

            return docker_backend.orphans()
        if self.cfg.backend == "runsc":
            from sandbox import runsc_backend

            return runsc_backend.orphans()
        return 0

    async def remove_orphans(self) -> int:
        if self.cfg.backend == "docker":
            from sandbox import docker_backend

            return await docker_backend.remove_orphans()
        if self.cfg.backend == "runsc":
            from sandbox import runsc_backend

            return await runsc_backend.remove_orphans(self.cfg)
        return 0

    @property
    def pingable(self) -> bool:
        return self.cfg.backend in ("docker", "runsc")


async def launch(cfg: SandboxConfig) -> SandboxHandle:
    """Start one sandbox and wait for its worker to say hello (runsc with ``cfg.restore``:
    restored from a checkpoint of a started worker when that works, else booted)."""
    try:
        spawn = BACKENDS[cfg.backend]
    except KeyError:
        raise SandboxUnavailable(
            f"unknown sandbox backend {cfg.backend!r} (RLM_SANDBOX: {', '.join(BACKENDS)})"
        ) from None
    if cfg.backend == "runsc" and cfg.restore:
        restored = await _restored(cfg)
        if restored is not None:
            return restored
    return await SandboxHandle.start(await spawn(cfg), cfg)


# ---- runsc: new sandboxes restored from a checkpoint (RLM_SANDBOX_RESTORE) -------------
#
# The first start boots a worker as usual and checkpoints it right after its hello, before
# any code ran; every later start restores that checkpoint into a new sandbox (own name,
# bundle, cgroup and channel). Measured on 2 cores (make bench): about half the time to a
# first answer and a third of the machine's CPU of a cold boot. A failed checkpoint or
# restore costs nothing but speed: that start boots cold, and restores are tried again
# after RESTORE_RETRY_S.

RESTORE_RETRY_S = 300.0


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    path: Path
    hello: dict[str, Any]


_checkpoints: dict[str, _Checkpoint] = {}  # by checkpoint_key
_checkpoint_locks: dict[str, asyncio.Lock] = {}  # by instance
_restore_failed: dict[str, float] = {}  # checkpoint_key: when


async def _restored(cfg: SandboxConfig) -> SandboxHandle | None:
    from sandbox import runsc_backend
    from sandbox.runsc_backend import RunscProcess

    key = await runsc_backend.checkpoint_key(cfg)
    failed = _restore_failed.get(key)
    if failed is not None and time.monotonic() - failed < RESTORE_RETRY_S:
        return None
    try:
        async with _checkpoint_locks.setdefault(cfg.instance, asyncio.Lock()):
            saved = _checkpoints.get(key) or await _checkpoint(cfg, key)
        return await SandboxHandle.resume(
            await RunscProcess.restore(cfg, saved.path), cfg, saved.hello
        )
    except SandboxStartError as exc:
        log.warning(
            "could not restore a sandbox from a checkpoint, booting it instead "
            "(restores are tried again in %.0f s): %s", RESTORE_RETRY_S, exc,
        )  # fmt: skip
        _restore_failed[key] = time.monotonic()
        _checkpoints.pop(key, None)
        return None


async def _checkpoint(cfg: SandboxConfig, key: str) -> _Checkpoint:
    """Boot a worker, checkpoint it after its hello, and keep that as this instance's only
    checkpoint (an older one, of other settings or another image, is removed)."""
    from sandbox import runsc_backend
    from sandbox.runsc_backend import RunscProcess

    base = runsc_backend.checkpoints_dir(cfg)
    path = base / key
    handle = await SandboxHandle.start(await RunscProcess.spawn(cfg), cfg)
    try:
        await asyncio.to_thread(_fresh_dir, base, path)
        assert isinstance(handle.process, RunscProcess)
        await runsc_backend.checkpoint(handle.process, path)
    except OSError as exc:
        raise SandboxStartError(f"could not write a checkpoint into {base}: {exc}") from exc
    finally:
        await handle.close()
    _forget_checkpoints(cfg)
    _checkpoints[key] = saved = _Checkpoint(path, handle.info)
    _restore_failed.pop(key, None)
    return saved


def _forget_checkpoints(cfg: SandboxConfig) -> None:
    from sandbox import runsc_backend

    base = runsc_backend.checkpoints_dir(cfg)
    for key in [k for k, c in _checkpoints.items() if c.path.parent == base]:
        del _checkpoints[key]


def _fresh_dir(base: Path, path: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    base.chmod(0o700)


class StartGate:
    """At most ``limit`` sandbox starts at once, requests first.

    A start that a request waits for (``urgent``) goes before every refill of the warm
    pool, and refills never hold the last slot: with two or more slots, a request's cold
    start never queues behind refills, which only use what requests leave. Starts are
    heavy (hundreds of ms of CPU under gVisor); serving comes first.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.refill_limit = max(1, self.limit - 1)
        self.running = 0
        self.refills = 0
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._later: collections.deque[asyncio.Future[None]] = collections.deque()

    def _free_for(self, urgent: bool) -> bool:
        if self.running >= self.limit:
            return False
        return urgent or (not self._urgent and self.refills < self.refill_limit)

    @contextlib.asynccontextmanager
    async def slot(self, *, urgent: bool) -> AsyncIterator[None]:
        queue = self._urgent if urgent else self._later
        if queue or not self._free_for(urgent):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # granted as we were cancelled
                    self._leave(urgent)
                else:
                    queue.remove(fut)
                    self._dispatch()  # a refill may have waited behind this request
                raise
        else:
            self._enter(urgent)
        try:
            yield
        finally:
            self._leave(urgent)

    def _enter(self, urgent: bool) -> None:
        self.running += 1
        self.refills += not urgent

    def _leave(self, urgent: bool) -> None:
        self.running -= 1
        self.refills -= not urgent
        self._dispatch()

    def _dispatch(self) -> None:
        for is_urgent, queue in ((True, self._urgent), (False, self._later)):
            while queue and self._free_for(is_urgent):
                fut = queue.popleft()
                if not fut.done():
                    self._enter(is_urgent)
                    fut.set_result(None)


class SandboxPool:
    """Warm sandboxes ready to hand out, and the registry of every live one."""

    # Refill retries back off from RETRY_MIN_S to RETRY_MAX_S: a broken runtime costs one
    # failed start per RETRY_MAX_S; a daemon that was unreachable is pinged meanwhile, so its
    # return is noticed within about RETRY_MIN_S.
    RETRY_MIN_S = 0.5
    RETRY_MAX_S = 5.0
    # How often idle sandboxes are checked for having died (a daemon restart kills them all).
    PURGE_INTERVAL_S = 1.0
    # A kept sandbox (``keep``) not taken again within KEEP_IDLE_S is closed, and one that
    # served KEEP_MAX_SESSIONS sessions is closed instead of being kept again: what one key's
    # code leaves in a sandbox's kernel that a reset does not remove (caches, accounting,
    # whatever an exploit planted) lives at most that long.
    KEEP_IDLE_S = 60.0
    KEEP_MAX_SESSIONS = 100

    def __init__(
        self,
        cfg: SandboxConfig,
        size: int,
        *,
        max_parallel_starts: int = 2,
        keep: int = 0,
        on_started: Callable[[float], None] | None = None,
        on_reused: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.runtime = _Runtime(cfg)
        self.size = max(0, size)
        self.keep = max(0, keep)
        self._idle: collections.deque[SandboxHandle] = collections.deque()
        self._live: set[SandboxHandle] = set()
        # Used sandboxes kept for their owner's next session, reset: owner -> (handle, since),
        # oldest first; and how many sessions each live sandbox has served.
        self._kept: dict[str, collections.deque[tuple[SandboxHandle, float]]] = {}
        self._served: dict[SandboxHandle, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._starting = 0
        self._no_starts = asyncio.Event()
        self._no_starts.set()
        self._start_gate = StartGate(max_parallel_starts)
        self._refill_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.last_error: str | None = None
        self._hurried = False  # the last back-off ended early (see _back_off)
        # Told each successful start's duration in seconds (the start-time histogram), and
        # each session served by a kept sandbox instead of a start.
        self.on_started = on_started
        self.on_reused = on_reused

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Reap leftovers of earlier runs, then fill the pool in the background."""
        if self.runtime.pingable:
            try:
                removed = await self.runtime.reap()
            except SandboxError as exc:  # the runtime is away: serve what we can, retry later
                self.last_error = str(exc)
                log.warning("could not reap leftover sandboxes: %s", exc)
            else:
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
        self._kept.clear()
        self._served.clear()
        await asyncio.gather(*(h.close() for h in live), *self._closing, return_exceptions=True)
        # Cold starts made for requests may still be in flight: each removes its own sandbox
        # when it sees the pool closed; wait for them so none outlives the service.
        try:
            await asyncio.wait_for(self._no_starts.wait(), self.cfg.start_timeout_s + 10)
        except TimeoutError:
            log.warning("%d sandbox starts still running at shutdown", self._starting)
        await self._remove_orphans()
        # Then every sandbox of this instance, known or not: a start cut short by a daemon
        # crash can leave a container whose creation never answered. The instance is ours
        # alone (the start-up reaping removes whatever another process left under it).
        if self.runtime.pingable:
            try:
                stray = await self.runtime.reap()
            except SandboxError as exc:
                log.warning("sandboxes left for the next start's reaping: %s", exc)
            else:
                if stray:
                    log.warning("removed %d sandboxes this pool had lost track of", stray)
        await self.runtime.remove_checkpoints()

    # ---- stats -------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        """Warm sandboxes that are still alive (dead ones are purged by the refill loop)."""
        return len([h for h in self._idle if h.alive])

    @property
    def starting(self) -> int:
        return self._starting

    @property
    def in_use(self) -> int:
        return len(self._live) - len(self._idle) - self.kept

    @property
    def kept(self) -> int:
        """Used sandboxes kept (reset) for their owner's next session."""
        return sum(len(q) for q in self._kept.values())

    async def problems(self) -> list[str]:
        """Why this pool cannot hand out sandboxes now (empty when it can): readiness."""
        out: list[str] = []
        if self.runtime.pingable:
            try:
                await asyncio.wait_for(self.runtime.ping(), 2)
            except (SandboxError, TimeoutError) as exc:
                out.append(f"sandbox runtime unreachable: {exc or 'no answer within 2s'}")
        if not self.ready:
            out.append(f"sandbox pool not ready: {self.last_error or 'warming up'}")
        return out

    @property
    def ready(self) -> bool:
        """Ready when warm sandboxes exist or (size 0) one could be started last time."""
        return self.idle > 0 or (self.size == 0 and self.last_error is None)

    # ---- acquire / release -------------------------------------------------------------

    async def acquire(self, owner: str | None = None) -> SandboxHandle:
        """A ready sandbox: one kept for ``owner`` (see ``release``), else one from the pool
        when one is warm, else one started now."""
        kept = self._kept.get(owner) if owner is not None and not self._closed else None
        while kept:
            handle, since = kept.pop()  # the most recently reset
            if not kept:
                del self._kept[owner]  # type: ignore[arg-type]
            # (The refill loop closes expired ones, but may be busy starting a sandbox.)
            if handle.alive and time.monotonic() - since <= self.KEEP_IDLE_S:
                if self.on_reused is not None:
                    self.on_reused()
                return handle
            self._discard(handle)
        while True:
            if not self._idle:
                break
            handle = self._idle.popleft()
            self._wake.set()
            if handle.alive:
                return handle
            self._live.discard(handle)
        self._wake.set()
        return await self._launch(urgent=True)

    async def release(self, handle: SandboxHandle, owner: str | None = None) -> None:
        """Close a sandbox that served a session; or, with ``owner`` and ``keep``, reset it and
        keep it for that owner's next session (never another owner's). The ``keep`` most
        recently kept sandboxes stay, each at most KEEP_IDLE_S."""
        served = self._served.pop(handle, 0) + 1
        if (
            owner is None
            or not self.keep
            or self._closed
            or served >= self.KEEP_MAX_SESSIONS
            or not handle.alive
            or handle.busy  # code of an interrupted request still runs: not worth a wait
        ):
            self._live.discard(handle)
            await handle.close()
            return
        try:
            await handle.reset()
        except SandboxError:
            self._live.discard(handle)
            await handle.close()
            return
        except BaseException:  # cancelled: never leave it half reset, nor running
            self._discard(handle)
            raise
        if self._closed or not handle.alive:
            self._discard(handle)
            return
        self._served[handle] = served
        self._kept.setdefault(owner, collections.deque()).append((handle, time.monotonic()))
        while self.kept > self.keep:  # past the cap the oldest kept one goes, whoever's
            oldest = min(self._kept, key=lambda o: self._kept[o][0][1])
            self._discard(self._kept[oldest].popleft()[0])
            if not self._kept[oldest]:
                del self._kept[oldest]

    def _discard(self, handle: SandboxHandle) -> None:
        """Close ``handle`` in the background (tracked: ``close`` waits for it)."""
        self._live.discard(handle)
        self._served.pop(handle, None)
        task = asyncio.create_task(handle.close(), name=f"sandbox-close-{handle.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _expire_kept(self) -> None:
        """Close kept sandboxes that died or waited past KEEP_IDLE_S."""
        now = time.monotonic()
        for owner in list(self._kept):
            kept = self._kept[owner]
            for item in [i for i in kept if not i[0].alive or now - i[1] > self.KEEP_IDLE_S]:
                kept.remove(item)
                self._discard(item[0])
            if not kept:
                del self._kept[owner]

    async def _launch(self, *, urgent: bool = False) -> SandboxHandle:
        if self._closed:
            raise SandboxUnavailable("the sandbox pool is shutting down")
        self._starting += 1
        self._no_starts.clear()
        t0 = time.perf_counter()
        try:
            try:
                async with self._start_gate.slot(urgent=urgent):
                    handle = await launch(self.cfg)
            except SandboxError as exc:
                self.last_error = str(exc)
                raise
            self.last_error = None
            if self.on_started is not None:
                self.on_started(time.perf_counter() - t0)
            if self._closed:  # the pool shut down meanwhile: this sandbox has no owner
                await handle.close()
                raise SandboxUnavailable("the sandbox pool is shutting down")
            self._live.add(handle)
            return handle
        finally:
            self._starting -= 1
            if self._starting == 0:
                self._no_starts.set()

    async def _purge_dead(self) -> None:
        """Drop idle sandboxes that died (a runtime restart, an OOM) so they get replaced."""
        dead = [h for h in self._idle if not h.alive]
        for handle in dead:
            self._idle.remove(handle)
            self._live.discard(handle)
        await asyncio.gather(*(h.close() for h in dead), return_exceptions=True)

    async def _remove_orphans(self) -> int:
        """Retry removing containers whose removal failed (the daemon was away); how many
        are left."""
        rt = self.runtime
        try:
            return await rt.remove_orphans() if rt.orphans() else 0
        except Exception:  # never let it stop the refill loop
            log.exception("removing leftover sandbox containers failed")
            return rt.orphans()

    async def _back_off(self, delay_s: float, runtime_away: bool) -> None:
        """Wait before the next refill attempt. When the runtime was unreachable, it is
        pinged meanwhile (a ping is cheap, a failed start is not) and the wait ends as soon
        as it answers: a daemon that comes back is noticed within RETRY_MIN_S, not after the
        whole back-off. Once: if that attempt fails too, the next wait is whole."""
        hurry = runtime_away and self.runtime.pingable and not self._hurried
        self._hurried = False
        if not hurry:
            await asyncio.sleep(delay_s)
            return
        end = time.monotonic() + delay_s
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(self.RETRY_MIN_S, left))
            try:
                await asyncio.wait_for(self.runtime.ping(), 2)
            except (SandboxError, TimeoutError):
                continue
            self._hurried = True
            return

    async def _refill_loop(self) -> None:
        backoff = self.RETRY_MIN_S
        while not self._closed:
            await self._purge_dead()
            self._expire_kept()
            await self._remove_orphans()
            missing = self.size - len(self._idle) - self._starting
            if missing <= 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.PURGE_INTERVAL_S)
                continue
            try:
                handle = await self._launch()
            except SandboxError as exc:
                log.warning("warm pool refill failed: %s (retry in %.1fs)", exc, backoff)
                await self._back_off(backoff, runtime_away=isinstance(exc, SandboxUnavailable))
                backoff = min(backoff * 2, self.RETRY_MAX_S)
                continue
            backoff = self.RETRY_MIN_S
            self._hurried = False
            self._idle.append(handle)
