"""Backpressure: a cap on running requests and a bounded queue; past both, refuse at once.

Refusing early (429 with ``Retry-After``) beats queueing without bound: a client told to
come back can go to another host, while one left waiting holds a connection and memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from service.errors import Overloaded


def available_mb(meminfo: str = "/proc/meminfo") -> float | None:
    """The host's available memory (MemAvailable) in MB, or None where it cannot be read."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def refuse_below_memory_floor(floor_mb: int, meminfo: str = "/proc/meminfo") -> None:
    """429 for a new sandbox while the host is short of memory (RLM_MIN_FREE_MB): a refused
    request can go elsewhere, an OOM would take sessions with it."""
    if floor_mb <= 0:
        return
    free = available_mb(meminfo)
    if free is not None and free < floor_mb:
        raise Overloaded(
            f"the host has {free:.0f} MB of memory available, below its floor of {floor_mb} MB "
            "for new sandboxes (RLM_MIN_FREE_MB)",
            retry_after=10,
        )


class Admission:
    """``RLM_MAX_RUNNING`` requests run at once, ``RLM_MAX_QUEUED`` wait; more get 429.

    Slots are shared fairly between keys: when one frees, it goes to the waiting key that
    runs the fewest requests (the longest-waiting among equals), not to whoever queued first,
    so a key that queued a hundred requests delays another key's next one by at most one
    run. On top of that each key has hard caps: ``per_key`` running
    (RLM_MAX_RUNNING_PER_KEY) and ``queue_per_key`` waiting (half of RLM_MAX_QUEUED), so no
    key holds every slot or fills the queue in front of the others.
    """

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        per_key: int | None = None,
        queue_per_key: int | None = None,
    ) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.per_key = per_key or max_running
        self.queue_per_key = queue_per_key or max(1, max_queued // 2)
        self.running = 0
        self.queued = 0
        self._running_by_key: dict[str, int] = {}
        # Waiters per key, keys in the order they started waiting (ties go to the oldest).
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self.draining = False

    @property
    def full(self) -> bool:
        """No free run slot and no room in the queue: a new request would be refused."""
        return self.running >= self.max_running and self.queued >= self.max_queued

    def refuse_if_full(self) -> None:
        if self.full:
            raise Overloaded(
                f"the service is at capacity ({self.running} running, {self.queued} queued; "
                "RLM_MAX_RUNNING / RLM_MAX_QUEUED)",
                retry_after=2,
            )

    def holding(self, key: str) -> int:
        """Requests of ``key`` running or waiting for a slot."""
        return self._running_by_key.get(key, 0) + len(self._waiting.get(key, ()))

    def refuse_key_if_full(self, key: str) -> None:
        """429 when ``key`` runs its share and has its queue share waiting."""
        running = self._running_by_key.get(key, 0)
        waiting = len(self._waiting.get(key, ()))
        if running >= self.per_key and waiting >= self.queue_per_key:
            raise Overloaded(
                f"this key already has {running} requests running and {waiting} queued "
                "(RLM_MAX_RUNNING_PER_KEY)",
                retry_after=2,
            )

    @contextlib.asynccontextmanager
    async def slot(self, key: str = "") -> AsyncIterator[None]:
        """Hold a run slot for the duration of the block; 429 at once past a cap."""
        self.refuse_if_full()
        self.refuse_key_if_full(key)
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    def _can_run(self, key: str) -> bool:
        return self.running < self.max_running and self._running_by_key.get(key, 0) < self.per_key

    def _grant(self, key: str) -> None:
        self.running += 1
        self._running_by_key[key] = self._running_by_key.get(key, 0) + 1

    async def _acquire(self, key: str) -> None:
        if self._can_run(key) and not any(self._can_run(k) for k in self._waiting):
            self._grant(key)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, collections.deque()).append(fut)
        self.queued += 1
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(key)  # granted just as we were cancelled: hand it on
            else:
                self._forget(key, fut)
            raise
        # _wake granted this slot (running counts were updated there).

    def _forget(self, key: str, fut: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and fut in queue:
            queue.remove(fut)
            self.queued -= 1
            if not queue:
                del self._waiting[key]

    def _release(self, key: str) -> None:
        self.running -= 1
        left = self._running_by_key[key] - 1
        if left:
            self._running_by_key[key] = left
        else:
            del self._running_by_key[key]
        self._wake()

    def _wake(self) -> None:
        """Give free slots to waiters: the key running the fewest first."""
        while self._waiting and self.running < self.max_running:
            eligible = [k for k in self._waiting if self._can_run(k)]
            if not eligible:
                return
            key = min(eligible, key=lambda k: self._running_by_key.get(k, 0))
            queue = self._waiting[key]
            fut = queue.popleft()
            self.queued -= 1
            if not queue:
                del self._waiting[key]
            else:  # this key goes to the back among keys with equal counts
                self._waiting[key] = self._waiting.pop(key)
            self._grant(key)
            fut.set_result(None)
