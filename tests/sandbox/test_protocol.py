"""The wire format and the frame schema: round trips, size limits, malformed frames and
out-of-bounds bodies rejected at the boundary. No sandbox needed."""

from __future__ import annotations

import json
import re
import struct
import typing
from pathlib import Path
from typing import Any

import pytest

from sandbox import protocol as proto

WORKER_SOURCE = Path(__file__).resolve().parents[2] / "sandbox" / "worker.py"


def _split(data: bytes) -> tuple[bytes, bytes]:
    return data[: proto.HEADER.size], data[proto.HEADER.size :]


def _round_trip(frame: proto.Frame, allowed: frozenset[str] = proto.WORKER_TYPES) -> proto.Frame:
    header, payload = _split(proto.encode(frame))
    return proto.decode(header, payload, allowed)


def _envelope_of(data: bytes) -> dict[str, Any]:
    json_len, _ = proto.check_header(data[:8])
    part = data[8 : 8 + json_len]
    return json.loads(part[: part.index(b"\n")])


# ---- the wire format ---------------------------------------------------------------------


def test_round_trip_keeps_every_field() -> None:
    frame = proto.Frame(
        "call", 7, parent=3, body={"kind": "llm", "prompt": "héllo \u2603", "n": [1, 2]},
        blob=b"\x00\xffraw", busy=True,
    )  # fmt: skip
    header, payload = _split(proto.encode(frame))
    json_len, blob_len = proto.check_header(header)
    assert (blob_len, len(payload)) == (5, json_len + 5)
    assert proto.decode(header, payload, proto.WORKER_TYPES) == frame


def test_encode_parts_hand_over_the_blob_and_long_strings_uncopied() -> None:
    # A context crosses as the bytes the host encoded once: the frame's pieces are written
    # one after another, and the worker decodes the blob from the buffer it read it into.
    blob = b"c" * (proto.CHUNK_BYTES // 2)
    frame = proto.Frame("load", 4, body={"names": ["context"], "note": "n" * 5000}, blob=blob)
    parts = proto.encode_parts(frame)
    assert parts[-1] is blob
    assert b"".join(parts) == proto.encode(frame)
    header, payload = _split(proto.encode(frame))
    decoded = proto.decode(header, bytearray(payload), proto.HOST_TYPES)
    assert isinstance(decoded.blob, memoryview) and decoded.blob == blob
    assert decoded == frame
    assert all(proto.encode_parts(proto.Frame("ping", 1)))  # no empty piece to write


def test_round_trip_defaults() -> None:
    out = _round_trip(proto.Frame("ping", 1), proto.HOST_TYPES)
    assert (out.parent, out.body, out.blob, out.busy) == (None, {}, b"", False)


def test_long_strings_travel_outside_the_envelope() -> None:
    body = {
        "stdout": "x" * 100_000,
        "changed": [{"name": "n", "type": "str", "repr": "é" * 150}],
        "nested": {"deep": ["short", "\U0001f600" * 70]},
    }
    data = proto.encode(proto.Frame("result", 2, body=body))
    env = _envelope_of(data)
    assert len(json.dumps(env)) < 400  # structure only: the 100k characters are not in it
    assert env["body"]["stdout"] == {"\x00": 0} and env["body"]["nested"]["deep"][0] == "short"
    assert env["strs"] == [100_000, 300, 280]
    assert _round_trip(proto.Frame("result", 2, body=body)).body == body


def test_many_short_strings_keep_the_envelope_small() -> None:
    """Past MAX_ENVELOPE_BYTES every string moves out, so a batch of 1000 still fits."""
    body = {"kind": "llm_batched", "prompts": ["\x01" * 60] * 1000, "model": None}
    data = proto.encode(proto.Frame("call", 1, 1, body))
    json_len, _ = proto.check_header(data[:8])
    assert data[8 : 8 + json_len].index(b"\n") <= proto.MAX_ENVELOPE_BYTES
    assert _round_trip(proto.Frame("call", 1, 1, body)).body == body


def test_the_wire_carries_valid_utf8_only() -> None:
    """Lone surrogates (user code can print them) become U+FFFD: the host sees text, always."""
    frame = proto.Frame("result", 2, body={"stdout": "bad \udcff end", "long": "\ud800" * 80})
    data = proto.encode(frame)
    data[8:].decode("utf-8")  # strict: no surrogates on the wire
    out = _round_trip(frame).body
    assert out == {"stdout": "bad \ufffd end", "long": "\ufffd" * 80}


@pytest.mark.parametrize(
    "escaped",
    ['"\\ud800"', '"a\\udcffb"', '"\\uD83D"', '"\\ud83d\\ude00 ok \\udc00"'],
    ids=["high", "low", "upper-case", "pair-then-lone"],
)
def test_surrogates_spelled_as_json_escapes_become_fffd(escaped: str) -> None:
    """A hostile worker can write its own envelope with escapes json.loads turns into lone
    surrogates: the host replaces them before anything is kept."""
    env = f'{{"v":{proto.VERSION},"type":"result","id":3,"body":{{"stdout":{escaped},{escaped}:1}}}}\n'
    data = env.encode()
    header = proto.HEADER.pack(len(data), 0)
    out = proto.decode(header, data, proto.WORKER_TYPES).body
    text = repr(out)
    for value in [*out, *out.values()]:
        if isinstance(value, str):
            value.encode("utf-8")  # strict: no lone surrogate survived
    assert "\\ufffd" in text or "\ufffd" in text


def test_encode_rejects_oversized_blob() -> None:
    with pytest.raises(proto.ProtocolError, match="blob"):
        proto.encode(proto.Frame("load", 1, blob=b"x" * (proto.MAX_BLOB_BYTES + 1)))


def test_encode_rejects_oversized_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "MAX_JSON_BYTES", 1000)
    with pytest.raises(proto.ProtocolError, match="envelope and strings"):
        proto.encode(proto.Frame("result", 1, body={"stdout": "x" * 2000}))


