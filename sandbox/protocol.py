"""Wire format between the host and the sandbox worker, and the schema of every frame.

Standard library only, and cheap to import: this module is copied into the sandbox image
next to ``worker.py`` and imported at every sandbox start.

A frame is an 8-byte header, a JSON part and an optional binary blob::

    u32 big-endian  json_len
    u32 big-endian  blob_len
    json_len bytes  the JSON part:
                      UTF-8 JSON envelope {"v": 2, "type", "id", "parent"?, "busy"?, "body",
                                           "strs"?: [byte length of each long string]}
                      b"\\n"
                      the UTF-8 bytes of the long strings, one after the other
    blob_len bytes  raw bytes (context chunks; never JSON-escaped)

Long strings (more than ``INLINE_CHARS`` characters) travel outside the envelope: the body
holds ``{"\\u0000": k}`` in place of the k-th one. So the envelope is only structure and short
strings (a worker's is at most ``MAX_ENVELOPE_BYTES``), and the host never hands a large or
hostile document to ``json.loads``. Why not parse big envelopes in a thread: ``json.loads``
holds the GIL throughout, so the event loop stalls just the same. Measured on 2 cores:
16 MiB of small JSON objects took 1-3.5 s to parse, and the loop lagged as long from
``asyncio.to_thread``; a 64 KiB envelope takes about 5 ms at worst (small floats), and long
strings are decoded (strict UTF-8) in 256 KiB steps of a few ms each, the loop running in
between. Everything on the wire is valid UTF-8: lone surrogates are sent as U+FFFD.

Only this module knows the layout (``encode``, ``check_header``, ``parse_envelope``,
``decode``). Frames larger than the limits below are refused from their header, before
their payload is read.

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
    ``snapshot``      pickle the REPL (root namespace, ``state``) one value at a time; keep it
    ``snapshot_read`` a piece of the kept snapshot (base64 text)
    ``restore``       a snapshot streamed back in (pieces in the blob), unpickled on the last
    ``reply``         the answer to a ``call`` (``id`` is the call's id)

worker -> host (each body checked by the schema below before the host keeps or acts on it)
    ``hello``         sent once at start-up                                  ``HelloBody``
    ``result``        successful answer to request ``id``   ``ExecResultBody``, ``GetVarResult``...
    ``error``         failed answer to request ``id`` (a protocol-level failure, not user
                      code's)                                                ``ErrorBody``
    ``call``          a model call made by sandbox code; ``parent`` is the running exec's id;
                      ``kind`` is one of ``CALL_KINDS``                      ``CallBody``
    ``state``         the worker (re)started running user code for exec ``id``  ``StateBody``

``busy`` and ``state`` frames are the worker's own account of when it runs user code. The
host does not trust them: it measures a code block's running time itself (see
``sandbox/handle.py``); they are accepted and change nothing.
"""

from __future__ import annotations

import codecs
import json
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypedDict, get_args

VERSION = 2
HEADER = struct.Struct(">II")

# ---- size limits -------------------------------------------------------------------------
# Every bound a frame can reach is a named constant here, so the host can refuse anything
# larger from the frame header and the schema, and the worker can stay within them.

MAX_JSON_BYTES = 16 * 1024 * 1024
"""The JSON part of one frame (envelope plus long strings), either direction.

Sized for the largest answer a request can ask for: an exec's output (stdout up to twice the
output cap, 1,000,000 characters by default, because output written to the raw fds is kept
apart; stderr up to the cap) is about 3 MB of ASCII and 12 MB of 4-byte UTF-8 at worst. A
worker whose frame would pass it fails to send it (and is lost): keep output caps well under
a third of it."""
MAX_BLOB_BYTES = 16 * 1024 * 1024
"""The raw blob of one frame (host -> worker context chunks; workers send none)."""
CHUNK_BYTES = 4 * 1024 * 1024
"""Contexts are streamed in chunks of this size."""
MAX_ENVELOPE_BYTES = 64 * 1024
"""A worker's envelope: structure and strings of at most INLINE_CHARS characters. The host
parses it on its event loop, so its size bounds the loop's stall: about 5 ms measured on an
idle core for 64 KiB of the costliest JSON (small floats), under 1 ms for a real one."""
INLINE_CHARS = 64
"""Strings longer than this travel as raw UTF-8 after the envelope."""
MAX_STRINGS = 4096
"""Long strings in one frame (the largest legitimate count: a vars listing, ~1,200)."""

