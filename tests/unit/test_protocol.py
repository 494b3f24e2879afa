"""The scheduler-agent frame format: pack, prefix bounds, header decoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.agent.protocol import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    PREFIX,
    ProtocolError,
    decode_header,
    pack,
    unpack_prefix,
)


def unpack(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """Split one whole frame the way both ends read it."""
    header_len, body_len = unpack_prefix(frame[: PREFIX.size])
    start = PREFIX.size
    header = decode_header(frame[start : start + header_len])
    body = frame[start + header_len : start + header_len + body_len]
    assert len(frame) == start + header_len + body_len
    return header, body


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ({"op": "hello"}, b""),
        ({"op": "invoke", "request_id": "r-1", "task_id": None, "attempt": 1}, b'{"x": 1}'),
        ({"ok": True, "result_len": 3, "nested": {"a": [1, 2.5, "é"]}}, b"\x00\x01\xff"),
        ({}, b"body only"),
    ],
)
def test_round_trip(header: dict[str, Any], body: bytes) -> None:
    assert unpack(pack(header, body)) == (header, body)


def test_body_defaults_to_empty() -> None:
    assert unpack(pack({"op": "hello"})) == ({"op": "hello"}, b"")


def test_prefix_is_big_endian_lengths() -> None:
    frame = pack({"a": 1}, b"xyz")
    raw = json.dumps({"a": 1}, separators=(",", ":")).encode()
    assert frame[:8] == len(raw).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert frame[8:] == raw + b"xyz"


def test_frames_concatenate() -> None:
    stream = pack({"n": 1}, b"a") + pack({"n": 2}, b"bc")
    header_len, body_len = unpack_prefix(stream[:8])
    first_end = 8 + header_len + body_len
    assert unpack(stream[:first_end]) == ({"n": 1}, b"a")
    assert unpack(stream[first_end:]) == ({"n": 2}, b"bc")


def test_prefix_at_the_limits_is_accepted() -> None:
    assert unpack_prefix(PREFIX.pack(MAX_HEADER_BYTES, MAX_BODY_BYTES)) == (
        MAX_HEADER_BYTES,
        MAX_BODY_BYTES,
    )


@pytest.mark.parametrize(
    ("header_len", "body_len"),
    [
        (MAX_HEADER_BYTES + 1, 0),
        (0, MAX_BODY_BYTES + 1),
        (0xFFFFFFFF, 0xFFFFFFFF),
    ],
)
def test_oversize_prefix_raises(header_len: int, body_len: int) -> None:
    with pytest.raises(ProtocolError, match="too large"):
        unpack_prefix(PREFIX.pack(header_len, body_len))


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_non_object_header_raises(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        decode_header(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b'{"a": 1}}'])
def test_malformed_header_raises(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad frame header"):
        decode_header(raw)