def test_encode_refuses_the_reserved_key() -> None:
    with pytest.raises(proto.ProtocolError, match="reserved"):
        proto.encode(proto.Frame("ns_new", 1, body={"context": {"\x00": 0}}))


def test_non_json_values_travel_as_their_repr() -> None:
    out = _round_trip(proto.Frame("result", 1, body={"x": {1, 2}.__class__, "t": (1, "a")}))
    assert out.body == {"x": "<class 'set'>", "t": [1, "a"]}


def test_header_past_limits_is_rejected_before_reading() -> None:
    with pytest.raises(proto.ProtocolError, match="size limits"):
        proto.check_header(proto.HEADER.pack(proto.MAX_JSON_BYTES + 1, 0))
    with pytest.raises(proto.ProtocolError, match="size limits"):
        proto.check_header(proto.HEADER.pack(10, proto.MAX_BLOB_BYTES + 1))
    with pytest.raises(proto.ProtocolError):
        proto.check_header(b"\x00\x01")  # short header


def test_long_strings_decode_in_steps_across_character_boundaries() -> None:
    text = "a\U0001f600é" * 5000  # 35,000 bytes; steps of 999 split characters
    data = proto.encode(proto.Frame("result", 1, body={"stdout": text}))
    json_len, _ = proto.check_header(data[:8])
    env = proto.parse_envelope(data[8:], json_len, proto.WORKER_TYPES, proto.MAX_ENVELOPE_BYTES)
    steps = sum(1 for _ in env.decode_strings(step=999))
    assert steps >= 35
    assert env.frame().body == {"stdout": text}


def test_string_sizes_are_refused_before_decoding() -> None:
    data = proto.encode(proto.Frame("state", 1, body={"s": "y" * 100}))
    json_len, _ = proto.check_header(data[:8])
    env = proto.parse_envelope(data[8:], json_len, proto.WORKER_TYPES)
    with pytest.raises(proto.ProtocolError, match="string of 100 bytes"):
        env.check_string_bytes(proto.longest(proto.CHECK_STATE), "a state frame")


def _raw(env: object, text: bytes = b"", newline: bool = True) -> tuple[bytes, bytes]:
    data = json.dumps(env).encode() + (b"\n" if newline else b"") + text
    return proto.HEADER.pack(len(data), 0), data


def _ping(**extra: Any) -> dict[str, Any]:
    return {"v": proto.VERSION, "type": "ping", "id": 1, "body": {}, **extra}