MAX_VAR_CHARS = MAX_JSON_BYTES // 8
"""A value's text (get_var, FINAL_VAR, FINAL, ``answer``): 2,097,152 characters, at most
8 MiB of UTF-8. The worker cuts get_var text at ``MAX_JSON_BYTES // 8``."""
MAX_PROMPT_CHARS = 2_000_000
"""One sub-call prompt or ``rlm_query`` query: about 500k tokens, more than any sub-model's
context window. Larger prompts are refused by the host, never sent upstream."""
MAX_BATCH_ITEMS = 1000
"""Prompts of one ``llm_query_batched`` or items of one ``rlm_query_batched`` call (the
service's sub-call budget, RLM_MAX_SUB_CALLS, defaults to 256)."""
MAX_BATCH_CHARS = 4_000_000
"""All prompts of one batched call together (16 chunks of 250k characters)."""
MAX_OUTPUT_NOTE_CHARS = 200
"""The worker's note about output dropped from the raw fds, appended to stdout."""
MAX_MESSAGE_CHARS = 2000
"""An error message (the worker cuts them at 2000)."""
SNAPSHOT_CHUNK_BYTES = 3 * 1024 * 1024
"""A snapshot travels to the host in pieces of this many bytes, base64 in a long string
(workers send no raw blobs): 4 MiB of ASCII per ``snapshot_read`` result."""
MAX_UNKEPT = 256
"""Names a snapshot or a restore reports as not kept."""
MAX_NAME_CHARS = 1000
"""A variable, type or exception name."""
MAX_REPR_CHARS = 200
"""A short repr in a vars listing or a block's changed names (the worker's short_repr)."""
MAX_CHANGED = 100
"""Changed names reported by one exec."""
MAX_LISTED = 200
"""Variables (and, separately, state keys) in one vars listing."""
MAX_REF_CHARS = 64
"""An identifier the worker makes up (a handed-over value's ``context_ref``)."""
MAX_MODEL_CHARS = 200
"""A model name sandbox code asks for (``llm_query(..., model=...)``)."""
MAX_SMALL_FIELDS = 16
"""Extra scalar fields tolerated in hello and reset results (room for the worker to grow)."""
SMALL_JSON_BYTES = 128 * 1024
"""The JSON part of every frame that carries no user-sized text (hello, error, state,
answers to load, ns_new, ns_drop, reset, ping)."""

HOST_TYPES = frozenset(
    {
        "exec", "load", "get_var", "vars", "ns_new", "ns_drop", "reset", "ping", "reply",
        "snapshot", "snapshot_read", "restore",
    }
)  # fmt: skip
WORKER_TYPES = frozenset({"hello", "result", "error", "call", "state"})

CallKind = Literal["llm", "llm_batched", "rlm", "rlm_batched"]
"""The model calls sandbox code can make: the one definition (worker helpers, host handler,
the call schema below)."""
CALL_KINDS: tuple[CallKind, ...] = get_args(CallKind)

_REF = "\x00"  # the key of a long-string placeholder {"\u0000": k}
_UTF8_MAX = 4  # bytes per character at most


class ProtocolError(Exception):
    """A frame that breaks the wire format or its schema: the channel can't be trusted."""


# ---- typed bodies --------------------------------------------------------------------------
# The shapes of the worker's frames. The checks further down enforce them (and their size
# bounds); tests/sandbox/test_protocol.py keeps the two in step.


class HelloBody(TypedDict):
    python: str
    pid: int
    uid: int


