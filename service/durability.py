"""Sessions that outlive their sandbox and their process: snapshots, leases, hand-over.

A live session holds a lease (``service.store``) naming this process; its REPL state is
snapshotted into the store when it hibernates (idle for RLM_SESSION_IDLE_S) and when the
service drains (SIGTERM), and restored into a warm sandbox by whichever process serves its
next turn. The lease makes sure that is one process at a time: a process takes a session
only with the lease, every snapshot it writes carries the lease's fencing token, and a
process that lost its lease (paused, partitioned) can no longer overwrite what its
successor saved. Leases are renewed while their sessions are live and released when they
hibernate, so another process can take a hibernated session at once.

The host never looks inside a snapshot: the sandbox writes and reads it (pickled one value
at a time, so an unpicklable value loses only itself), the host moves opaque bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandbox.errors import SandboxError, SnapshotOverCap
from sandbox.handle import SandboxHandle
from service.errors import SandboxFailure, ServiceError, SessionLost
from service.store import (
    Lease,
    LeaseDirectory,
    SnapshotMeta,
    SnapshotStore,
    SnapshotTooLarge,
    StaleToken,
    StoreError,
    StoreUnavailable,
    trim_names,
)

log = logging.getLogger(__name__)

# A lease lives this long without renewal; live sessions renew every third of it. A crashed
# process's sessions can be taken over after at most this long.
LEASE_TTL_S = 30.0
# How often a process waiting for a hand-over looks whether the holder let go.
HANDOVER_POLL_S = 0.25


class SessionElsewhere(ServiceError):
    """The session is live in another service process right now (503, retry shortly)."""

    status = 503
    type = "service_unavailable"
    code = "session_busy_elsewhere"


def holder_name(instance: str) -> str:
    """This process as a lease holder: unique per process start, readable by operators."""
    return f"{instance}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Restored:
    """What came back from a snapshot: the turn count and what could not be kept."""

    turns: int
    saved_at: float
    unpicklable: tuple[str, ...]


class Durability:
    """The store, the lease directory and this process's name in them."""

    def __init__(
        self,
        store: SnapshotStore,
        leases: LeaseDirectory,
        *,
        holder: str,
        max_snapshot_bytes: int,
        lease_ttl_s: float = LEASE_TTL_S,
        session_ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.leases = leases
        self.holder = holder
        self.max_snapshot_bytes = max_snapshot_bytes
        self.lease_ttl_s = lease_ttl_s
        self.session_ttl_s = session_ttl_s  # a snapshot unused longer than this is expired
        # A hand-over: the holder's next renewal (a third of the TTL), then its snapshot.
        self.handover_wait_s = lease_ttl_s / 3 + 15.0
        self.clock = clock

    def _expired(self, meta: SnapshotMeta) -> SnapshotMeta:
        """``meta``, or a tombstone's view of it once it is older than the session TTL."""
        ttl = self.session_ttl_s
        if meta.lost or ttl is None or self.clock() - meta.saved_at <= ttl:
            return meta
        return dataclasses.replace(
            meta,
            status="lost",
            lost_reason=f"it was idle past RLM_SESSION_TTL_S ({ttl:g}s)",
            lost_at=meta.saved_at + ttl,
        )

    # ---- what the store knows ------------------------------------------------------------

    async def lookup(self, owner: str, session_id: str) -> SnapshotMeta | None:
        """The stored meta of a session this process does not hold (None: never stored)."""
        try:
            meta = await self.store.head(owner, session_id)
            return None if meta is None else self._expired(meta)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        except StoreError as exc:  # a damaged record: the state is gone, say so
            raise SessionLost(f"session {session_id}'s stored state is unreadable: {exc}") from exc

    # ---- leases --------------------------------------------------------------------------

    async def claim(self, owner: str, session_id: str, *, wait_s: float = 0.0) -> Lease:
        """This process's lease on a session, or SessionElsewhere while another holds it.

        With ``wait_s``, a session live in another process is asked for: its holder sees the
        request at its next renewal (every third of the lease TTL), snapshots the session
        and releases it, and this process takes it over, restoring the snapshot. A session
        is live in one place at a time, so it moves rather than being copied.
        """
        deadline = time.monotonic() + wait_s
        asked = False
        try:
            while True:
                lease = await self.leases.acquire(owner, session_id, self.holder, self.lease_ttl_s)
                if lease is not None:
                    if asked:
                        log.info("session %s was handed over to this process", session_id)
                    return lease
                if time.monotonic() >= deadline:
                    break
                if not asked:
                    asked = await self.leases.want(owner, session_id)
                    if not asked:
                        continue  # released in between: take it
                    log.info("session %s is live elsewhere: asked for it", session_id)
                await asyncio.sleep(min(HANDOVER_POLL_S, max(0.0, deadline - time.monotonic())))
            current = await self.leases.current(owner, session_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        wait = max(1, round(current.expires_at - time.time())) if current else 1
        raise SessionElsewhere(
            f"session {session_id} is live in another service process "
            f"({current.holder if current else 'unknown'}); retry shortly",
            retry_after=min(wait, 30),
        )

    async def renew(self, leases: Iterable[Lease]) -> dict[tuple[str, str], Lease | None]:
        """Renew many leases; None for each this process lost."""
        out: dict[tuple[str, str], Lease | None] = {}
        for lease in leases:
            try:
                out[(lease.owner, lease.session_id)] = await self.leases.renew(lease)
            except StoreError as exc:  # keep it for now: the next round may get through
                log.warning("renewing the lease of %s failed: %s", lease.session_id, exc)
                out[(lease.owner, lease.session_id)] = lease
        return out

    async def release(self, lease: Lease | None) -> None:
        if lease is None:
            return
        with contextlib.suppress(StoreError):
            await self.leases.release(lease)

    # ---- snapshots -----------------------------------------------------------------------

    async def save(
        self, lease: Lease, handle: SandboxHandle, *, turns: int, extra: dict[str, object]
    ) -> SnapshotMeta:
        """Snapshot a live sandbox into the store under ``lease``'s token.

        Raises SnapshotTooLarge (the session stays live and says why it cannot hibernate),
        StaleToken (this process lost the session) or StoreUnavailable.
        """
        try:
            snap = await handle.snapshot(self.max_snapshot_bytes)
        except SnapshotOverCap as exc:
            raise SnapshotTooLarge(
                f"{exc} (RLM_SNAPSHOT_MAX_MB)", size=exc.size, limit=self.max_snapshot_bytes
            ) from exc
        meta = SnapshotMeta(
            token=lease.token,
            turns=turns,
            unpicklable=trim_names(snap.unpicklable),
            extra=extra,
        )
        await self.store.put(lease.owner, lease.session_id, snap.blob, meta)
        return dataclasses.replace(meta, size=len(snap.blob))

    async def load(self, lease: Lease, handle: SandboxHandle) -> Restored | None:
        """Restore the stored snapshot (if any) into a fresh sandbox."""
        try:
            snap = await self.store.get(lease.owner, lease.session_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if snap is None:
            return None
        meta = self._expired(snap.meta)
        if meta.lost:
            raise SessionLost(
                f"session {lease.session_id} is gone: {meta.lost_reason}. Start it over "
                "with a reset (x-rlm-reset: true) or open a new session"
            )
        try:
            failed = await handle.restore(snap.blob)
        except SandboxError as exc:
            raise SandboxFailure(f"could not restore the session's snapshot: {exc}") from exc
        return Restored(
            turns=snap.meta.turns,
            saved_at=snap.meta.saved_at,
            unpicklable=tuple(dict.fromkeys([*snap.meta.unpicklable, *failed])),
        )

    async def sweep(self, tombstone_s: float) -> tuple[int, int]:
        """Drop expired snapshots' blobs (tombstones stay, so their ids answer 410) and
        remove tombstones older than ``tombstone_s``; (tombstoned, removed).

        Only stores that can be walked take part (the file store); S3's lifecycle rule does
        the same there. A session whose lease is held is left alone.
        """
        scan = getattr(self.store, "scan", None)
        if scan is None or self.session_ttl_s is None:
            return 0, 0
        tombstoned = removed = 0
        now = self.clock()
        for owner, session_id, meta in await scan():
            try:
                if meta.lost:
                    if now - (meta.lost_at or meta.saved_at) > tombstone_s:
                        await self.store.delete(owner, session_id)
                        removed += 1
                    continue
                view = self._expired(meta)
                if not view.lost:
                    continue
                current = await self.leases.current(owner, session_id)
                if current is not None and current.held(now):
                    continue
                await self.store.mark_lost(
                    owner, session_id, view.lost_reason or "expired", token=meta.token
                )
                tombstoned += 1
            except (StaleToken, StoreError) as exc:  # a writer came back, or the store: later
                log.info("sweep: skipped %s/%s (%s)", owner, session_id, exc)
        if tombstoned or removed:
            log.info("sweep: %d expired snapshots dropped, %d old tombstones removed",
                     tombstoned, removed)  # fmt: skip
        return tombstoned, removed

    async def forget(self, owner: str, session_id: str, reason: str, token: int) -> None:
        """Record that a session's state is gone, for every process (410 with ``reason``)."""
        with contextlib.suppress(StaleToken, StoreError):
            await self.store.mark_lost(owner, session_id, reason, token=token)


def _unavailable(exc: StoreUnavailable) -> SandboxFailure:
    failure = SandboxFailure(
        f"the session store is unavailable: {exc} (RLM_SESSION_STORE)",
        code="store_unavailable",
        retry_after=int(getattr(exc, "retry_after_s", 5) or 5),
    )
    return failure


RenewHook = Callable[[], Iterable[Lease]]
