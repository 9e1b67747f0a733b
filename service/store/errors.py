"""What can go wrong in the session store and the lease directory.

    StoreError
    ├── InvalidKey          an owner, session id or holder fails validation (also a ValueError):
    │                       nothing is read or written, so no key can name another's object
    ├── SnapshotTooLarge    the blob exceeds RLM_SNAPSHOT_MAX_MB (or the meta its own cap)
    ├── StaleToken          a writer's fencing token is older than the stored one: the writer
    │                       no longer owns the session and must stop using it
    ├── CorruptRecord       a stored record cannot be decoded: treat the session as lost
    └── StoreUnavailable    the backend (disk, S3, DynamoDB) failed or refused: a 503 with
                            Retry-After for the client, never a 410 (the state may be fine)

botocore and OS errors are translated into these in one place per backend
(``aws._translate``, ``files._translate``); the layers above see only this tree. None of
them knows an HTTP status: the session layer decides what each means for a request.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store and lease failure."""


class InvalidKey(StoreError, ValueError):
    """An owner, session id or holder name that could escape its key prefix or path."""


class SnapshotTooLarge(StoreError):
    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class StaleToken(StoreError):
    """A write carried fencing token ``token`` but the stored record has ``stored``."""

    def __init__(self, message: str, *, token: int, stored: int) -> None:
        super().__init__(message)
        self.token = token
        self.stored = stored


class CorruptRecord(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The backend failed; ``retry_after_s`` is a hint for the client's Retry-After."""

    def __init__(self, message: str, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