class ErrorBody(TypedDict):
    name: str
    message: str


class StateBody(TypedDict, total=False):
    timeout: float


class ExecError(TypedDict):
    type: str
    message: str


class VarInfo(TypedDict):
    name: str  # state keys may be any small JSON scalar
    type: str
    repr: str


class _ExecResultRequired(TypedDict):
    stdout: str
    stderr: str
    stdout_dropped: int
    stderr_dropped: int
    error: ExecError | None
    changed: list[VarInfo]
    duration_ms: float


class ExecResultBody(_ExecResultRequired, total=False):
    answer: str  # answer["content"] once answer["ready"] was set
    final: str  # FINAL(...) / FINAL_VAR(...)


class _GetVarRequired(TypedDict):
    found: bool


class GetVarResult(_GetVarRequired, total=False):
    text: str
    type: str


class VarsResult(TypedDict):
    vars: list[VarInfo]
    state: list[VarInfo]


class _ContextInfoRequired(TypedDict):
    type: str


class ContextInfo(_ContextInfoRequired, total=False):
    length: int
    chars: int
    item_chars: list[int]
    keys: list[str]


class LoadResult(TypedDict, total=False):
    received: int  # chunks before the last
    context: ContextInfo  # the last chunk


class NsNewResult(TypedDict, total=False):
    context: ContextInfo


class NsDropResult(TypedDict):
    dropped: bool


class ResetResult(TypedDict, total=False):
    reset: bool


class PingResult(TypedDict):
    pong: bool


class LlmCall(TypedDict):
    kind: Literal["llm"]
    prompt: str
    model: str | None  # a short scalar: whatever sandbox code passed as model=


class LlmBatchedCall(TypedDict):
    kind: Literal["llm_batched"]
    prompts: list[str]
    model: str | None


class RlmCall(TypedDict):
    kind: Literal["rlm"]
    query: str
    context_ref: str | None  # a value handed over for the child's context


class RlmItem(TypedDict):
    query: str
    context_ref: str | None


class RlmBatchedCall(TypedDict):
    kind: Literal["rlm_batched"]
    items: list[RlmItem]


CallBody = LlmCall | LlmBatchedCall | RlmCall | RlmBatchedCall


# ---- frames ----------------------------------------------------------------------------------


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
        blob: bytes | memoryview = b"",
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


