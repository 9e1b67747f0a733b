"""The wire format: round trips, size limits and malformed frames rejected at the boundary."""

from __future__ import annotations

import json

import pytest

from sandbox import protocol as proto


def _split(data: bytes) -> tuple[bytes, bytes]:
    return data[: proto.HEADER.size], data[proto.HEADER.size :]


def test_round_trip_keeps_every_field() -> None:
    frame = proto.Frame(
        "call", 7, parent=3, body={"kind": "llm", "prompt": "héllo \u2603", "n": [1, 2]},
        blob=b"\x00\xffraw", busy=True,
    )  # fmt: skip
    header, payload = _split(proto.encode(frame))
    assert proto.check_header(header) == (len(payload) - 5, 5)
    assert proto.decode(header, payload, proto.WORKER_TYPES) == frame


def test_round_trip_defaults() -> None:
    frame = proto.Frame("ping", 1)
    header, payload = _split(proto.encode(frame))
    out = proto.decode(header, payload, proto.HOST_TYPES)
    assert (out.parent, out.body, out.blob, out.busy) == (None, {}, b"", False)


def test_lone_surrogates_survive() -> None:
    frame = proto.Frame("result", 2, body={"stdout": "bad \udcff end"})
    header, payload = _split(proto.encode(frame))
    assert proto.decode(header, payload, proto.WORKER_TYPES).body["stdout"] == "bad \udcff end"


def test_encode_rejects_oversized_blob() -> None:
    with pytest.raises(proto.ProtocolError, match="blob"):
        proto.encode(proto.Frame("load", 1, blob=b"x" * (proto.MAX_BLOB_BYTES + 1)))


def test_encode_rejects_oversized_envelope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "MAX_JSON_BYTES", 1000)
    with pytest.raises(proto.ProtocolError, match="envelope"):
        proto.encode(proto.Frame("result", 1, body={"stdout": "x" * 2000}))


def test_header_past_limits_is_rejected_before_reading() -> None:
    with pytest.raises(proto.ProtocolError, match="size limits"):
        proto.check_header(proto.HEADER.pack(proto.MAX_JSON_BYTES + 1, 0))
    with pytest.raises(proto.ProtocolError, match="size limits"):
        proto.check_header(proto.HEADER.pack(10, proto.MAX_BLOB_BYTES + 1))
    with pytest.raises(proto.ProtocolError):
        proto.check_header(b"\x00\x01")  # short header


def _raw(env: object) -> tuple[bytes, bytes]:
    data = json.dumps(env).encode()
    return proto.HEADER.pack(len(data), 0), data


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (proto.HEADER.pack(5, 0), b"\xff\xfe{}!"),  # not UTF-8 JSON
        (proto.HEADER.pack(4, 0), b"garb"),  # not JSON
        (proto.HEADER.pack(10, 0), b'{"v": 1, '),  # short payload: truncated JSON
        _raw([1, 2, 3]),  # not an object
        _raw({"v": 2, "type": "ping", "id": 1, "body": {}}),  # wrong version
        _raw({"v": 1, "type": "rm -rf", "id": 1, "body": {}}),  # unknown type
        _raw({"v": 1, "type": "ping", "id": "1", "body": {}}),  # id not an int
        _raw({"v": 1, "type": "ping", "id": 1, "body": []}),  # body not an object
        _raw({"v": 1, "type": "ping", "id": 1, "body": {}, "parent": "x"}),  # bad parent
        _raw({"v": 1, "type": "result", "id": 1, "body": {}}),  # a worker type sent to the worker
    ],
)
def test_malformed_frames_are_rejected(header: bytes, payload: bytes) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.decode(header, payload, proto.HOST_TYPES)


def test_direction_matters() -> None:
    header, payload = _split(proto.encode(proto.Frame("exec", 1, body={"code": "1"})))
    assert proto.decode(header, payload, proto.HOST_TYPES).type == "exec"
    with pytest.raises(proto.ProtocolError):
        proto.decode(header, payload, proto.WORKER_TYPES)
