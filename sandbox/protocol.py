"""Wire format between the host and the sandbox worker.

Standard library only: this module is copied into the sandbox image next to ``worker.py``.

A frame is an 8-byte header, a JSON envelope and an optional binary blob::

    u32 big-endian  json_len
    u32 big-endian  blob_len
    json_len bytes  UTF-8 JSON object {"v": 1, "type": ..., "id": ..., "parent": ..., "body": {...}}
    blob_len bytes  raw bytes (context chunks; never JSON-escaped)

Only :func:`encode` and :func:`FrameReader` know this layout. Frames larger than the limits
below are rejected at the boundary, so neither side can be made to allocate without bound.

Frame types (``type``):

host -> worker
    ``exec``          run code in a namespace
    ``load``          start/continue/finish a streamed value (context chunks in the blob)
    ``get_var``       a variable's value as text
    ``vars``          variables of a namespace with short reprs
    ``ns_new``        create a child namespace (optionally handing over a value by ref)
    ``ns_drop``       delete a namespace
    ``reset``         drop every namespace and the shared state
    ``ping``          liveness
    ``reply``         the answer to a ``call`` (``id`` is the call's id)

worker -> host
    ``hello``         sent once at start-up
    ``result``        successful answer to request ``id``
    ``error``         failed answer to request ``id`` (a protocol-level failure, not user code's)
    ``call``          a model call made by sandbox code; ``parent`` is the running exec's id
    ``state``         the worker (re)started running user code for exec ``id``

Every worker frame carries ``busy``: whether user code runs from now on. ``state`` frames say
busy when a code block starts or resumes after a call; every other frame says not busy. The
host's hard-deadline watchdog counts only busy time, so time spent waiting on model calls
(or queued behind another code block) never counts against a code block.
"""

from __future__ import annotations

import json
import struct
from typing import Any

VERSION = 1
HEADER = struct.Struct(">II")
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_BLOB_BYTES = 16 * 1024 * 1024
# Contexts are streamed in chunks of this size.
CHUNK_BYTES = 4 * 1024 * 1024

HOST_TYPES = frozenset(
    {"exec", "load", "get_var", "vars", "ns_new", "ns_drop", "reset", "ping", "reply"}
)
WORKER_TYPES = frozenset({"hello", "result", "error", "call", "state"})


class ProtocolError(Exception):
    """A frame that breaks the wire format: the channel can no longer be trusted."""


class Frame:
    """One protocol message. ``body`` is JSON-able; ``blob`` is raw bytes.

    A plain slotted class, not a dataclass: ``dataclasses`` imports ``inspect``, which costs
    ~20 ms at every sandbox start under gVisor.
    """

    __slots__ = ("blob", "body", "busy", "id", "parent", "type")

    def __init__(
        self,
        type: str,  # noqa: A002 - the wire field's name
        id: int = 0,  # noqa: A002
        parent: int | None = None,
        body: dict[str, Any] | None = None,
        blob: bytes = b"",
        busy: bool = False,
    ) -> None:
        self.type = type
        self.id = id
        self.parent = parent
        self.body = {} if body is None else body
        self.blob = blob
        self.busy = busy

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, id={self.id}, parent={self.parent}, busy={self.busy})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)


def encode(frame: Frame) -> bytes:
    """Serialise a frame; raises ProtocolError past the size limits."""
    env: dict[str, Any] = {"v": VERSION, "type": frame.type, "id": frame.id, "body": frame.body}
    if frame.parent is not None:
        env["parent"] = frame.parent
    if frame.busy:
        env["busy"] = True
    data = json.dumps(env, ensure_ascii=False, separators=(",", ":"), default=repr).encode(
        "utf-8", "surrogatepass"
    )
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError(f"frame envelope of {len(data)} bytes exceeds {MAX_JSON_BYTES}")
    if len(frame.blob) > MAX_BLOB_BYTES:
        raise ProtocolError(f"frame blob of {len(frame.blob)} bytes exceeds {MAX_BLOB_BYTES}")
    return HEADER.pack(len(data), len(frame.blob)) + data + frame.blob


def decode(header: bytes, payload: bytes, allowed: frozenset[str]) -> Frame:
    """Build a frame from its header and the bytes that followed it; validate its shape."""
    json_len, blob_len = check_header(header)
    if len(payload) != json_len + blob_len:
        raise ProtocolError(f"frame of {json_len}+{blob_len} bytes arrived with {len(payload)}")
    try:
        env = json.loads(payload[:json_len])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame envelope is not JSON: {exc}") from None
    if not isinstance(env, dict) or env.get("v") != VERSION:
        raise ProtocolError("frame envelope has the wrong shape or version")
    ftype, fid, body = env.get("type"), env.get("id"), env.get("body")
    if ftype not in allowed or not isinstance(fid, int) or not isinstance(body, dict):
        raise ProtocolError(f"unexpected frame type or fields: {str(ftype)[:40]!r}")
    parent = env.get("parent")
    if parent is not None and not isinstance(parent, int):
        raise ProtocolError("frame parent must be an integer")
    return Frame(ftype, fid, parent, body, bytes(payload[json_len:]), bool(env.get("busy")))


def check_header(header: bytes) -> tuple[int, int]:
    """Return (json_len, blob_len) after checking both against the limits."""
    if len(header) != HEADER.size:
        raise ProtocolError(f"frame header of {len(header)} bytes, expected {HEADER.size}")
    json_len, blob_len = HEADER.unpack(header)
    if json_len > MAX_JSON_BYTES or blob_len > MAX_BLOB_BYTES:
        raise ProtocolError(f"frame of {json_len}+{blob_len} bytes exceeds the size limits")
    return json_len, blob_len