def _to_fffd(exc: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return b"\xef\xbf\xbd" * (exc.end - exc.start), exc.end  # U+FFFD in UTF-8


# Lone surrogates (which no UTF-8 can hold) are sent as U+FFFD, one per surrogate.
_FFFD = "rlm-fffd"
codecs.register_error(_FFFD, _to_fffd)


def _pack(value: Any, texts: list[bytes], inline: int) -> Any:
    """A JSON-able copy of ``value`` with its long strings moved into ``texts``."""
    if isinstance(value, str):
        if len(value) <= inline:
            return value
        texts.append(value.encode("utf-8", _FFFD))
        return {_REF: len(texts) - 1}
    if isinstance(value, dict):
        if _REF in value:
            raise ProtocolError("a body may not use the reserved key '\\x00'")
        return {k: _pack(v, texts, inline) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pack(v, texts, inline) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _pack(repr(value), texts, inline)


def _envelope(frame: Frame, inline: int) -> tuple[bytes, list[bytes]]:
    texts: list[bytes] = []
    env: dict[str, Any] = {
        "v": VERSION,
        "type": frame.type,
        "id": frame.id,
        "body": _pack(frame.body, texts, inline),
    }
    if frame.parent is not None:
        env["parent"] = frame.parent
    if frame.busy:
        env["busy"] = True
    if texts:
        env["strs"] = [len(t) for t in texts]
    data = json.dumps(env, ensure_ascii=False, separators=(",", ":")).encode("utf-8", _FFFD)
    return data, texts


def encode(frame: Frame) -> bytes:
    """Serialise a frame; raises ProtocolError past the size limits."""
    return b"".join(encode_parts(frame))


def encode_parts(frame: Frame) -> tuple[bytes, ...]:
    """``encode`` as pieces to write one after another: the header with the envelope, then
    each long string and the blob as they are, so a context is not copied into the frame."""
    data, texts = _envelope(frame, INLINE_CHARS)
    if len(data) > MAX_ENVELOPE_BYTES:  # many short strings: move them all out
        data, texts = _envelope(frame, 0)
    json_len = len(data) + 1 + sum(len(t) for t in texts)
    if json_len > MAX_JSON_BYTES:
        raise ProtocolError(
            f"frame JSON (envelope and strings) of {json_len} bytes exceeds {MAX_JSON_BYTES}"
        )
    if len(frame.blob) > MAX_BLOB_BYTES:
        raise ProtocolError(f"frame blob of {len(frame.blob)} bytes exceeds {MAX_BLOB_BYTES}")
    head = b"".join((HEADER.pack(json_len, len(frame.blob)), data, b"\n"))
    if not frame.blob:
        return (head, *texts)
    return (head, *texts, frame.blob if isinstance(frame.blob, bytes) else bytes(frame.blob))


def check_header(header: bytes) -> tuple[int, int]:
    """Return (json_len, blob_len) after checking both against the absolute limits."""
    if len(header) != HEADER.size:
        raise ProtocolError(f"frame header of {len(header)} bytes, expected {HEADER.size}")
    json_len, blob_len = HEADER.unpack(header)
    if json_len > MAX_JSON_BYTES or blob_len > MAX_BLOB_BYTES:
        raise ProtocolError(
            f"frame of {json_len:,}+{blob_len:,} bytes exceeds the size limits "
            f"({MAX_JSON_BYTES:,} of JSON, {MAX_BLOB_BYTES:,} of blob)"
        )
    return json_len, blob_len


class Envelope:
    """A frame whose envelope is parsed and checked but whose long strings are still bytes.

    ``parse_envelope`` makes one from the head of the JSON part; ``attach`` gives it the
    whole JSON part; ``decode_strings`` turns the long strings into ``str`` (pausing between
    them, so an event loop can run); ``frame`` builds the Frame.
    """

    __slots__ = (
        "_data",
        "body",
        "busy",
        "id",
        "json_len",
        "lengths",
        "parent",
        "slots",
        "text_start",
        "texts",
        "type",
    )

    def __init__(self) -> None:
        self.type = ""
        self.id = 0
        self.parent: int | None = None
        self.busy = False
        self.body: dict[str, Any] = {}
        self.json_len = 0
        self.text_start = 0  # where the long strings start in the JSON part
        self.lengths: list[int] = []
        self.slots: list[tuple[Any, Any, int]] = []
        self.texts: list[str] = []
        self._data: memoryview | None = None

    @property
    def text_bytes(self) -> int:
        """Bytes of long strings the frame carries."""
        return self.json_len - self.text_start

    def attach(self, json_part: bytes | bytearray) -> None:
        """The frame's whole JSON part (its head may be all ``parse_envelope`` saw)."""
        if len(json_part) < self.json_len:
            raise ProtocolError("frame ends before its long strings")
        self._data = memoryview(json_part)[self.text_start : self.json_len]

    def check_string_bytes(self, max_chars: int, what: str) -> None:
        """Refuse, before decoding, any long string that cannot fit ``max_chars`` characters."""
        limit = max_chars * _UTF8_MAX
        for n in self.lengths:
            if n > limit:
                raise ProtocolError(
                    f"{what} carries a string of {n:,} bytes; no field of it may exceed "
                    f"{max_chars:,} characters"
                )

    def decode_strings(self, step: int = 256 * 1024) -> Iterator[None]:
        """Decode the long strings (strict UTF-8), yielding after every ``step`` bytes.

        A string longer than ``step`` is decoded ``step`` bytes at a time: 8 MB of 4-byte
        characters cost 35-60 ms in one call, at most a few ms per step here.
        """
        data, pos, since = self._data, 0, 0
        if data is None:
            raise ProtocolError("frame strings were not attached")
        for i, n in enumerate(self.lengths):
            try:
                if n <= step:
                    self.texts.append(str(data[pos : pos + n], "utf-8"))
                    since += n
                else:
                    decoder = codecs.getincrementaldecoder("utf-8")()
                    parts = []
                    for at in range(pos, pos + n, step):
                        end = min(at + step, pos + n)
                        parts.append(decoder.decode(data[at:end], end == pos + n))
                        yield
                    self.texts.append("".join(parts))
                    since = step
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"long string {i} is not valid UTF-8: {exc.reason}") from None
            pos += n
            if since >= step:
                since = 0
                yield

    def frame(self, blob: bytes | memoryview = b"") -> Frame:
        """The frame, with every long string back in its place."""
        if len(self.texts) != len(self.lengths):
            for _ in self.decode_strings():
                pass
        for container, key, k in self.slots:
            container[key] = self.texts[k]
        self._data = None
        return Frame(self.type, self.id, self.parent, self.body, blob, self.busy)


def _valid_text(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (and keys) replaced by U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
        return value
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _int_field(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**53


def parse_envelope(
    head: bytes | bytearray,
    json_len: int,
    allowed: frozenset[str],
    max_envelope: int = MAX_JSON_BYTES,
) -> Envelope:
    """Parse and check the envelope at the start of a frame's JSON part of ``json_len`` bytes.

    ``head`` is the JSON part or its first ``max_envelope + 1`` bytes or more. Checks the
    envelope's size, JSON, version, type, ids and the long-string table, and finds every
    placeholder. Its cost is bounded by ``max_envelope``: long strings are not touched.
    """
    nl = head.find(b"\n", 0, min(json_len, max_envelope + 1))
    if nl < 0:
        if json_len > max_envelope:
            raise ProtocolError(f"frame envelope is longer than {max_envelope:,} bytes")
        raise ProtocolError("frame envelope is not terminated")
    try:
        env = json.loads(str(head[:nl], "utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"frame envelope is not JSON: {str(exc)[:100]}") from None
    if not isinstance(env, dict) or env.get("v") != VERSION:
        raise ProtocolError("frame envelope has the wrong shape or version")
    unknown = env.keys() - {"v", "type", "id", "parent", "busy", "body", "strs"}
    if unknown:
        raise ProtocolError(f"frame envelope has unknown fields {_names(unknown)}")
    ftype, fid, body = env.get("type"), env.get("id"), env.get("body")
    if ftype not in allowed or not _int_field(fid) or not isinstance(body, dict):
        raise ProtocolError(f"unexpected frame type or fields: {str(ftype)[:40]!r}")
    parent = env.get("parent")
    if parent is not None and not _int_field(parent):
        raise ProtocolError("frame parent must be a non-negative integer")
    busy = env.get("busy", False)
    if not isinstance(busy, bool):
        raise ProtocolError("frame busy flag must be a boolean")
    lengths = env.get("strs", [])
    if (
        not isinstance(lengths, list)
        or len(lengths) > MAX_STRINGS
        or not all(_int_field(n) for n in lengths)
    ):
        raise ProtocolError(f"frame string table is not a list of at most {MAX_STRINGS} sizes")
    if sum(lengths) != json_len - nl - 1:
        raise ProtocolError(
            f"frame string table says {sum(lengths):,} bytes, the frame holds {json_len - nl - 1:,}"
        )
    # JSON escapes can still spell lone surrogates ("\\ud800"): as text they would break every
    # JSON, SSE and log encoder downstream, so they become U+FFFD here (long strings are
    # strict UTF-8 and cannot hold them). Bounded by the envelope's size.
    if "\\ud" in str(head[:nl], "utf-8").lower():
        body = _valid_text(body)
    out = Envelope()
    out.type, out.id, out.parent, out.busy, out.body = ftype, env["id"], parent, busy, body
    out.json_len, out.text_start, out.lengths = json_len, nl + 1, lengths
    out.slots = _placeholders(body, len(lengths))
    if len(head) >= json_len:
        out.attach(head)
    return out


def _placeholders(body: dict[str, Any], count: int) -> list[tuple[Any, Any, int]]:
    """(container, key, index) of every long-string placeholder; each string used once."""
    if _REF in body:
        raise ProtocolError("a frame body cannot be a string placeholder")
    used = bytearray(count)
    slots: list[tuple[Any, Any, int]] = []
    todo: list[Any] = [body]
    while todo:
        node = todo.pop()
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(value, dict):
                if _REF not in value:
                    todo.append(value)
                    continue
                k = value[_REF]
                if len(value) != 1 or type(k) is not int or not 0 <= k < count or used[k]:
                    raise ProtocolError("frame has a bad long-string placeholder")
                used[k] = 1
                slots.append((node, key, k))
            elif isinstance(value, list):
                todo.append(value)
    if len(slots) != count:
        raise ProtocolError(f"frame carries {count} long strings but places {len(slots)}")
    return slots


def decode(header: bytes, payload: bytes | bytearray, allowed: frozenset[str]) -> Frame:
    """Build a frame from its header and the bytes that followed it; validate its shape.

    The worker's (synchronous) reader. The host reads worker frames with the same pieces
    (``check_header``, ``parse_envelope``, ``Envelope``) and checks each body's schema.
    """
    json_len, blob_len = check_header(header)
    if len(payload) != json_len + blob_len:
        raise ProtocolError(f"frame of {json_len}+{blob_len} bytes arrived with {len(payload)}")
    env = parse_envelope(payload, json_len, allowed)
    # The blob (a context's bytes) is a view of what was read, not a copy of it.
    return env.frame(memoryview(payload)[json_len:] if blob_len else b"")


def _names(keys: Any) -> str:
    return ", ".join(repr(str(k)[:40]) for k in sorted(keys, key=str)[:5])


# ---- schema checks ---------------------------------------------------------------------------
# A check is ``check(value, where)`` raising ProtocolError; ``longest`` is the most characters
# any one string under it may hold (bounds the bytes accepted before decoding). Built from a
# handful of combinators at import time: a few dozen small closures.

Check = Callable[[Any, str], None]


def _with_longest(check: Check, longest: int) -> Check:
    check.longest = longest  # type: ignore[attr-defined]
    return check


def longest(check: Check) -> int:
    """The most characters any one string accepted by ``check`` may hold."""
    return int(getattr(check, "longest", 0))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(limit: int) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string, not {_type_name(value)}")
        if len(value) > limit:
            raise ProtocolError(f"{where} has {len(value):,} characters, more than {limit:,}")

    return _with_longest(check, limit)


def _count(value: Any, where: str) -> None:
    if not _int_field(value):
        raise ProtocolError(f"{where} must be a non-negative integer")


def _number(value: Any, where: str) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ProtocolError(f"{where} must be a non-negative number")


def _flag(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise ProtocolError(f"{where} must be a boolean")


def _scalar(limit: int) -> Check:
    """A short string, a number, a boolean or null."""
    text = _text(limit)

    def check(value: Any, where: str) -> None:
        if isinstance(value, str):
            text(value, where)
        elif value is not None and type(value) not in (bool, int, float):
            raise ProtocolError(f"{where} must be a short scalar, not {_type_name(value)}")

    return _with_longest(check, limit)


def _nullable(inner: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if value is not None:
            inner(value, where)

    return _with_longest(check, longest(inner))


def _array(item: Check, limit: int, *, at_least: int = 0, total_chars: int = 0) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list, not {_type_name(value)}")
        if not at_least <= len(value) <= limit:
            raise ProtocolError(
                f"{where} has {len(value):,} items; between {at_least} and {limit:,} allowed"
            )
        for i, x in enumerate(value):
            item(x, f"{where}[{i}]")
        if total_chars and sum(len(x) for x in value) > total_chars:
            raise ProtocolError(f"{where} holds more than {total_chars:,} characters in all")

    return _with_longest(check, longest(item))


def _object(
    required: dict[str, Check], optional: dict[str, Check] | None = None, *, extra: int = 0
) -> Check:
    """A dict with these fields; ``extra`` more fields of short scalars are tolerated."""
    fields = {**required, **(optional or {})}
    extra_check = _scalar(MAX_REPR_CHARS)

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object, not {_type_name(value)}")
        missing = required.keys() - value.keys()
        if missing:
            raise ProtocolError(f"{where} lacks {_names(missing)}")
        unknown = [k for k in value if k not in fields]
        if len(unknown) > extra:
            raise ProtocolError(f"{where} has unexpected fields {_names(unknown)}")
        for key, x in value.items():
            field = fields.get(key)
            if field is not None:
                field(x, f"{where}.{key}")
            elif len(key) > 64:
                raise ProtocolError(f"{where} has a field name of {len(key):,} characters")
            else:
                extra_check(x, f"{where}.{key[:40]}")

    check.required = frozenset(required)  # type: ignore[attr-defined]
    check.optional = frozenset(optional or ())  # type: ignore[attr-defined]
    return _with_longest(
        check, max([longest(c) for c in fields.values()] + ([MAX_REPR_CHARS] if extra else []))
    )


def _either(*choices: Check) -> Check:
    """The first choice that accepts (choices are tried in order; the last one's error wins)."""

    def check(value: Any, where: str) -> None:
        for choice in choices[:-1]:
            try:
                choice(value, where)
                return
            except ProtocolError:
                continue
        choices[-1](value, where)

    return _with_longest(check, max(longest(c) for c in choices))


_NAME = _text(MAX_NAME_CHARS)
_KEY_NAME = _either(_scalar(MAX_NAME_CHARS), _array(_scalar(MAX_NAME_CHARS), 16))
_VAR_INFO = _object({"name": _KEY_NAME, "type": _NAME, "repr": _text(MAX_REPR_CHARS)})
_CONTEXT_INFO = _object(
    {"type": _NAME},
    {
        "length": _count,
        "chars": _count,
        "item_chars": _array(_count, 20),
        "keys": _array(_text(MAX_REPR_CHARS), 20),
    },
)
_REF_ID = _nullable(_text(MAX_REF_CHARS))
_MODEL = _scalar(MAX_MODEL_CHARS)
_RLM_ITEM = _object({"query": _text(MAX_PROMPT_CHARS), "context_ref": _REF_ID})

CHECK_HELLO = _object({"python": _text(40), "pid": _count, "uid": _count}, extra=MAX_SMALL_FIELDS)
CHECK_ERROR = _object({"name": _NAME, "message": _text(MAX_MESSAGE_CHARS)})
CHECK_STATE = _object({}, {"timeout": _number})

_CALL_CHECKS: dict[str, Check] = {
    "llm": _object({"kind": _text(16), "prompt": _text(MAX_PROMPT_CHARS), "model": _MODEL}),
    "llm_batched": _object(
        {
            "kind": _text(16),
            "prompts": _array(
                _text(MAX_PROMPT_CHARS), MAX_BATCH_ITEMS, at_least=1, total_chars=MAX_BATCH_CHARS
            ),
            "model": _MODEL,
        }
    ),
    "rlm": _object({"kind": _text(16), "query": _text(MAX_PROMPT_CHARS), "context_ref": _REF_ID}),
    "rlm_batched": _object(
        {"kind": _text(16), "items": _array(_RLM_ITEM, MAX_BATCH_ITEMS, at_least=1)}
    ),
}
assert tuple(_CALL_CHECKS) == CALL_KINDS


def _check_batch_total(body: dict[str, Any]) -> None:
    if body.get("kind") == "rlm_batched":
        total = sum(len(item["query"]) for item in body["items"])
        if total > MAX_BATCH_CHARS:
            raise ProtocolError(f"call.items holds more than {MAX_BATCH_CHARS:,} characters")


def _call(value: Any, where: str) -> None:
    kind = value.get("kind") if isinstance(value, dict) else None
    check = _CALL_CHECKS.get(kind) if isinstance(kind, str) else None
    if check is None:
        raise ProtocolError(f"{where} has an unknown kind {str(kind)[:40]!r}")
    check(value, where)
    _check_batch_total(value)


CHECK_CALL: Check = _with_longest(_call, MAX_PROMPT_CHARS)


def exec_result_check(output_cap: int) -> Check:
    """The schema of an exec's result, for a block run with this output cap (characters)."""
    return _object(
        {
            # print()ed output (up to the cap) plus output written to fds 1/2 (up to the cap)
            # plus the worker's note about what it dropped
            "stdout": _text(2 * output_cap + MAX_OUTPUT_NOTE_CHARS),
            "stderr": _text(output_cap),
            "stdout_dropped": _count,
            "stderr_dropped": _count,
            "error": _nullable(_object({"type": _NAME, "message": _text(MAX_MESSAGE_CHARS)})),
            "changed": _array(_VAR_INFO, MAX_CHANGED),
            "duration_ms": _number,
        },
        {"answer": _text(MAX_VAR_CHARS), "final": _text(MAX_VAR_CHARS)},
    )


RESULT_CHECKS: dict[str, Check] = {
    "get_var": _object({"found": _flag}, {"text": _text(MAX_VAR_CHARS), "type": _NAME}),
    "vars": _object(
        {"vars": _array(_VAR_INFO, MAX_LISTED), "state": _array(_VAR_INFO, MAX_LISTED)}
    ),
    "load": _object({}, {"received": _count, "context": _CONTEXT_INFO}),
    "ns_new": _object({}, {"context": _CONTEXT_INFO}),
    "ns_drop": _object({"dropped": _flag}),
    "reset": _object({}, {"reset": _flag}, extra=MAX_SMALL_FIELDS),
    "ping": _object({"pong": _flag}),
    "snapshot": _object(
        {"size": _count}, {"over": _flag, "unpicklable": _array(_NAME, MAX_UNKEPT)}
    ),
    "snapshot_read": _object({"data": _text(SNAPSHOT_CHUNK_BYTES * 4 // 3 + 4)}, {"final": _flag}),
    "restore": _object(
        {}, {"received": _count, "restored": _count, "failed": _array(_NAME, MAX_UNKEPT)}
    ),
}
"""The schema of each request type's result, except exec's (see ``exec_result_check``)."""


def result_json_bytes(request_type: str, output_cap: int = 0) -> int:
    """The most bytes of JSON the result of such a request can take on the wire."""
    if request_type == "exec":
        chars = 3 * output_cap + MAX_OUTPUT_NOTE_CHARS + 2 * MAX_VAR_CHARS
        chars += MAX_CHANGED * (2 * MAX_NAME_CHARS + MAX_REPR_CHARS) + 2 * MAX_MESSAGE_CHARS
    elif request_type == "get_var":
        chars = MAX_VAR_CHARS + MAX_NAME_CHARS
    elif request_type == "vars":
        chars = 2 * MAX_LISTED * (2 * MAX_NAME_CHARS + MAX_REPR_CHARS)
    elif request_type == "snapshot_read":  # base64: one byte per character
        return SMALL_JSON_BYTES + SNAPSHOT_CHUNK_BYTES * 4 // 3 + 4
    elif request_type in ("snapshot", "restore"):
        chars = MAX_UNKEPT * MAX_NAME_CHARS
    else:
        return SMALL_JSON_BYTES
    return min(MAX_JSON_BYTES, SMALL_JSON_BYTES + _UTF8_MAX * chars)


CALL_JSON_BYTES = min(MAX_JSON_BYTES, SMALL_JSON_BYTES + _UTF8_MAX * MAX_BATCH_CHARS)
"""The most bytes of JSON a call frame can take on the wire."""
