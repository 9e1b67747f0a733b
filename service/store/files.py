"""The local backends: a directory of snapshot records and a directory of lease records.

Every service process on the machine shares them (the default needs nothing else running).
Cross-process exclusion is ``fcntl.flock`` on a per-session lock file, taken around every
read-decide-write; readers take no lock because records are only ever replaced whole:
written to a temporary file in the same directory, fsynced, renamed over the old one
(``os.replace`` is atomic on POSIX), and the directory fsynced. Lock files are never
deleted: unlinking a lock file another process is waiting on would let a third lock a new
inode and both proceed. Layout::

    <root>/<owner>/<session_id>.snap     snapshot record (see record.py)
    <root>/<owner>/<session_id>.lease    lease record, JSON
    <root>/<owner>/<session_id>.lock     flock target, empty
    <root>/<owner>/.<session_id>.<hex>.tmp   a write in progress

Blocking file work runs in worker threads (``asyncio.to_thread``): snapshots are large and
fsync is slow, and the event loop must stay responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from service.store import record
from service.store.base import (
    Lease,
    LeaseInfo,
    Snapshot,
    SnapshotMeta,
    check_fence,
    check_ttl,
    decide_acquire,
    decide_release,
    decide_renew,
    decide_want,
)
from service.store.errors import CorruptRecord, StoreUnavailable
from service.store.keys import check_holder, check_key

DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
_DIR_MODE = 0o700
_FILE_MODE = 0o600

Clock = Callable[[], float]


@contextlib.contextmanager
def _translate(what: str, root: Path) -> Iterator[None]:
    """OS errors (disk full, permissions, I/O) become ``StoreUnavailable``, once, here."""
    try:
        yield
    except OSError as exc:
        raise StoreUnavailable(
            f"session store {what} under {root} failed: {exc} (check RLM_SESSION_STORE)"
        ) from exc


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _write_atomically(final: Path, parts: tuple[bytes, ...]) -> None:
    """Temp file, fsync, rename over ``final``, fsync the directory."""
    tmp = final.with_name(f".{final.stem}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _OwnerDirs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dir(self, owner: str, *, create: bool) -> Path:
        d = self.root / owner
        if create:
            d.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        return d


class FileStore:
    """Snapshots as files under ``root``; see the module docstring for the layout."""

    def __init__(
        self,
        root: Path,
        *,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        clock: Clock = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_blob_bytes = max_blob_bytes
        self._dirs = _OwnerDirs(self.root)
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    async def put(self, owner: str, session_id: str, blob: bytes, meta: SnapshotMeta) -> None:
        check_key(owner, session_id)
        parts = record.for_put(meta, blob, max_blob_bytes=self.max_blob_bytes, now=self._clock())
        await asyncio.to_thread(self._put, owner, session_id, parts, meta.token)

    async def get(self, owner: str, session_id: str) -> Snapshot | None:
        check_key(owner, session_id)
        return await asyncio.to_thread(self._get, owner, session_id)

    async def head(self, owner: str, session_id: str) -> SnapshotMeta | None:
        check_key(owner, session_id)
        return await asyncio.to_thread(self._head, owner, session_id)

    async def mark_lost(self, owner: str, session_id: str, reason: str, *, token: int) -> None:
        check_key(owner, session_id)
        await asyncio.to_thread(self._mark_lost, owner, session_id, reason, token)

    async def delete(self, owner: str, session_id: str) -> None:
        check_key(owner, session_id)
        await asyncio.to_thread(self._delete, owner, session_id)

    async def scan(self) -> list[tuple[str, str, SnapshotMeta]]:
        """(owner, session id, meta) of every readable record, for the expiry sweep.

        (S3 needs no such walk: the bucket's lifecycle rule expires old snapshots.)
        """
        return await asyncio.to_thread(self._scan)

    # -- blocking halves, run in worker threads -------------------------------------------

    def _scan(self) -> list[tuple[str, str, SnapshotMeta]]:
        found = []
        with _translate("read", self.root):
            owners = [d for d in self.root.iterdir() if d.is_dir()] if self.root.exists() else []
        for owner_dir in owners:
            try:
                paths = list(owner_dir.glob("*.snap"))
            except OSError:
                continue
            for path in paths:
                try:
                    check_key(owner_dir.name, path.stem)
                    meta = _read_meta(path)
                except (OSError, ValueError, CorruptRecord):
                    continue  # a write in progress, a damaged record: not the sweep's to judge
                found.append((owner_dir.name, path.stem, meta))
        return found

    def _paths(self, owner: str, session_id: str, *, create: bool) -> tuple[Path, Path]:
        d = self._dirs.dir(owner, create=create)
        return d / f"{session_id}.snap", d / f"{session_id}.lock"

    def _put(self, owner: str, session_id: str, parts: tuple[bytes, bytes], token: int) -> None:
        with _translate("write", self.root):
            path, lock = self._paths(owner, session_id, create=True)
            with _flock(lock):
                check_fence(self._stored_meta(path), token, "put")
                _write_atomically(path, parts)

    def _mark_lost(self, owner: str, session_id: str, reason: str, token: int) -> None:
        with _translate("write", self.root):
            path, lock = self._paths(owner, session_id, create=True)
            with _flock(lock):
                stored = self._stored_meta(path)
                check_fence(stored, token, "mark_lost")
                parts = record.tombstone(stored, reason=reason, token=token, now=self._clock())
                _write_atomically(path, parts)

    def _delete(self, owner: str, session_id: str) -> None:
        with _translate("delete", self.root):
            path, lock = self._paths(owner, session_id, create=False)
            if not lock.parent.exists():
                return
            with _flock(lock):
                path.unlink(missing_ok=True)
                _fsync_dir(path.parent)

    def _get(self, owner: str, session_id: str) -> Snapshot | None:
        path, _ = self._paths(owner, session_id, create=False)
        with _translate("read", self.root):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        return record.decode(data)

    def _head(self, owner: str, session_id: str) -> SnapshotMeta | None:
        path, _ = self._paths(owner, session_id, create=False)
        with _translate("read", self.root):
            try:
                return _read_meta(path)
            except FileNotFoundError:
                return None

    @staticmethod
    def _stored_meta(path: Path) -> SnapshotMeta | None:
        """The meta a write would replace; a damaged record fences nothing (its state is
        lost either way, and refusing every write would make the id unusable)."""
        try:
            return _read_meta(path)
        except (FileNotFoundError, CorruptRecord):
            return None


def _read_meta(path: Path) -> SnapshotMeta:
    with path.open("rb") as f:
        data = f.read(record.HEAD_PROBE_BYTES)
        need = record.prefix_length(data)
        if need > len(data):
            data += f.read(need - len(data))
    return record.decode_meta(data)


class FileLeases:
    """Leases as JSON files under ``root``, exclusive across the machine's processes.

    Expiry is wall-clock time (``clock``), read under the lock. The records are fsynced:
    a token must never go backwards after a crash, or the next holder's writes would be
    refused as stale by a snapshot written under the lost, higher token.
    """

    def __init__(self, root: Path, *, clock: Clock = time.time) -> None:
        self.root = Path(root)
        self._dirs = _OwnerDirs(self.root)
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileLeases({str(self.root)!r})"

    async def acquire(self, owner: str, session_id: str, holder: str, ttl_s: float) -> Lease | None:
        check_key(owner, session_id)
        check_holder(holder)
        ttl = check_ttl(ttl_s)
        info = await asyncio.to_thread(
            self._update, owner, session_id, lambda rec, now: decide_acquire(rec, holder, now, ttl)
        )
        if info is None:
            return None
        return Lease(owner, session_id, info.holder, info.token, info.expires_at, ttl, info.wanted)

    async def want(self, owner: str, session_id: str) -> bool:
        check_key(owner, session_id)
        info = await asyncio.to_thread(self._update, owner, session_id, decide_want)
        return info is not None

    async def renew(self, lease: Lease) -> Lease | None:
        check_key(lease.owner, lease.session_id)
        info = await asyncio.to_thread(
            self._update,
            lease.owner,
            lease.session_id,
            lambda rec, now: decide_renew(rec, lease, now),
        )
        if info is None:
            return None
        return Lease(
            lease.owner,
            lease.session_id,
            info.holder,
            info.token,
            info.expires_at,
            lease.ttl_s,
            info.wanted,
        )

    async def release(self, lease: Lease) -> None:
        check_key(lease.owner, lease.session_id)
        await asyncio.to_thread(
            self._update,
            lease.owner,
            lease.session_id,
            lambda rec, _now: decide_release(rec, lease),
        )

    async def current(self, owner: str, session_id: str) -> LeaseInfo | None:
        check_key(owner, session_id)
        return await asyncio.to_thread(self._current, owner, session_id)

    def _update(
        self,
        owner: str,
        session_id: str,
        decide: Callable[[LeaseInfo | None, float], LeaseInfo | None],
    ) -> LeaseInfo | None:
        with _translate("lease update", self.root):
            d = self._dirs.dir(owner, create=True)
            path = d / f"{session_id}.lease"
            with _flock(d / f"{session_id}.lock"):
                new = decide(_read_lease(path), self._clock())
                if new is not None:
                    body = {
                        "holder": new.holder,
                        "token": new.token,
                        "expires_at": new.expires_at,
                        "wanted": new.wanted,
                    }
                    _write_atomically(path, (json.dumps(body).encode(),))
                return new

    def _current(self, owner: str, session_id: str) -> LeaseInfo | None:
        with _translate("lease read", self.root):
            return _read_lease(self._dirs.dir(owner, create=False) / f"{session_id}.lease")


def _read_lease(path: Path) -> LeaseInfo | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
        holder, token, expires = obj["holder"], obj["token"], obj["expires_at"]
        wanted = obj.get("wanted", 0.0)  # (records written before hand-overs have none)
        if not (
            isinstance(holder, str)
            and isinstance(token, int)
            and not isinstance(token, bool)
            and isinstance(expires, int | float)
            and isinstance(wanted, int | float)
        ):
            raise TypeError("field types")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptRecord(f"lease record {path.name} is malformed: {exc}") from exc
    return LeaseInfo(holder, token, float(expires), float(wanted))
