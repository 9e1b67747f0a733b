"""The one on-disk and in-bucket format of a snapshot record, shared by every backend.

    magic "RLMS" | u8 version | 3 pad | u32 meta_len | u32 crc32(blob) | meta JSON | blob

One object (one file) per session holds both, so replacing it is one atomic step (a rename,
one PutObject) and a conditional write on it is a compare-and-swap of the whole record.
``head`` reads the fixed header and the meta, never the blob. The CRC and the meta's
``size`` catch a truncated or damaged blob on ``get``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace

from service.store.base import MAX_REASON_CHARS, Snapshot, SnapshotMeta
from service.store.errors import CorruptRecord, SnapshotTooLarge

MAGIC = b"RLMS"
VERSION = 1
_HEADER = struct.Struct(">4sB3xII")
HEADER_BYTES = _HEADER.size
MAX_META_BYTES = 64 * 1024
# How much a head reads at first: enough for any ordinary meta, so one ranged GET suffices.
HEAD_PROBE_BYTES = 8 * 1024


def encode(meta: SnapshotMeta, blob: bytes) -> tuple[bytes, bytes]:
    """The record as (header + meta, blob): written back to back they are the record."""
    if meta.size != len(blob):
        raise ValueError(f"meta.size {meta.size} does not match the blob's {len(blob)} bytes")
    meta_bytes = json.dumps(meta.to_json(), separators=(",", ":"), allow_nan=False).encode()
    if len(meta_bytes) > MAX_META_BYTES:
        raise SnapshotTooLarge(
            f"snapshot meta is {len(meta_bytes)} bytes, over the {MAX_META_BYTES}-byte cap",
            size=len(meta_bytes),
            limit=MAX_META_BYTES,
        )
    header = _HEADER.pack(MAGIC, VERSION, len(meta_bytes), zlib.crc32(blob))
    return header + meta_bytes, blob


def prefix_length(data: bytes) -> int:
    """Bytes of header + meta, from at least the first ``HEADER_BYTES`` of a record."""
    meta_len, _ = _unpack_header(data)
    return HEADER_BYTES + meta_len


def decode_meta(data: bytes) -> SnapshotMeta:
    """The meta from a record's first ``prefix_length`` bytes (or more)."""
    meta_len, _ = _unpack_header(data)
    raw = data[HEADER_BYTES : HEADER_BYTES + meta_len]
    if len(raw) != meta_len:
        raise CorruptRecord("snapshot record is truncated inside its meta")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise CorruptRecord(f"snapshot meta is not JSON: {exc}") from exc
    return SnapshotMeta.from_json(obj)


def decode(data: bytes) -> Snapshot:
    meta_len, crc = _unpack_header(data)
    meta = decode_meta(data)
    blob = data[HEADER_BYTES + meta_len :]
    if len(blob) != meta.size or zlib.crc32(blob) != crc:
        raise CorruptRecord(
            f"snapshot blob is damaged: {len(blob)} bytes where {meta.size} were written"
        )
    return Snapshot(blob=blob, meta=meta)


def _unpack_header(data: bytes) -> tuple[int, int]:
    """(meta_len, crc32 of the blob) from a record's fixed header."""
    if len(data) < HEADER_BYTES:
        raise CorruptRecord(f"snapshot record is {len(data)} bytes, shorter than its header")
    magic, version, meta_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise CorruptRecord(f"not a version-{VERSION} snapshot record")
    if meta_len > MAX_META_BYTES:
        raise CorruptRecord(f"snapshot meta length {meta_len} is over the cap")
    return meta_len, crc


def for_put(
    meta: SnapshotMeta, blob: bytes, *, max_blob_bytes: int, now: float
) -> tuple[bytes, bytes]:
    """The record a ``put`` writes: size and time stamped, the size cap enforced."""
    if meta.lost:
        raise ValueError("put writes live state; use mark_lost for a tombstone")
    if not isinstance(blob, bytes):
        raise TypeError(f"a snapshot blob is bytes, got {type(blob).__name__}")
    if len(blob) > max_blob_bytes:
        raise SnapshotTooLarge(
            f"session snapshot is {len(blob)} bytes, over the {max_blob_bytes}-byte cap "
            "(raise RLM_SNAPSHOT_MAX_MB to keep larger sessions)",
            size=len(blob),
            limit=max_blob_bytes,
        )
    return encode(replace(meta, size=len(blob), saved_at=now), blob)


def tombstone(
    previous: SnapshotMeta | None, *, reason: str, token: int, now: float
) -> tuple[bytes, bytes]:
    """A record saying the session's state is gone (turn count and ``extra`` kept)."""
    meta = SnapshotMeta(
        token=token,
        turns=previous.turns if previous else 0,
        status="lost",
        saved_at=now,
        size=0,
        lost_reason=reason[:MAX_REASON_CHARS],
        lost_at=now,
        extra=previous.extra if previous else {},
    )
    return encode(meta, b"")
