"""Wire format between the scheduler and the agent in a container (stdlib only).

One frame is an 8-byte prefix (header length, body length; big-endian u32),
a JSON header and a raw body. The agent connects to the scheduler's socket
and says ``hello``; then the scheduler sends ``init`` once and ``invoke`` one
at a time, and the agent answers each with exactly one frame.

init:    {"op": "init", "handler": "main.handler", "code_dir": "/var/task",
          "env": {...}, "function": "...", "version": "...", "memory_mb": 256,
          "log_limit": 65536, "pickle": null | "handler.pkl"}
         -> {"ok": true, "init_ms": 1.2} | {"ok": false, "error": {...}}
invoke:  {"op": "invoke", "request_id": "...", "task_id": "..." | null,
          "deadline_ms": <epoch ms>, "attempt": 1, "content_type": "..."} + payload
         -> {"ok": true, "content_type": "...", "result_len": n, "duration_ms": x,
             "logs_truncated": false} + result bytes + log bytes
         -> {"ok": false, "error": {"errorType", "errorMessage", "stackTrace"},
             "retryable": bool, "result_len": 0, ...} + log bytes
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only for the annotation: the agent imports asyncio lazily, for async
    # handlers, to keep its start-up short.
    import asyncio

PREFIX = struct.Struct("!II")
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20
SOCKET_NAME = "host.sock"


class ProtocolError(Exception):
    """A frame that breaks the wire format."""


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    """Encode one frame."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def unpack_prefix(prefix: bytes) -> tuple[int, int]:
    """Decode and bound-check a frame prefix."""
    header_len, body_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER_BYTES or body_len > MAX_BODY_BYTES:
        raise ProtocolError(f"frame too large: header {header_len} B, body {body_len} B")
    return header_len, body_len


def decode_header(raw: bytes) -> dict[str, Any]:
    """Decode a frame header."""
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """Read one frame from an asyncio stream (the host ends: the scheduler and the hop).

    Raises asyncio.IncompleteReadError when the stream ends inside a frame.
    """
    header_len, body_len = unpack_prefix(await reader.readexactly(PREFIX.size))
    header = decode_header(await reader.readexactly(header_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body
