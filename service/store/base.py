"""The two interfaces and their shapes: a snapshot store and a lease directory.

A session's REPL state is one opaque blob, written and read only inside sandboxes; the host
stores it with a small typed ``SnapshotMeta`` and never looks inside. Records are keyed by
owner (a key's hash) and session id, and every write carries a fencing token (the writer's
lease token): a store refuses a write whose token is older than the stored one
(``StaleToken``), so a process that lost its lease, however long it was paused, cannot
overwrite the state its successor saved.

Leases say where a session is live: at most one holder at a time, for ``ttl_s`` seconds of
wall-clock time unless renewed. Each acquisition by a holder that does not already hold the
lease raises the session's token by one; the token is never reset (releases and expiries
keep the record), so tokens order every holder the session has had. The acquire/renew/
release rules are the pure functions below, shared by every backend, which only differ in
how they make "read, decide, write" atomic (a file lock, a DynamoDB conditional write).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from service.store.errors import CorruptRecord, StaleToken

Status = Literal["ok", "lost"]

META_VERSION = 1
# Bounds of what a meta may hold: it is read on every head, so it stays small.
MAX_UNPICKLABLE_NAMES = 256
MAX_NAME_CHARS = 200
MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What the host knows about a stored snapshot, without opening the blob.

    ``token`` is the writer's fencing token. ``size`` and ``saved_at`` are set by the store
    on write. A tombstone (``status="lost"``) has no blob, a reason and a time: any process
    can answer 410 ``session_lost`` from it. ``extra`` is the session layer's own small
    JSON object (created time, model, ...); the store only carries it.
    """

    token: int
    turns: int = 0
    status: Status = "ok"
    unpicklable: tuple[str, ...] = ()
    saved_at: float = 0.0
    size: int = 0
    lost_reason: str | None = None
    lost_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.token, bool) or not isinstance(self.token, int) or self.token < 0:
            raise ValueError(f"fencing token must be an int >= 0, got {self.token!r}")
        if len(self.unpicklable) > MAX_UNPICKLABLE_NAMES or any(
            len(n) > MAX_NAME_CHARS for n in self.unpicklable
        ):
            raise ValueError(
                f"unpicklable lists at most {MAX_UNPICKLABLE_NAMES} names of at most "
                f"{MAX_NAME_CHARS} characters; trim it (see trim_names)"
            )

    @property
    def lost(self) -> bool:
        return self.status == "lost"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": META_VERSION,
            "token": self.token,
            "turns": self.turns,
            "status": self.status,
            "unpicklable": list(self.unpicklable),
            "saved_at": self.saved_at,
            "size": self.size,
            "lost_reason": self.lost_reason,
            "lost_at": self.lost_at,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Any) -> SnapshotMeta:
        """Strictly typed: anything unexpected is a ``CorruptRecord``."""
        try:
            if not isinstance(data, dict) or data.get("v") != META_VERSION:
                raise TypeError("not a version-1 meta object")
            status = data["status"]
            if status not in ("ok", "lost"):
                raise TypeError(f"status {status!r}")
            names = data["unpicklable"]
            extra = data["extra"]
            reason = data["lost_reason"]
            lost_at = data["lost_at"]
            if not (
                isinstance(names, list)
                and all(isinstance(n, str) for n in names)
                and isinstance(extra, dict)
                and (reason is None or isinstance(reason, str))
                and (lost_at is None or isinstance(lost_at, int | float))
            ):
                raise TypeError("field types")
            return cls(
                token=_int(data["token"]),
                turns=_int(data["turns"]),
                status=status,
                unpicklable=tuple(names),
                saved_at=float(data["saved_at"]),
                size=_int(data["size"]),
                lost_reason=reason,
                lost_at=None if lost_at is None else float(lost_at),
                extra=extra,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"snapshot meta is malformed: {exc}") from exc


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


