"""The host side of the frame format (runtime/agent/protocol.py): encoding, and a
parser fed from an asyncio protocol's `data_received`.

The agent keeps the stdlib codec (its image has nothing else); the host ends, the
direct hop and the scheduler's agent connections, use orjson, and the hop parses
frames as bytes arrive, with no stream reader in between. Measured on uvloop, a hop
round trip costs 60 CPU-µs for both ends together against 93 with streams and the
stdlib codec, and an agent request 26 CPU-µs of the scheduler's against 43.
"""

from __future__ import annotations

from typing import Any

import orjson

from runtime.agent.protocol import PREFIX, ProtocolError, unpack_prefix

Header = dict[str, Any]
Frame = tuple[Header, bytes]


def pack(header: Header, body: bytes = b"") -> bytes:
    """Encode one frame (what protocol.pack makes, without the spaces' cost)."""
    raw = orjson.dumps(header)
    return PREFIX.pack(len(raw), len(body)) + raw + body


def decode_header(raw: bytes | memoryview) -> Header:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header


class FrameParser:
    """Collects bytes and returns every frame they complete; raises ProtocolError for
    a frame that breaks the format (the caller closes the connection)."""

    __slots__ = ("_buf", "_lengths")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lengths: tuple[int, int] | None = None  # of the frame being read

    @property
    def pending(self) -> int:
        """Bytes received of frames not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        while True:
            if self._lengths is None:
                if len(buf) < PREFIX.size:
                    break
                self._lengths = unpack_prefix(bytes(buf[: PREFIX.size]))
            header_len, body_len = self._lengths
            end = PREFIX.size + header_len + body_len
            if len(buf) < end:
                break
            view = memoryview(buf)
            try:
                header = decode_header(view[PREFIX.size : PREFIX.size + header_len])
                body = bytes(view[PREFIX.size + header_len : end])
            finally:
                view.release()
            del buf[:end]
            self._lengths = None
            frames.append((header, body))
        return frames
