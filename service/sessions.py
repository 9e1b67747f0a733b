"""Sessions: who owns them, their order of work, their sandbox, and when they go away.

A session is found by id (header ``x-rlm-session-id`` or cookie ``rlm_session``) and belongs
to the API key that created it: another key sees 404. Its requests run one at a time in
arrival order (``asyncio.Lock`` wakes waiters FIFO), with a cap on how many may wait.
``SessionStore`` is the one LRU: an ``OrderedDict`` in recency order. At the session cap the
least recently used *idle* session is evicted; a busy one never is. Idle sessions past the
TTL are closed by a reaper. Closing a session closes its sandbox.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.handle import SandboxHandle
from sandbox.pool import SandboxPool
from service.errors import NotFound, Overloaded

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_RUNS_KEPT = 50
MAX_EVENTS_PER_RUN = 5000


def owner_of(api_key: str | None) -> str:
    """A stable, non-reversible owner tag for an API key (keys are never stored)."""
    if not api_key:
        return "anonymous"
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
    events: list[dict[str, Any]] = field(default_factory=list)
    events_dropped: int = 0
    listeners: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)

    def add_event(self, ev: dict[str, Any]) -> None:
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
            "usage": self.usage, "elapsed_ms": self.elapsed_ms,
            "answer": None if self.answer is None else self.answer[:300], "error": self.error,
            "events_dropped": self.events_dropped,
        }  # fmt: skip


@dataclass
class Session:
    id: str
    owner: str
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    turns: int = 0
    sandbox: SandboxHandle | None = None
    lost_reason: str | None = None
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
            return "lost" if self.lost_reason else "none"
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


class SessionStore:
    """All sessions, in least-recently-used order."""

    def __init__(self, pool: SandboxPool, *, max_sessions: int, ttl_s: float) -> None:
        self.pool = pool
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._reaper: asyncio.Task[None] | None = None
        self._reap_interval = min(60.0, max(1.0, ttl_s / 4))

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="session-reaper")

    def get(self, session_id: str, owner: str) -> Session:
        """The caller's session, or 404 (also when it belongs to another key)."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            raise NotFound(
                f"no session {session_id!r}", param="session_id", code="session_not_found"
            )
        return session

    def list(self, owner: str) -> list[Session]:
        return [s for s in reversed(self._sessions.values()) if s.owner == owner]

    async def open(self, session_id: str | None, owner: str) -> Session:
        """Find or create the session for a request, and mark it most recently used."""
        if session_id is not None and session_id in self._sessions:
            session = self.get(session_id, owner)
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session
        if len(self._sessions) >= self.max_sessions:
            await self._evict_one()
        session = Session(id=session_id or str(uuid.uuid4()), owner=owner)
        self._sessions[session.id] = session
        return session

    async def _evict_one(self) -> None:
        for sid, session in self._sessions.items():
            if not session.busy:
                log.info("evicting idle session %s (RLM_MAX_SESSIONS)", sid)
                await self.close(sid)
                return
        raise Overloaded(
            f"all {self.max_sessions} sessions are busy (RLM_MAX_SESSIONS)", retry_after=5
        )

    async def close(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session.closed = True
        if session.sandbox is not None:
            handle, session.sandbox = session.sandbox, None
            await self.pool.release(handle)

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await asyncio.gather(
            *(self.close(sid) for sid in list(self._sessions)), return_exceptions=True
        )

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            now = time.monotonic()
            for sid, session in list(self._sessions.items()):
                if not session.busy and now - session.last_used > self.ttl_s:
                    log.info(
                        "closing session %s idle for %.0fs (RLM_SESSION_TTL_S)",
                        sid,
                        now - session.last_used,
                    )
                    await self.close(sid)


class Admission:
    """A cap on running requests and a bounded queue; past both, refuse at once."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self.queued = 0
        self._gate = asyncio.Semaphore(max_running)
        self.draining = False

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running >= self.max_running and self.queued >= self.max_queued:
            raise Overloaded(
                f"the service is at capacity ({self.running} running, {self.queued} queued; "
                "RLM_MAX_RUNNING / RLM_MAX_QUEUED)",
                retry_after=2,
            )
        self.queued += 1
        try:
            await self._gate.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._gate.release()