def trim_names(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The first names that fit ``SnapshotMeta.unpicklable``'s bounds (for display only)."""
    return tuple(n[:MAX_NAME_CHARS] for n in names[:MAX_UNPICKLABLE_NAMES])


@dataclass(frozen=True, slots=True)
class Snapshot:
    blob: bytes
    meta: SnapshotMeta


def check_fence(stored: SnapshotMeta | None, token: int, where: str) -> None:
    """Refuse a write older than the record it would replace (equal tokens pass: the same
    holder writing again)."""
    if stored is not None and stored.token > token:
        raise StaleToken(
            f"{where}: fencing token {token} is older than the stored {stored.token}; "
            "another process has taken this session over",
            token=token,
            stored=stored.token,
        )


@runtime_checkable
class SnapshotStore(Protocol):
    """Snapshots by (owner, session id). Every method validates its key first
    (``InvalidKey``) and reports backend failures as ``StoreUnavailable``.

    - ``put`` writes blob and meta atomically: a reader sees the old record or the new one,
      never a mix or a prefix. Refused with ``SnapshotTooLarge`` past the size cap and with
      ``StaleToken`` when ``meta.token`` is older than the stored record's.
    - ``get`` returns the record (a tombstone has ``meta.lost`` and an empty blob) or None.
    - ``head`` returns the meta alone, reading a few KiB at most.
    - ``mark_lost`` replaces the record with a tombstone (the blob is dropped), fenced like
      a put; it creates one when there was no record. Use it for a client's DELETE too, so
      that the id answers 410 and a late writer holding an older token is still refused.
    - ``delete`` removes the record and with it the fencing high-water mark: only for
      purging expired sessions, when no writer can still be running.
    """

    max_blob_bytes: int

    async def put(self, owner: str, session_id: str, blob: bytes, meta: SnapshotMeta) -> None: ...

    async def get(self, owner: str, session_id: str) -> Snapshot | None: ...

    async def head(self, owner: str, session_id: str) -> SnapshotMeta | None: ...

    async def mark_lost(self, owner: str, session_id: str, reason: str, *, token: int) -> None: ...

    async def delete(self, owner: str, session_id: str) -> None: ...


# -- leases -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A session's lease record as stored. ``expires_at`` is wall-clock epoch seconds; a
    released lease keeps its holder and token with ``expires_at == 0``. ``wanted`` is when
    another process asked the holder to hand the session over (0: nobody)."""

    holder: str
    token: int
    expires_at: float
    wanted: float = 0.0

    def held(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this process holds (until ``expires_at``, unless renewed)."""

    owner: str
    session_id: str
    holder: str
    token: int
    expires_at: float
    ttl_s: float
    wanted: float = 0.0  # as of the last acquire or renew: another process wants it

    def remaining_s(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


@runtime_checkable
class LeaseDirectory(Protocol):
    """Who holds each session, shared by every process that may serve it.

    - ``acquire`` returns a lease, or None while another holder's lease is unexpired. The
      same holder acquiring again extends its lease under the same token.
    - ``renew`` extends a lease still recorded under its holder and token (even past its
      expiry, if nobody took it meanwhile: no newer token exists then); None once lost.
    - ``release`` ends a lease if it is still this one (else does nothing).
    - ``current`` reads the record, expired or not, or None if the session never had one.
    - ``want`` asks the live holder (another process) to hand the session over: the record
      keeps its holder and token and gains ``wanted``, which the holder's next ``renew``
      returns. False when nobody holds it (acquire it instead).
    """

    async def acquire(
        self, owner: str, session_id: str, holder: str, ttl_s: float
    ) -> Lease | None: ...

    async def renew(self, lease: Lease) -> Lease | None: ...

    async def release(self, lease: Lease) -> None: ...

    async def current(self, owner: str, session_id: str) -> LeaseInfo | None: ...

    async def want(self, owner: str, session_id: str) -> bool: ...


def decide_acquire(
    record: LeaseInfo | None, holder: str, now: float, ttl_s: float
) -> LeaseInfo | None:
    """The record after ``holder`` acquires at ``now``, or None if it may not."""
    if record is None:
        return LeaseInfo(holder, 1, now + ttl_s)
    if record.held(now):
        if record.holder == holder:
            return LeaseInfo(holder, record.token, now + ttl_s, record.wanted)
        return None
    return LeaseInfo(holder, record.token + 1, now + ttl_s)


def decide_renew(record: LeaseInfo | None, lease: Lease, now: float) -> LeaseInfo | None:
    if not _is_mine(record, lease):
        return None
    assert record is not None
    return LeaseInfo(lease.holder, lease.token, now + lease.ttl_s, record.wanted)


def decide_want(record: LeaseInfo | None, now: float) -> LeaseInfo | None:
    """The record with a hand-over asked of its live holder, or None when nobody holds it."""
    if record is None or not record.held(now):
        return None
    if record.wanted:
        return record  # asked already: keep the first request's time
    return LeaseInfo(record.holder, record.token, record.expires_at, now)


def decide_release(record: LeaseInfo | None, lease: Lease) -> LeaseInfo | None:
    if not _is_mine(record, lease):
        return None
    return LeaseInfo(lease.holder, lease.token, 0.0)


def _is_mine(record: LeaseInfo | None, lease: Lease) -> bool:
    return (
        record is not None
        and record.holder == lease.holder
        and record.token == lease.token
        and record.expires_at > 0
    )


def check_ttl(ttl_s: float) -> float:
    if not 0 < ttl_s <= 86400:
        raise ValueError(f"lease ttl_s must be in (0, 86400], got {ttl_s!r}")
    return float(ttl_s)
