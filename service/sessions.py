"""Sessions: who owns them, their order of work, their sandbox, and when they go away.

A session is found by id (header ``x-rlm-session-id`` or cookie ``rlm_session``) and belongs
to the API key that created it: another key sees 404. Its requests run one at a time in
arrival order (``asyncio.Lock`` wakes waiters FIFO), with a cap on how many may wait.
``SessionStore`` is the one LRU: an ``OrderedDict`` in recency order. At the session cap the
least recently used *idle* session the caller may push out is evicted: its own, or one of a
key over its share (``RLM_MAX_SESSIONS_PER_KEY``); a busy one never is, and no key evicts
another key's session while that key is within its share (429 instead). Idle sessions past
the TTL are closed by a reaper. Closing a session closes its sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import SandboxError
from sandbox.handle import SandboxHandle
from sandbox.pool import SandboxPool
from service.durability import Durability
from service.errors import NotFound, Overloaded, SessionLost
from service.rlm.events import Event
from service.store import (
    Lease,
    LeaseInfo,
    SnapshotMeta,
    SnapshotTooLarge,
    StaleToken,
    StoreError,
)

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_RUNS_KEPT = 50
MAX_EVENTS_PER_RUN = 5000
MAX_TOMBSTONES = 100_000  # about 200 bytes each
TOMBSTONE_S = 7 * 86400.0
SWEEP_INTERVAL_S = 3600.0  # the session store's expiry sweep (file store)
# An idle session's sandbox may use at most this share of a core between requests (the
# fork server refilling its spare, a snapshot), measured by the host over a reaper interval;
# past it, its code is still running: the session is hibernated (or closed) to stop it.
IDLE_CPU_SHARE = 0.1
IDLE_CPU_MIN_S = 0.5


ANONYMOUS = hashlib.sha256(b"rlm-py: no API key").hexdigest()[:32]


def owner_of(api_key: str | None) -> str:
    """A stable, non-reversible owner tag for an API key (keys are never stored)."""
    if not api_key:  # no keys configured: every caller is the same (hex, like a key's tag)
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def valid_session_id(value: str | None) -> bool:
    return bool(value) and bool(_ID_RE.match(value or ""))


@dataclass
class RunRecord:
    """One request's run, kept for the session view and the trajectory viewer."""

    id: str
    query: str
    started: float = field(default_factory=time.time)
    status: str = "running"  # running | done | failed | cancelled
    answer: str | None = None
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    sub_calls: int = 0
    elapsed_ms: float = 0.0
    # What the run cost (its CostMeter, set when the turn ends, failed or not): None when a
    # call went to a model without a price (never priced as zero); 0.0 before any call.
    cost_usd: float | None = 0.0
    usage_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    events_dropped: int = 0
    listeners: set[asyncio.Queue[Event | None]] = field(default_factory=set)

    def add_event(self, ev: Event) -> None:
        if len(self.events) < MAX_EVENTS_PER_RUN:
            self.events.append(ev)
        else:
            self.events_dropped += 1
        for q in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)

    def finish(self, status: str) -> None:
        self.status = status
        for q in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "query": self.query[:300], "started": self.started,
            "status": self.status, "iterations": self.iterations, "sub_calls": self.sub_calls,
            "usage": self.usage, "elapsed_ms": self.elapsed_ms, "cost_usd": self.cost_usd,
            "usage_by_model": self.usage_by_model,
            "answer": None if self.answer is None else self.answer[:300], "error": self.error,
            "events_dropped": self.events_dropped,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A closed session's id, its owner and why it went, for honest 410s."""

    id: str
    owner: str
    reason: str
    at: float


@dataclass
class Session:
    id: str
    owner: str
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    turns: int = 0
    sandbox: SandboxHandle | None = None
    lost_reason: str | None = None  # its sandbox died: turns answer 410 until a reset
    new: bool = True  # no turn has run yet (the response says rlm.session_created)
    hibernated: bool = False  # its state is in the store: the next turn restores it
    snapshot_at: float | None = None  # wall time of its latest snapshot
    cannot_hibernate: str | None = None  # why it stays live (too large, store failing)
    lease: Lease | None = None  # this process's lease while it is live here
    notice: str | None = None  # told to the model on the next turn (restored, values lost)
    restored: dict[str, Any] | None = None  # the next response's rlm.restored
    cpu_mark: tuple[float, float] | None = None  # (monotonic time, sandbox CPU s) when idle
    waiting: int = 0
    running: bool = False
    closed: bool = False
    runs: deque[RunRecord] = field(default_factory=lambda: deque(maxlen=MAX_RUNS_KEPT))
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def busy(self) -> bool:
        return self.running or self.waiting > 0

    def sandbox_status(self) -> str:
        if self.sandbox is None:
            if self.lost_reason:
                return "lost"
            return "hibernated" if self.hibernated else "none"
        return self.sandbox.state.value

    @contextlib.asynccontextmanager
    async def turn(self, queue_cap: int) -> AsyncIterator[None]:
        """Hold the session for one request; FIFO; refuse at once past ``queue_cap`` waiters."""
        if self.waiting >= queue_cap:
            raise Overloaded(
                f"session {self.id} already has {self.waiting} requests waiting "
                "(RLM_SESSION_QUEUE)",
                retry_after=1,
            )
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        self.running = True
        try:
            yield
        finally:
            self.running = False
            self.last_used = time.monotonic()
            self._lock.release()