@pytest.mark.parametrize(
    ("header", "payload", "problem"),
    [
        (proto.HEADER.pack(5, 0), b"\xff\xfe{}\n", "not JSON"),  # not UTF-8
        (proto.HEADER.pack(5, 0), b"garb\n", "not JSON"),
        (proto.HEADER.pack(4, 0), b"{}{}", "not terminated"),  # no newline
        (proto.HEADER.pack(10, 0), b'{"v": 1,\n', "arrived with"),  # short payload
        (*_raw([1, 2, 3]), "wrong shape"),
        (*_raw({**_ping(), "v": 1}), "wrong shape or version"),  # version 1 frames
        (*_raw({**_ping(), "type": "rm -rf"}), "unexpected frame type"),
        (*_raw({**_ping(), "id": "1"}), "unexpected frame type or fields"),
        (*_raw({**_ping(), "id": -1}), "unexpected frame type or fields"),
        (*_raw({**_ping(), "id": True}), "unexpected frame type or fields"),
        (*_raw({**_ping(), "id": 2**60}), "unexpected frame type or fields"),
        (*_raw({**_ping(), "body": []}), "unexpected frame type or fields"),
        (*_raw(_ping(parent="x")), "parent"),
        (*_raw(_ping(busy="yes")), "busy"),
        (*_raw(_ping(extra=1)), "unknown fields 'extra'"),
        (*_raw({**_ping(), "type": "result"}), "unexpected frame type"),  # a worker's type
        (*_raw(_ping(strs=[3])), "string table says 3 bytes, the frame holds 0"),
        (*_raw(_ping(strs="3"), b"abc"), "string table"),
        (*_raw(_ping(strs=[1] * 5000), b"a" * 5000), "string table"),
        (*_raw(_ping(strs=[3]), b"abc"), "carries 1 long strings but places 0"),
        (*_raw({**_ping(body={"a": {"\x00": 1}}), "strs": [3]}, b"abc"), "placeholder"),
        (*_raw({**_ping(body={"a": {"\x00": 0, "b": 1}}), "strs": [3]}, b"abc"), "placeholder"),
        (*_raw({**_ping(body={"a": [{"\x00": 0}, {"\x00": 0}]}), "strs": [3]}, b"abc"), "placeholder"),
        (*_raw({**_ping(body={"\x00": 0}), "strs": [3]}, b"abc"), "body cannot be"),
        (*_raw({**_ping(body={"a": {"\x00": 0}}), "strs": [3]}, b"\xed\xb3\xbf"), "not valid UTF-8"),
        (*_raw({**_ping(body={"a": "x" * 20}), "pad": 0}), "unknown fields"),
        (*_raw({**_ping(body={"a": [[[[]]]]})}), ""),  # fine: nesting is not an error
    ],
)  # fmt: skip
def test_malformed_frames_are_rejected(header: bytes, payload: bytes, problem: str) -> None:
    if problem == "":
        assert proto.decode(header, payload, proto.HOST_TYPES).type == "ping"
        return
    with pytest.raises(proto.ProtocolError, match=re.escape(problem)):
        proto.decode(header, payload, proto.HOST_TYPES)


def test_deep_nesting_is_a_protocol_error_not_a_crash() -> None:
    deep = b'{"v":2,"type":"ping","id":1,"body":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n"
    with pytest.raises(proto.ProtocolError, match="not JSON"):
        proto.decode(proto.HEADER.pack(len(deep), 0), deep, proto.HOST_TYPES)


def test_a_worker_envelope_past_its_limit_is_refused_unread() -> None:
    """The host looks for the envelope's end in its first MAX_ENVELOPE_BYTES + 1 bytes only."""
    head, data = _raw({**_ping(), "body": {"pad": "x" * proto.MAX_ENVELOPE_BYTES}})
    json_len, _ = proto.check_header(head)
    with pytest.raises(proto.ProtocolError, match="envelope is longer than 65,536 bytes"):
        proto.parse_envelope(
            data[: proto.MAX_ENVELOPE_BYTES + 1],
            json_len,
            proto.HOST_TYPES,
            proto.MAX_ENVELOPE_BYTES,
        )


def test_direction_matters() -> None:
    header, payload = _split(proto.encode(proto.Frame("exec", 1, body={"code": "1"})))
    assert proto.decode(header, payload, proto.HOST_TYPES).type == "exec"
    with pytest.raises(proto.ProtocolError):
        proto.decode(header, payload, proto.WORKER_TYPES)


# ---- the schema --------------------------------------------------------------------------

CAP = 100  # the output cap of the exec results below


