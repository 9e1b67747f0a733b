"""``open_store``: RLM_SESSION_STORE (and RLM_SESSION_LEASE_TABLE) to a store and leases.

    unset or ""          the machine's default directory (below), file store and file leases
    file:///abs/dir      that directory: <dir>/snapshots and <dir>/leases
    s3://bucket/prefix   S3Store; leases in DynamoDB (RLM_SESSION_LEASE_TABLE is required)

The default directory belongs to the machine, not to an instance: every service process on
it (whatever its RLM_INSTANCE) shares it, so any of them can continue any local session.
It is ``/var/lib/rlm-py/sessions`` when that can be created and written, else
``$XDG_STATE_HOME/rlm-py/sessions`` (``~/.local/state/rlm-py/sessions``). A lease table, when
given, is used with either store.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.store.aws import DynamoLeases, S3Store
from service.store.base import LeaseDirectory, SnapshotStore
from service.store.files import FileLeases, FileStore

STORE_SETTING = "RLM_SESSION_STORE"
LEASE_TABLE_SETTING = "RLM_SESSION_LEASE_TABLE"
SYSTEM_STORE_DIR = Path("/var/lib/rlm-py/sessions")

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._/-]{0,512}")
_TABLE_RE = re.compile(r"[A-Za-z0-9._-]{3,255}")


def user_store_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "rlm-py" / "sessions"


def default_store_dir() -> Path:
    """The machine's session directory (created if missing): the system one when usable."""
    for candidate in (SYSTEM_STORE_DIR, user_store_dir()):
        if _usable_dir(candidate):
            return candidate
    raise ValueError(
        f"no writable session directory: neither {SYSTEM_STORE_DIR} nor {user_store_dir()}; "
        f"set {STORE_SETTING}=file:///some/writable/dir"
    )


def _usable_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def open_store(
    url: str | None,
    *,
    lease_table: str | None = None,
    region: str | None = None,
    max_blob_bytes: int,
) -> tuple[SnapshotStore, LeaseDirectory]:
    """The snapshot store and lease directory named by the settings; a ``ValueError``
    naming the setting when they make no sense."""
    if not url:
        root = default_store_dir()
        return _file_backends(root, lease_table, region, max_blob_bytes)

    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"{STORE_SETTING}={url!r}: no query or fragment is allowed")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"{STORE_SETTING}={url!r}: a file URL names a local directory, "
                "file:///absolute/path (three slashes)"
            )
        path = unquote(parts.path)
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError(f"{STORE_SETTING}={url!r}: give an absolute directory, file:///dir")
        root = Path(path)
        if not _usable_dir(root):
            raise ValueError(f"{STORE_SETTING}={url!r}: {root} cannot be created or written")
        return _file_backends(root, lease_table, region, max_blob_bytes)
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise ValueError(f"{STORE_SETTING}={url!r}: {bucket!r} is not an S3 bucket name")
        if not _PREFIX_RE.fullmatch(prefix) or any(
            seg in ("", ".", "..") for seg in prefix.split("/") if prefix
        ):
            raise ValueError(
                f"{STORE_SETTING}={url!r}: the prefix may hold letters, digits and ._- in "
                "non-empty /-separated parts"
            )
        if not lease_table:
            raise ValueError(
                f"{STORE_SETTING}={url!r} keeps sessions in S3, which needs leases every host "
                f"can see: set {LEASE_TABLE_SETTING} to a DynamoDB table (partition key 'pk', "
                "a string)"
            )
        return (
            S3Store(bucket, prefix, region=region, max_blob_bytes=max_blob_bytes),
            _dynamo_leases(lease_table, region),
        )
    raise ValueError(
        f"{STORE_SETTING}={url!r}: expected file:///absolute/dir or s3://bucket/prefix"
    )


def _file_backends(
    root: Path, lease_table: str | None, region: str | None, max_blob_bytes: int
) -> tuple[SnapshotStore, LeaseDirectory]:
    store = FileStore(root / "snapshots", max_blob_bytes=max_blob_bytes)
    if lease_table:
        return store, _dynamo_leases(lease_table, region)
    return store, FileLeases(root / "leases")


def _dynamo_leases(table: str, region: str | None) -> DynamoLeases:
    if not _TABLE_RE.fullmatch(table):
        raise ValueError(f"{LEASE_TABLE_SETTING}={table!r} is not a DynamoDB table name")
    return DynamoLeases(table, region=region)