Key = tuple[str, str]  # (owner, session id): ids are unique per key, not across keys


class SessionStore:
    """This process's sessions, in least-recently-used order, and their life cycle.

    With a ``Durability`` (the default store), sessions outlive their sandbox: one idle for
    ``idle_s`` is snapshotted and its sandbox closed (it hibernates, and leaves this process's
    memory); a request for a session this process does not hold looks it up in the store;
    ``close_all`` (the drain at SIGTERM) snapshots every live session.
    """

    def __init__(
        self,
        pool: SandboxPool,
        *,
        max_sessions: int,
        ttl_s: float,
        per_key: int | None = None,
        remember_s: float = TOMBSTONE_S,
        durability: Durability | None = None,
        idle_s: float | None = None,
    ) -> None:
        self.pool = pool
        self.max_sessions = max_sessions
        # One key's share (RLM_MAX_SESSIONS_PER_KEY); a key within it is never evicted by
        # another key.
        self.per_key = per_key or max_sessions
        self.ttl_s = ttl_s
        self.idle_s = idle_s if idle_s is not None else ttl_s
        self.durability = durability
        self._sessions: OrderedDict[Key, Session] = OrderedDict()
        self._owned: dict[str, int] = {}
        # Ids of sessions closed with a reason, remembered (410, never a new session under an
        # old id) for remember_s, at most MAX_TOMBSTONES of them.
        self._gone: OrderedDict[Key, Tombstone] = OrderedDict()
        self.remember_s = remember_s
        self._tasks: list[asyncio.Task[None]] = []
        self._reap_interval = min(60.0, max(1.0, min(ttl_s, self.idle_s) / 4))
        self.on_sandbox_fault: Callable[[str], None] | None = None  # metrics, by kind

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reap_loop(), name="session-reaper"))
        if self.durability is not None:
            self._tasks.append(asyncio.create_task(self._renew_loop(), name="lease-renewer"))

    def get(self, session_id: str, owner: str) -> Session:
        """The caller's live session, or 404 (also when it belongs to another key)."""
        session = self._sessions.get((owner, session_id))
        if session is None:
            raise NotFound(
                f"no session {session_id!r}", param="session_id", code="session_not_found"
            )
        return session

    async def find(self, session_id: str, owner: str) -> Session | SnapshotMeta:
        """The caller's live session, or the stored meta of its hibernated one, or 404/410."""
        if (owner, session_id) in self._sessions:
            return self.get(session_id, owner)
        grave = self._gone.get((owner, session_id))
        if grave is not None:
            raise SessionLost(f"session {session_id} is gone: {grave.reason}")
        if self.durability is not None:
            meta = await self.durability.lookup(owner, session_id)
            if meta is not None and meta.lost:
                raise SessionLost(f"session {session_id} is gone: {meta.lost_reason}")
            if meta is not None:
                return meta
        raise NotFound(f"no session {session_id!r}", param="session_id", code="session_not_found")

    def holds(self, session_id: str, owner: str) -> bool:
        """The session is live in this process."""
        return (owner, session_id) in self._sessions

    async def lease_of(self, session_id: str, owner: str) -> LeaseInfo | None:
        """Who holds the session's lease now (None: no durability, no lease, or the store
        could not say: the request is then served here, where the store's faults are
        reported as they are on every turn)."""
        if self.durability is None:
            return None
        try:
            return await self.durability.leases.current(owner, session_id)
        except StoreError:
            return None

    def of_owner(self, owner: str) -> list[Session]:
        return [s for s in reversed(self._sessions.values()) if s.owner == owner]

    def live(self) -> list[Session]:
        return list(self._sessions.values())

    def owned(self, owner: str) -> int:
        return self._owned.get(owner, 0)

    async def open(self, session_id: str | None, owner: str, *, reset: bool = False) -> Session:
        """Find or create the session for a request, and mark it most recently used.

        An id this store closed (evicted, expired, deleted) is 410 ``session_lost`` with the
        reason while it is remembered, never a new empty session under the old id; a reset
        starts it over on purpose. A session hibernated in the store (by this process or any
        other) comes back as a stub whose next turn restores it.
        """
        key = (owner, session_id or "")
        if session_id is not None and key in self._sessions:
            session = self._sessions[key]
            self._sessions.move_to_end(key)
            session.last_used = time.monotonic()
            return session
        stored: SnapshotMeta | None = None
        gone = self._gone.get(key) if session_id is not None else None
        if gone is not None and not reset:
            raise SessionLost(
                f"session {session_id} is gone: {gone.reason}. Start it over with a reset "
                "(x-rlm-reset: true) or open a new session"
            )
        if session_id is not None and self.durability is not None and gone is None:
            stored = await self.durability.lookup(owner, session_id)
            if stored is not None and stored.lost and not reset:
                raise SessionLost(
                    f"session {session_id} is gone: {stored.lost_reason}. Start it over with a "
                    "reset (x-rlm-reset: true) or open a new session"
                )
        await self._make_room(owner)
        if gone is not None:
            del self._gone[key]
        session = Session(id=session_id or str(uuid.uuid4()), owner=owner)
        if stored is not None and not stored.lost and not reset:
            session.hibernated = True
            session.turns = stored.turns
            session.new = False
            session.snapshot_at = stored.saved_at
        # Racing requests for one id wait on the same object, never two of them.
        existing = self._sessions.get((owner, session.id))
        if existing is not None:
            return existing
        self._sessions[(owner, session.id)] = session
        self._owned[owner] = self.owned(owner) + 1
        return session

    async def _make_room(self, owner: str) -> None:
        if self.owned(owner) >= self.per_key:
            # At its share a key makes room among its own sessions only.
            await self._evict_one(
                owner,
                f"this key has {self.owned(owner)} sessions, all busy (RLM_MAX_SESSIONS_PER_KEY)",
            )
        if len(self._sessions) >= self.max_sessions:
            await self._evict_one(
                owner,
                f"all {self.max_sessions} sessions of this host are busy or belong to other "
                "keys within their share (RLM_MAX_SESSIONS)",
            )

    async def _evict_one(self, owner: str, refusal: str) -> None:
        """Make room: the least recently used idle session that ``owner`` may push out (its
        own, or one of a key over its share) hibernates, or is closed without a store.
        Never a busy one; 429 when there is none."""
        for key, session in self._sessions.items():
            if session.busy:
                continue
            if session.owner == owner or self.owned(session.owner) > self.per_key:
                log.info("making room: session %s leaves this process", key[1])
                # Its sandbox may go on to serve the new session when both are the key's.
                keep = session.owner == owner
                if not await self.hibernate(session, keep=keep):
                    await self.close(
                        key[1],
                        owner=session.owner,
                        reason="evicted to make room for a new session (RLM_MAX_SESSIONS_PER_KEY)",
                        keep=keep,
                    )
                return
        raise Overloaded(refusal, retry_after=5)

    async def hibernate(self, session: Session, *, keep: bool = False) -> bool:
        """Snapshot a live, idle session into the store and close its sandbox (``keep``: or
        keep it for the key's next session, see ``_drop``); False when it cannot (no store,
        too large: it stays live and says why)."""
        if self.durability is None or session.busy:
            return False
        key = (session.owner, session.id)
        if session.sandbox is None or not session.sandbox.alive or session.lease is None:
            return False
        if session._lock.locked():
            return False
        await session._lock.acquire()  # no turn may start while the snapshot is taken
        session.running = True
        try:
            meta = await self.durability.save(
                session.lease,
                session.sandbox,
                turns=session.turns,
                extra={"created": session.created},
            )
        except SnapshotTooLarge as exc:
            session.cannot_hibernate = str(exc)
            log.info("session %s stays live: %s", session.id, exc)
            return False
        except StaleToken:
            log.warning("session %s was taken by another process; dropping it here", session.id)
            await self._drop(key)
            return True
        except StoreError as exc:
            session.cannot_hibernate = f"the session store failed: {exc}"
            log.warning("session %s could not hibernate: %s", session.id, exc)
            return False
        except SandboxError as exc:  # its sandbox failed the snapshot (or died meanwhile)
            session.cannot_hibernate = f"its snapshot failed: {exc}"
            log.warning("session %s could not hibernate: %s", session.id, exc)
            return False
        finally:
            session.running = False
            session._lock.release()
        log.info("session %s hibernated (%d bytes)", session.id, meta.size)
        await self._drop(key, keep=keep)
        return True

    async def _drop(self, key: Key, *, keep: bool = False) -> None:
        """Remove a session from this process (its state is elsewhere): sandbox, lease.
        ``keep``: the pool may reset its sandbox and keep it for a later session of the same
        key (RLM_SANDBOX_KEEP); never for a sandbox that misbehaved."""
        session = self._sessions.pop(key, None)
        if session is None:
            return
        self._uncount(session.owner)
        session.closed = True
        if session.sandbox is not None:
            handle, session.sandbox = session.sandbox, None
            # Never kept while a turn holds it or waits for it (one that began while the
            # session was being closed): its code could still run in the next session.
            keep = keep and not session.busy
            await self.pool.release(handle, session.owner if keep else None)
        if self.durability is not None:
            await self.durability.release(session.lease)
        session.lease = None

    def _uncount(self, owner: str) -> None:
        left = self.owned(owner) - 1
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    async def close(
        self,
        session_id: str,
        reason: str | None = None,
        *,
        owner: str | None = None,
        keep: bool = False,
    ) -> None:
        """Close a session and its sandbox (``keep``: see ``_drop``); with a ``reason`` its id
        is remembered as lost (here, and in the store for every other process)."""
        keys = [k for k in self._sessions if k[1] == session_id and owner in (None, k[0])]
        for key in keys:
            session = self._sessions[key]
            # Only a session that held state here leaves a tombstone: a stub that never got
            # its lease (live elsewhere) or a sandbox says nothing about the session.
            held = self.durability is None or session.lease is not None or session.sandbox
            if reason is not None and held:
                self._gone[key] = Tombstone(session_id, key[0], reason, time.monotonic())
                while len(self._gone) > MAX_TOMBSTONES:
                    self._gone.popitem(last=False)
                if self.durability is not None and session.lease is not None:
                    await self.durability.forget(key[0], session_id, reason, session.lease.token)
            await self._drop(key, keep=keep)

    async def delete(self, session_id: str, owner: str, reason: str) -> None:
        """Delete a session wherever its state is (live here, or in the store)."""
        if (owner, session_id) in self._sessions:
            await self.close(session_id, reason, owner=owner, keep=True)
            return
        self._gone[(owner, session_id)] = Tombstone(session_id, owner, reason, time.monotonic())
        if self.durability is not None:
            lease = await self.durability.claim(
                owner, session_id, wait_s=self.durability.handover_wait_s
            )
            try:
                await self.durability.forget(owner, session_id, reason, lease.token)
            finally:
                await self.durability.release(lease)

    async def close_all(self, *, snapshot: bool = True) -> None:
        """Shut down: hibernate every live session (the drain), close what cannot."""
        for task in self._tasks:
            task.cancel()
        if snapshot and self.durability is not None:
            gate = asyncio.Semaphore(4)

            async def one(session: Session) -> None:
                async with gate:
                    # Turns were cancelled after the grace period: let them unwind first.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            async with session._lock:
                                pass
                    await self.hibernate(session)

            await asyncio.gather(*(one(s) for s in self.live()), return_exceptions=True)
        await asyncio.gather(*(self._drop(k) for k in list(self._sessions)), return_exceptions=True)

    async def _reap_loop(self) -> None:
        last_sweep = 0.0
        while True:
            await asyncio.sleep(self._reap_interval)
            now = time.monotonic()
            for key, grave in list(self._gone.items()):
                if now - grave.at > self.remember_s:
                    del self._gone[key]
            if self.durability is not None and now - last_sweep > SWEEP_INTERVAL_S:
                last_sweep = now
                try:
                    await self.durability.sweep(self.remember_s)
                except Exception:  # the store is down: the next sweep will do
                    log.warning("session store sweep failed", exc_info=True)
            for key, session in list(self._sessions.items()):
                if session.busy:
                    session.cpu_mark = None
                    continue
                try:
                    if await self._stop_if_burning(key, session, now):
                        continue
                except Exception:  # one session's trouble never stops the reaper
                    log.exception("checking session %s's idle CPU failed", key[1])
                idle = now - session.last_used
                if (
                    self.durability is not None
                    and idle > self.idle_s
                    and session.cannot_hibernate is None
                    and await self.hibernate(session)
                ):
                    continue
                if idle > self.ttl_s:
                    log.info("closing session %s idle for %.0fs (RLM_SESSION_TTL_S)", key[1], idle)
                    await self.close(
                        key[1],
                        f"it was idle past RLM_SESSION_TTL_S ({self.ttl_s:g}s)",
                        owner=key[0],
                    )

    async def _stop_if_burning(self, key: Key, session: Session, now: float) -> bool:
        """Hibernate (else close) an idle session whose sandbox keeps using CPU.

        Its code left something running after its block (hostile code can undo what the
        worker does against that): the host's own CPU accounting of the container is what
        it cannot hide. True when the session left this process.
        """
        box = session.sandbox
        cpu = box.cpu_seconds() if box is not None and box.alive else None
        mark, session.cpu_mark = session.cpu_mark, (None if cpu is None else (now, cpu))
        if cpu is None or mark is None or session.last_used > mark[0]:
            return False  # nothing to compare with, or a request ran since the last look
        span, burned = now - mark[0], cpu - mark[1]
        if burned <= max(IDLE_CPU_MIN_S, IDLE_CPU_SHARE * span):
            return False
        reason = (
            f"its code kept running between requests ({burned:.1f}s of CPU in {span:.0f}s "
            "idle): processes and threads may only run while a code block runs"
        )
        log.warning("session %s: %s", key[1], reason)
        if self.on_sandbox_fault is not None:
            self.on_sandbox_fault("idle_cpu")
        if await self.hibernate(session):
            return True  # its state is kept; what ran is stopped with the sandbox
        await self.close(key[1], f"it was closed because {reason}", owner=key[0])
        return True

    async def _renew_loop(self) -> None:
        assert self.durability is not None
        interval = self.durability.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            held = [s.lease for s in self.live() if s.lease is not None]
            renewed = await self.durability.renew(held)
            for session in self.live():
                if session.lease is None:
                    continue
                lease = renewed.get((session.owner, session.id), session.lease)
                if lease is None:  # another process holds it now: ours is stale
                    log.warning("lost the lease of session %s; dropping it here", session.id)
                    session.lease = None
                    if not session.busy:
                        await self._drop((session.owner, session.id))
                else:
                    session.lease = lease
                    if lease.wanted and not session.busy:
                        # Another process was asked for it (stickiness lost, a header-only
                        # client): hand it over through a snapshot. A busy one goes after
                        # its turn, at the next renewal.
                        log.info("session %s is wanted elsewhere: handing it over", session.id)
                        if not await self.hibernate(session):
                            log.warning(
                                "session %s cannot be handed over: %s",
                                session.id,
                                session.cannot_hibernate,
                            )