def _exec_result(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "stdout": "", "stderr": "", "stdout_dropped": 0, "stderr_dropped": 0, "error": None,
        "changed": [], "duration_ms": 0.5,
    }  # fmt: skip
    body.update(fields)
    return {k: v for k, v in body.items() if v is not _MISSING}


_MISSING = object()
_VAR = {"name": "x", "type": "int", "repr": "1"}
_CTX = {"type": "str", "length": 3, "chars": 3}


def _many(n: int, item: Any) -> list[Any]:
    return [item] * n


SCHEMA_CASES: list[tuple[str, Any, str]] = [
    # (which check, body, "" when accepted or a fragment of the error)
    ("hello", {"python": "3.11.2", "pid": 1, "uid": 10001}, ""),
    ("hello", {"python": "3.11.2", "pid": 1, "uid": 10001, "forked": True, "gen": 2}, ""),
    ("hello", {"python": "3.11.2", "pid": 1}, "lacks 'uid'"),
    ("hello", {"python": "3" * 41, "pid": 1, "uid": 0}, "more than 40"),
    ("hello", {"python": "3", "pid": -1, "uid": 0}, "non-negative integer"),
    ("hello", {"python": "3", "pid": 1, "uid": 0, "note": "x" * 201}, "more than 200"),
    ("hello", {"python": "3", "pid": 1, "uid": 0, "nested": {"a": 1}}, "short scalar"),
    ("hello", {"python": "3", "pid": 1, "uid": 0, **{f"k{i}": i for i in range(17)}}, "unexpected fields"),
    ("error", {"name": "KeyError", "message": "no value handed over as 'h1'"}, ""),
    ("error", {"name": "KeyError", "message": "m" * 2001}, "2,001 characters, more than 2,000"),
    ("error", {"name": "KeyError"}, "lacks 'message'"),
    ("state", {}, ""),
    ("state", {"timeout": 2.5}, ""),
    ("state", {"timeout": float("nan")}, "non-negative number"),
    ("state", {"busy": False}, "unexpected fields 'busy'"),
    ("call", {"kind": "llm", "prompt": "hi", "model": None}, ""),
    ("call", {"kind": "llm", "prompt": "hi", "model": "gpt-5-mini"}, ""),
    ("call", {"kind": "llm", "prompt": "hi", "model": 5}, ""),  # sloppy but harmless
    ("call", {"kind": "llm", "prompt": "hi", "model": ["a"]}, "short scalar"),
    ("call", {"kind": "llm", "prompt": "hi", "model": "m" * 201}, "more than 200"),
    ("call", {"kind": "llm", "prompt": "p" * (proto.MAX_PROMPT_CHARS + 1), "model": None}, "more than 2,000,000"),
    ("call", {"kind": "llm", "prompt": 5, "model": None}, "must be a string, not int"),
    ("call", {"kind": "llm", "prompt": "hi", "model": None, "cmd": "ls"}, "unexpected fields 'cmd'"),
    ("call", {"kind": "shell", "cmd": "rm -rf /"}, "unknown kind 'shell'"),
    ("call", {"prompt": "hi"}, "unknown kind 'None'"),
    ("call", {"kind": ["llm"], "prompt": "hi"}, "unknown kind"),
    ("call", {"kind": "llm_batched", "prompts": ["a", "b"], "model": None}, ""),
    ("call", {"kind": "llm_batched", "prompts": [], "model": None}, "between 1 and 1,000"),
    ("call", {"kind": "llm_batched", "prompts": _many(10_000, "p"), "model": None}, "10,000 items"),
    ("call", {"kind": "llm_batched", "prompts": _many(3, "p" * 1_500_000), "model": None}, "more than 4,000,000 characters in all"),
    ("call", {"kind": "llm_batched", "prompts": ["a", None], "model": None}, "prompts[1] must be a string"),
    ("call", {"kind": "rlm", "query": "q", "context_ref": "h1"}, ""),
    ("call", {"kind": "rlm", "query": "q", "context_ref": None}, ""),
    ("call", {"kind": "rlm", "query": "q", "context_ref": "h" * 65}, "more than 64"),
    ("call", {"kind": "rlm", "query": "q"}, "lacks 'context_ref'"),
    ("call", {"kind": "rlm_batched", "items": [{"query": "q", "context_ref": None}]}, ""),
    ("call", {"kind": "rlm_batched", "items": ["q"]}, "items[0] must be an object"),
    ("call", {"kind": "rlm_batched", "items": _many(1001, {"query": "q", "context_ref": None})}, "1,001 items"),
    ("call", {"kind": "rlm_batched", "items": _many(3, {"query": "q" * 1_500_000, "context_ref": None})}, "more than 4,000,000"),
    ("exec", _exec_result(), ""),
    ("exec", _exec_result(stdout="o" * (2 * CAP + 200), stderr="e" * CAP), ""),
    ("exec", _exec_result(stdout="o" * (2 * CAP + 201)), "more than 400"),
    ("exec", _exec_result(stderr="e" * (CAP + 1)), "more than 100"),
    ("exec", _exec_result(error={"type": "ValueError", "message": "bad"}, answer="42", final="42"), ""),
    ("exec", _exec_result(error={"type": "ValueError"}), "lacks 'message'"),
    ("exec", _exec_result(error={"type": "E" * 1001, "message": ""}), "more than 1,000"),
    ("exec", _exec_result(error="ValueError"), "must be an object"),
    ("exec", _exec_result(changed=_many(100, _VAR)), ""),
    ("exec", _exec_result(changed=_many(101, _VAR)), "101 items"),
    ("exec", _exec_result(changed=[{**_VAR, "repr": "r" * 201}]), "more than 200"),
    ("exec", _exec_result(changed=[{**_VAR, "name": ["k", 1]}]), ""),  # a tuple state key
    ("exec", _exec_result(duration_ms=-1), "non-negative number"),
    ("exec", _exec_result(duration_ms=True), "non-negative number"),
    ("exec", _exec_result(stdout_dropped=-5), "non-negative integer"),
    ("exec", _exec_result(stdout_dropped=1.5), "non-negative integer"),
    ("exec", _exec_result(final="f" * (proto.MAX_VAR_CHARS + 1)), "more than 2,097,152"),
    ("exec", _exec_result(stdout=_MISSING), "lacks 'stdout'"),
    ("exec", _exec_result(extra="x"), "unexpected fields 'extra'"),
    ("get_var", {"found": False}, ""),
    ("get_var", {"found": True, "text": "t" * proto.MAX_VAR_CHARS, "type": "str"}, ""),
    ("get_var", {"found": True, "text": "t" * (proto.MAX_VAR_CHARS + 1), "type": "str"}, "more than 2,097,152"),
    ("get_var", {"found": "yes"}, "must be a boolean"),
    ("vars", {"vars": _many(200, _VAR), "state": [{**_VAR, "name": 7}]}, ""),
    ("vars", {"vars": _many(201, _VAR), "state": []}, "201 items"),
    ("vars", {"vars": []}, "lacks 'state'"),
    ("load", {"received": 4194304}, ""),
    ("load", {"context": {**_CTX, "item_chars": [1, 2], "keys": ["'a'"]}}, ""),
    ("load", {"context": {**_CTX, "keys": _many(21, "k")}}, "21 items"),
    ("load", {"context": {"length": 3}}, "lacks 'type'"),
    ("ns_new", {}, ""),
    ("ns_new", {"context": _CTX}, ""),
    ("ns_drop", {"dropped": True}, ""),
    ("reset", {"reset": True}, ""),
    ("reset", {"reset": True, "pid": 9, "fresh": True}, ""),
    ("ping", {"pong": True}, ""),
    ("ping", {"pong": True, "load": [1, 2]}, "unexpected fields 'load'"),
]  # fmt: skip

