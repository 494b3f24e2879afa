"""The host-side frame codec: what it packs, the agent's stdlib codec reads, and
frames come out whole however the bytes are split."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import frames
from runtime.agent import protocol

FRAMES: list[tuple[dict[str, Any], bytes]] = [
    ({"op": "hello", "token": "t"}, b""),
    ({"op": "invoke", "id": 7, "task_id": None, "nested": {"a": [1, 2.5, "é"]}}, b'{"x": 1}'),
    ({"ok": True, "result_len": 3}, b"\x00\x01\xff" * 1000),
]


def stream() -> bytes:
    return b"".join(frames.pack(h, b) for h, b in FRAMES)


@pytest.mark.parametrize(("header", "body"), FRAMES)
def test_a_packed_frame_reads_back_with_the_agents_codec(header: dict[str, Any], body: bytes) -> None:
    frame = frames.pack(header, body)
    header_len, body_len = protocol.unpack_prefix(frame[: protocol.PREFIX.size])
    start = protocol.PREFIX.size
    assert protocol.decode_header(frame[start : start + header_len]) == header
    assert frame[start + header_len :] == body and len(body) == body_len


@pytest.mark.parametrize("chunk", [1, 5, 8, 13, 4096, 1 << 20])
def test_frames_come_out_whole_whatever_the_chunks(chunk: int) -> None:
    parser = frames.FrameParser()
    data = stream()
    got = []
    for i in range(0, len(data), chunk):
        got += parser.feed(data[i : i + chunk])
    assert got == FRAMES


def test_nothing_comes_out_of_a_partial_frame_until_it_is_complete() -> None:
    parser = frames.FrameParser()
    frame = frames.pack(*FRAMES[1])
    assert parser.feed(frame[:-1]) == []
    assert parser.feed(frame[-1:]) == [FRAMES[1]]


def test_a_frame_over_the_bounds_is_refused_from_its_prefix() -> None:
    parser = frames.FrameParser()
    with pytest.raises(protocol.ProtocolError):
        parser.feed(protocol.PREFIX.pack(protocol.MAX_HEADER_BYTES + 1, 0))


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]"])
def test_a_header_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    parser = frames.FrameParser()
    with pytest.raises(protocol.ProtocolError):
        parser.feed(protocol.PREFIX.pack(len(raw), 0) + raw)
