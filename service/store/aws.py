"""The production backends: snapshots in S3, leases in DynamoDB.

boto3 is synchronous; every call runs in a worker thread (``asyncio.to_thread``) and every
botocore error is translated in ``_call``, once: a missing object becomes "absent", a
failed condition a retry of the compare-and-swap, anything else ``StoreUnavailable``.

S3 fencing. A record is one object (record.py), replaced by one PutObject, so readers see
the old record or the new one. A write reads the stored meta and its ETag with one ranged
GET, refuses a stale token, then writes with ``If-Match: <etag>`` (``If-None-Match: *``
when there was no object). S3 evaluates these conditions atomically with the write, so
"check the token, then replace" is a real compare-and-swap: a writer holding an older
token can never overwrite a newer record, even racing. If the object changed in between,
the write fails with 412/409 and is retried from the read. S3-compatible stores without
conditional writes would leave a read-then-write race here; S3 itself has supported them
on PutObject since 2024. (moto checks the same conditions but not atomically under
concurrent requests; the tests serialise its request handling, which is what S3 gives.)

DynamoDB leases. One item per session, key ``pk = "<owner>/<session_id>"`` (a string
partition key, nothing else: the table is created by infra), attributes ``holder``,
``token`` and ``expires``. Every change reads the item with a strongly consistent read,
decides with the shared rules (base.py) and writes with a condition that the item is still
exactly what was read (``attribute_not_exists(pk)`` when there was none): a compare-and-
swap on the previous token, holder and expiry. The loser of a race re-reads and usually
finds the winner's unexpired lease. Items are never deleted here: the token is the
session's fencing high-water mark; a retention job must purge a session's snapshot before
its lease item.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions

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
from service.store.files import DEFAULT_MAX_BLOB_BYTES
from service.store.keys import check_holder, check_key

# Connect and read timeouts of every AWS call, and the SDK's own retry policy (standard
# mode: throttling and 5xx retried with backoff). A 256 MiB PutObject within the same
# region takes a few seconds; 60 s between bytes means the endpoint is gone.
AWS_CONNECT_TIMEOUT_S = 5.0
AWS_READ_TIMEOUT_S = 60.0
AWS_MAX_ATTEMPTS = 4
# Compare-and-swap attempts before a write under constant contention gives up.
CAS_ATTEMPTS = 5

_CONFLICT_CODES = frozenset(
    {"PreconditionFailed", "ConditionalRequestConflict", "ConditionalCheckFailedException"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})

Clock = Callable[[], float]


class _Missing(Exception):
    """The object is not there (translated from 404)."""


class _Conflict(Exception):
    """A condition failed: someone changed the record since it was read."""


class _EmptyRange(Exception):
    """A ranged GET of an empty object (416): only a damaged record can be empty."""


def make_client(service: str, region: str | None) -> Any:
    """A boto3 client with this module's timeouts; endpoint and credentials come from the
    environment (instance role on EC2; ``AWS_ENDPOINT_URL`` for tests and local stacks)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=AWS_CONNECT_TIMEOUT_S,
        read_timeout=AWS_READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": AWS_MAX_ATTEMPTS},
        max_pool_connections=32,
    )
    return boto3.client(service, region_name=region, config=config)