CHECKS: dict[str, proto.Check] = {
    "hello": proto.CHECK_HELLO,
    "error": proto.CHECK_ERROR,
    "state": proto.CHECK_STATE,
    "call": proto.CHECK_CALL,
    "exec": proto.exec_result_check(CAP),
    **proto.RESULT_CHECKS,
}


@pytest.mark.parametrize(("which", "body", "problem"), SCHEMA_CASES)
def test_schema(which: str, body: Any, problem: str) -> None:
    check = CHECKS[which]
    if not problem:
        check(body, which)
        return
    with pytest.raises(proto.ProtocolError, match=re.escape(problem)):
        check(body, which)


def test_the_largest_valid_bodies_fit_their_announced_sizes() -> None:
    """What ``result_json_bytes`` lets through covers the worst body its schema accepts."""
    cap = 5000
    body = _exec_result(
        stdout="\U0001f600" * (2 * cap + 200), stderr="\U0001f600" * cap,
        error={"type": "E" * 1000, "message": "\x01" * 2000},
        changed=_many(100, {"name": "n" * 1000, "type": "t" * 1000, "repr": "\x01" * 200}),
        final="\U0001f600" * 100_000,
    )  # fmt: skip
    proto.exec_result_check(cap)(body, "exec")
    data = proto.encode(proto.Frame("result", 1, body=body))
    assert len(data) - 8 <= proto.result_json_bytes("exec", cap)
    listing = {"vars": _many(200, {"name": "n" * 1000, "type": "t" * 1000, "repr": "\x01" * 200})}
    listing["state"] = listing["vars"]
    proto.RESULT_CHECKS["vars"](listing, "vars")
    assert len(proto.encode(proto.Frame("result", 1, body=listing))) - 8 <= proto.result_json_bytes(
        "vars"
    )
    calls = {"kind": "llm_batched", "prompts": _many(1000, "\x01" * 4000), "model": None}
    proto.CHECK_CALL(calls, "call")
    assert len(proto.encode(proto.Frame("call", 1, 1, calls))) - 8 <= proto.CALL_JSON_BYTES
    for small in ("load", "ns_new", "ns_drop", "reset", "ping"):
        assert proto.result_json_bytes(small) == proto.SMALL_JSON_BYTES


