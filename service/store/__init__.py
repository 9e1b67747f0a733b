"""Where sessions outlive their sandbox and their host: snapshots and leases.

A hibernated or handed-over session is one opaque blob (pickled inside the sandbox, never
unpickled here) plus a small typed ``SnapshotMeta``, in a ``SnapshotStore`` that every
service process can reach: ``FileStore`` (one directory per machine, the default) or
``S3Store``. Which process may run a session is decided by a ``LeaseDirectory``
(``FileLeases`` or ``DynamoLeases``): one holder at a time, with a fencing token that grows
with every new holder and that every write carries, so a writer that lost its lease cannot
overwrite what its successor saved. ``open_store`` builds both from RLM_SESSION_STORE and
RLM_SESSION_LEASE_TABLE.

This package sits below the session layer and knows no HTTP: it raises the ``StoreError``
tree (errors.py) and the session layer decides what each means for a request.
"""

from service.store.aws import DynamoLeases, S3Store
from service.store.base import (
    Lease,
    LeaseDirectory,
    LeaseInfo,
    Snapshot,
    SnapshotMeta,
    SnapshotStore,
    Status,
    trim_names,
)
from service.store.errors import (
    CorruptRecord,
    InvalidKey,
    SnapshotTooLarge,
    StaleToken,
    StoreError,
    StoreUnavailable,
)
from service.store.factory import (
    LEASE_TABLE_SETTING,
    STORE_SETTING,
    default_store_dir,
    open_store,
)
from service.store.files import DEFAULT_MAX_BLOB_BYTES, FileLeases, FileStore
from service.store.keys import SESSION_ID_RE, check_owner, check_session_id

__all__ = [
    "DEFAULT_MAX_BLOB_BYTES",
    "LEASE_TABLE_SETTING",
    "SESSION_ID_RE",
    "STORE_SETTING",
    "CorruptRecord",
    "DynamoLeases",
    "FileLeases",
    "FileStore",
    "InvalidKey",
    "Lease",
    "LeaseDirectory",
    "LeaseInfo",
    "S3Store",
    "Snapshot",
    "SnapshotMeta",
    "SnapshotStore",
    "SnapshotTooLarge",
    "StaleToken",
    "Status",
    "StoreError",
    "StoreUnavailable",
    "check_owner",
    "check_session_id",
    "default_store_dir",
    "open_store",
    "trim_names",
]
