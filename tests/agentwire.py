"""The host end of the agent protocol over a blocking socket, for tests that drive an agent.

Frames are encoded and decoded by ``runtime.agent.protocol``; only the socket
reads live here.
"""

from __future__ import annotations

import socket
from typing import Any

from runtime.agent.protocol import PREFIX, decode_header, pack, unpack_prefix


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    """`n` bytes from `conn`; EOFError when the agent closes the socket first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("the agent closed the socket")
        buf += chunk
    return bytes(buf)


def read_frame(conn: socket.socket) -> tuple[dict[str, Any], bytes]:
    """One frame from the agent: its header and body."""
    header_len, body_len = unpack_prefix(recv_exactly(conn, PREFIX.size))
    header = decode_header(recv_exactly(conn, header_len))
    return header, recv_exactly(conn, body_len) if body_len else b""


def call(conn: socket.socket, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
    """Send one frame and read the agent's one answer."""
    conn.sendall(pack(header, body))
    return read_frame(conn)