TYPED_BODIES = [
    (proto.HelloBody, proto.CHECK_HELLO),
    (proto.ErrorBody, proto.CHECK_ERROR),
    (proto.StateBody, proto.CHECK_STATE),
    (proto.ExecResultBody, proto.exec_result_check(CAP)),
    (proto.GetVarResult, proto.RESULT_CHECKS["get_var"]),
    (proto.VarsResult, proto.RESULT_CHECKS["vars"]),
    (proto.LoadResult, proto.RESULT_CHECKS["load"]),
    (proto.NsNewResult, proto.RESULT_CHECKS["ns_new"]),
    (proto.NsDropResult, proto.RESULT_CHECKS["ns_drop"]),
    (proto.ResetResult, proto.RESULT_CHECKS["reset"]),
    (proto.PingResult, proto.RESULT_CHECKS["ping"]),
    (proto.LlmCall, proto._CALL_CHECKS["llm"]),
    (proto.LlmBatchedCall, proto._CALL_CHECKS["llm_batched"]),
    (proto.RlmCall, proto._CALL_CHECKS["rlm"]),
    (proto.RlmBatchedCall, proto._CALL_CHECKS["rlm_batched"]),
    (proto.RlmItem, proto._RLM_ITEM),
    (proto.VarInfo, proto._VAR_INFO),
    (proto.ContextInfo, proto._CONTEXT_INFO),
]


@pytest.mark.parametrize(("typed", "check"), TYPED_BODIES, ids=lambda x: getattr(x, "__name__", ""))
def test_typed_bodies_and_schema_name_the_same_fields(typed: Any, check: Any) -> None:
    assert typed.__required_keys__ == check.required
    assert typed.__optional_keys__ == check.optional


def test_one_definition_of_the_call_kinds() -> None:
    assert set(proto._CALL_CHECKS) == set(proto.CALL_KINDS)
    typed_calls = (proto.LlmCall, proto.LlmBatchedCall, proto.RlmCall, proto.RlmBatchedCall)
    kinds = [typing.get_args(typing.get_type_hints(t)["kind"])[0] for t in typed_calls]
    assert tuple(kinds) == proto.CALL_KINDS
    # The worker's helpers make exactly these calls.
    made = set(re.findall(r'self\._call\(\s*"(\w+)"', WORKER_SOURCE.read_text()))
    assert made == set(proto.CALL_KINDS)


def test_every_worker_frame_type_and_request_has_a_schema() -> None:
    assert set(proto.RESULT_CHECKS) | {"exec"} == proto.HOST_TYPES - {"reply"}
    assert {"hello", "result", "error", "call", "state"} == proto.WORKER_TYPES


def test_forged_header_of_a_frame_without_payload() -> None:
    """A header alone (json_len 0) is refused: every frame has an envelope."""
    with pytest.raises(proto.ProtocolError, match="not terminated"):
        proto.decode(struct.pack(">II", 0, 0), b"", proto.WORKER_TYPES)