async def _call(fn: Callable[[], Any], what: str, setting: str) -> Any:
    """Run one blocking SDK call in a thread; the only place botocore errors are seen."""
    try:
        return await asyncio.to_thread(fn)
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_CODES:
            raise _Missing from exc
        if code in _CONFLICT_CODES or status == 412:
            raise _Conflict from exc
        if code == "InvalidRange":
            raise _EmptyRange from exc
        raise StoreUnavailable(
            f"{what} failed: {code or status} {err.get('Message', '')} (check {setting} and "
            "the instance role's permissions)"
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StoreUnavailable(f"{what} failed: {exc} (check {setting})") from exc


class S3Store:
    """Snapshots as objects ``<prefix>/<owner>/<session_id>.snap`` in ``bucket``."""

    SETTING = "RLM_SESSION_STORE"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        region: str | None = None,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        server_side_encryption: str = "AES256",
        clock: Clock = time.time,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.max_blob_bytes = max_blob_bytes
        self._client = client if client is not None else make_client("s3", region)
        self._sse = server_side_encryption
        self._clock = clock

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def key(self, owner: str, session_id: str) -> str:
        """The object key; validates both parts (``InvalidKey``)."""
        check_key(owner, session_id)
        base = f"{owner}/{session_id}.snap"
        return f"{self.prefix}/{base}" if self.prefix else base

    async def put(self, owner: str, session_id: str, blob: bytes, meta: SnapshotMeta) -> None:
        key = self.key(owner, session_id)
        head, body = record.for_put(
            meta, blob, max_blob_bytes=self.max_blob_bytes, now=self._clock()
        )
        data = head + body
        await self._swap(key, meta.token, "put", lambda _stored: data)

    async def mark_lost(self, owner: str, session_id: str, reason: str, *, token: int) -> None:
        key = self.key(owner, session_id)

        def build(stored: SnapshotMeta | None) -> bytes:
            head, body = record.tombstone(stored, reason=reason, token=token, now=self._clock())
            return head + body

        await self._swap(key, token, "mark_lost", build)

    async def get(self, owner: str, session_id: str) -> Snapshot | None:
        key = self.key(owner, session_id)
        try:
            data, _ = await self._read(key, None)
        except _Missing:
            return None
        return record.decode(data)

    async def head(self, owner: str, session_id: str) -> SnapshotMeta | None:
        key = self.key(owner, session_id)
        try:
            data, _ = await self._read_prefix(key)
        except _Missing:
            return None
        return record.decode_meta(data)

    async def delete(self, owner: str, session_id: str) -> None:
        key = self.key(owner, session_id)
        client = self._client
        await _call(
            lambda: client.delete_object(Bucket=self.bucket, Key=key),
            f"S3 DeleteObject s3://{self.bucket}/{key}",
            self.SETTING,
        )

    # -- internals ------------------------------------------------------------------------

    async def _swap(
        self, key: str, token: int, where: str, build: Callable[[SnapshotMeta | None], bytes]
    ) -> None:
        """Compare-and-swap the object: fence against the stored token, write on its ETag."""
        client = self._client
        for _ in range(CAS_ATTEMPTS):
            try:
                prefix, etag = await self._read_prefix(key)
            except _Missing:
                stored, condition = None, {"IfNoneMatch": "*"}
            else:
                try:
                    stored = record.decode_meta(prefix)
                except CorruptRecord:
                    stored = None  # a damaged record fences nothing (see FileStore)
                condition = {"IfMatch": etag}
            check_fence(stored, token, where)
            data = build(stored)
            try:
                await _call(
                    functools.partial(
                        client.put_object,
                        Bucket=self.bucket,
                        Key=key,
                        Body=data,
                        ContentType="application/octet-stream",
                        ServerSideEncryption=self._sse,
                        **condition,
                    ),
                    f"S3 PutObject s3://{self.bucket}/{key}",
                    self.SETTING,
                )
                return
            except (_Conflict, _Missing):
                continue  # changed (or deleted) since read: read again
        raise StoreUnavailable(
            f"S3 PutObject s3://{self.bucket}/{key}: the record kept changing under "
            f"concurrent writers ({CAS_ATTEMPTS} attempts)"
        )

    async def _read_prefix(self, key: str) -> tuple[bytes, str]:
        """Header and meta (one ranged GET, two for an unusually large meta) and the ETag."""
        try:
            data, etag = await self._read(key, f"bytes=0-{record.HEAD_PROBE_BYTES - 1}")
        except _EmptyRange:
            return await self._read(key, None)  # empty: decoding reports it as damaged
        try:
            need = record.prefix_length(data)
        except CorruptRecord:
            return data, etag  # the caller's decode reports it
        if need > len(data):
            try:
                data, etag = await self._read(key, f"bytes=0-{need - 1}", if_match=etag)
            except _Conflict:
                return await self._read(key, None)  # replaced between the reads: read it whole
        return data, etag

    async def _read(
        self, key: str, byte_range: str | None, *, if_match: str | None = None
    ) -> tuple[bytes, str]:
        client = self._client
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        if if_match is not None:
            kwargs["IfMatch"] = if_match

        def fetch() -> tuple[bytes, str]:
            resp = client.get_object(**kwargs)
            with resp["Body"] as body:
                return body.read(), str(resp["ETag"])

        result: tuple[bytes, str] = await _call(
            fetch, f"S3 GetObject s3://{self.bucket}/{key}", self.SETTING
        )
        return result


class DynamoLeases:
    """Leases as items of a DynamoDB table (partition key ``pk``, a string)."""

    SETTING = "RLM_SESSION_LEASE_TABLE"

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        region: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.table = table
        self._client = client if client is not None else make_client("dynamodb", region)
        self._clock = clock

    def __repr__(self) -> str:
        return f"DynamoLeases({self.table!r})"

    async def acquire(self, owner: str, session_id: str, holder: str, ttl_s: float) -> Lease | None:
        check_key(owner, session_id)
        check_holder(holder)
        ttl = check_ttl(ttl_s)
        info = await self._update(
            owner, session_id, lambda rec, now: decide_acquire(rec, holder, now, ttl)
        )
        if info is None:
            return None
        return Lease(owner, session_id, info.holder, info.token, info.expires_at, ttl, info.wanted)

    async def want(self, owner: str, session_id: str) -> bool:
        check_key(owner, session_id)
        return await self._update(owner, session_id, decide_want) is not None

    async def renew(self, lease: Lease) -> Lease | None:
        check_key(lease.owner, lease.session_id)
        info = await self._update(
            lease.owner, lease.session_id, lambda rec, now: decide_renew(rec, lease, now)
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
        await self._update(
            lease.owner, lease.session_id, lambda rec, _now: decide_release(rec, lease)
        )

    async def current(self, owner: str, session_id: str) -> LeaseInfo | None:
        check_key(owner, session_id)
        info, _ = await self._read(f"{owner}/{session_id}")
        return info

    async def _update(
        self,
        owner: str,
        session_id: str,
        decide: Callable[[LeaseInfo | None, float], LeaseInfo | None],
    ) -> LeaseInfo | None:
        pk = f"{owner}/{session_id}"
        for _ in range(CAS_ATTEMPTS):
            seen, raw = await self._read(pk)
            new = decide(seen, self._clock())
            if new is None:
                return None
            try:
                await self._write(pk, raw, new)
                return new
            except _Conflict:
                continue  # someone wrote in between: decide again on what is there now
        raise StoreUnavailable(
            f"DynamoDB lease {pk} in {self.table} kept changing under concurrent writers "
            f"({CAS_ATTEMPTS} attempts)"
        )

    async def _read(self, pk: str) -> tuple[LeaseInfo | None, dict[str, Any] | None]:
        client = self._client
        resp = await _call(
            lambda: client.get_item(
                TableName=self.table, Key={"pk": {"S": pk}}, ConsistentRead=True
            ),
            f"DynamoDB GetItem {pk} in table {self.table}",
            self.SETTING,
        )
        item = resp.get("Item")
        if not item:
            return None, None
        try:
            info = LeaseInfo(
                holder=item["holder"]["S"],
                token=int(item["token"]["N"]),
                expires_at=float(item["expires"]["N"]),
                wanted=float(item.get("wanted", {"N": "0"})["N"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"lease item {pk} in {self.table} is malformed") from exc
        return info, item

    async def _write(self, pk: str, seen: dict[str, Any] | None, new: LeaseInfo) -> None:
        client = self._client
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Item": {
                "pk": {"S": pk},
                "holder": {"S": new.holder},
                "token": {"N": str(new.token)},
                "expires": {"N": repr(new.expires_at)},
                "wanted": {"N": repr(new.wanted)},
            },
        }
        if seen is None:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            # Exactly the item that was read: a compare-and-swap on the whole record.
            names = {"#h": "holder", "#t": "token", "#e": "expires", "#w": "wanted"}
            values = {":h": seen["holder"], ":t": seen["token"], ":e": seen["expires"]}
            if "wanted" in seen:
                condition = "#h = :h AND #t = :t AND #e = :e AND #w = :w"
                values[":w"] = seen["wanted"]
            else:  # an item written before hand-overs existed
                condition = "#h = :h AND #t = :t AND #e = :e AND attribute_not_exists(#w)"
            kwargs["ConditionExpression"] = condition
            kwargs["ExpressionAttributeNames"] = names
            kwargs["ExpressionAttributeValues"] = values
        await _call(
            lambda: client.put_item(**kwargs),
            f"DynamoDB PutItem {pk} in table {self.table}",
            self.SETTING,
        )