async def session_view(session: Session) -> dict[str, Any]:
    """``GET /v1/sessions/{id}``: turns, variables and ``state`` with short reprs, runs."""
    variables: dict[str, Any] = {"vars": [], "state": []}
    if session.sandbox is not None and session.sandbox.alive and not session.running:
        try:
            variables = await asyncio.wait_for(session.sandbox.variables("root"), 5)
        except Exception as exc:  # noqa: BLE001 - a view must not fail because the sandbox is busy
            log.debug("variables of session %s unavailable: %s", session.id, exc)
    return {
        "id": session.id,
        "object": "rlm.session",
        "created": int(session.created),
        "turns": session.turns,
        "busy": session.busy,
        "queued": session.waiting,
        "sandbox": {
            "status": session.sandbox_status(),
            "name": session.sandbox.name if session.sandbox else None,
            "lost_reason": session.lost_reason,
        },
        "live_on": session.lease.holder if session.lease else None,
        "snapshot": {
            "saved_at": session.snapshot_at,
            "cannot_hibernate": session.cannot_hibernate,
        },
        "variables": variables.get("vars", []),
        "state": variables.get("state", []),
        "runs": [r.summary() for r in session.runs],
    }


def stored_view(session_id: str, meta: SnapshotMeta) -> dict[str, Any]:
    """``GET /v1/sessions/{id}`` of a session hibernated in the store (not live here)."""
    return {
        "id": session_id,
        "object": "rlm.session",
        "created": int(float(meta.extra.get("created", meta.saved_at) or 0)),
        "turns": meta.turns,
        "busy": False,
        "queued": 0,
        "sandbox": {"status": "hibernated", "name": None, "lost_reason": None},
        "snapshot": {
            "saved_at": meta.saved_at,
            "size": meta.size,
            "unpicklable": list(meta.unpicklable),
        },
        "variables": [],
        "state": [],
        "runs": [],
    }


def session_summary(session: Session) -> dict[str, Any]:
    """One entry of ``GET /v1/sessions``."""
    return {
        "id": session.id,
        "turns": session.turns,
        "busy": session.busy,
        "created": int(session.created),
        "sandbox": session.sandbox_status(),
        "runs": [r.summary() for r in session.runs],
    }
