"""The host side of the agent protocol: a cell's socket and its one connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import frames
from runtime.agent import protocol


class AgentGone(Exception):
    """The agent's connection closed: the container exited or was killed."""


class AgentBroke(Exception):
    """The agent broke the wire format (a frame past the protocol's bounds, a bad
    header): the connection cannot go on, and the container is not reused."""


@dataclass(frozen=True)
class Answer:
    """An agent's answer to init or invoke, within the host's bounds whatever the
    agent (which runs the function's code) sent."""

    header: dict[str, Any]
    result: bytes
    logs: bytes
    result_len: int  # as sent: over the bound, the result was dropped
    result_dropped: bool = False
    logs_cut: bool = False  # older output was dropped, keeping the tail


SKIP_CHUNK = 1 << 20


def log_tail(logs: bytes, limit: int) -> bytes:
    """The last `limit` bytes, not starting inside a UTF-8 sequence."""
    if len(logs) <= limit:
        return logs
    tail = logs[len(logs) - limit :] if limit else b""
    start = 0
    while start < min(3, len(tail)) and (tail[start] & 0xC0) == 0x80:
        start += 1
    return tail[start:]


class AgentConnection:
    """One agent's connection: strictly one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.hello: dict[str, Any] = {}

    async def read(self) -> tuple[dict[str, Any], bytes]:
        try:
            header_len, body_len = await self._prefix()
            # Header and body in one read: the agent sends a frame in one write.
            rest = await self._reader.readexactly(header_len + body_len)
            return self._header(rest[:header_len]), rest[header_len:]
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentGone(str(exc) or "connection closed") from None

    async def request(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        await self._send(header, body)
        return await self.read()

    async def call(
        self, header: dict[str, Any], body: bytes, *, result_limit: int, log_limit: int
    ) -> Answer:
        """Send a request, read its answer within the bounds: a result over
        `result_limit` is read and dropped (never held), logs keep their last
        `log_limit` bytes. The connection stays in step either way."""
        await self._send(header, body)
        try:
            header_len, body_len = await self._prefix()
            if body_len <= min(result_limit, log_limit):
                # Within both bounds whatever its split (the usual answer): one read.
                rest = await self._reader.readexactly(header_len + body_len)
                answer = self._header(rest[:header_len])
                result_len = self._result_len(answer, body_len)
                body = rest[header_len:]
                return Answer(answer, body[:result_len], body[result_len:], result_len)
            answer = self._header(await self._reader.readexactly(header_len))
            result_len = self._result_len(answer, body_len)
            dropped = result_len > result_limit
            if dropped:
                await self._skip(result_len)
                result = b""
            else:
                result = await self._reader.readexactly(result_len)
            logs_len = body_len - result_len
            cut = logs_len > log_limit
            if cut:
                await self._skip(logs_len - log_limit)
                logs = log_tail(await self._reader.readexactly(log_limit), log_limit)
            else:
                logs = await self._reader.readexactly(logs_len)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentGone(str(exc) or "connection closed") from None
        return Answer(answer, result, logs, result_len, dropped, cut)

    async def _send(self, header: dict[str, Any], body: bytes) -> None:
        try:
            self._writer.write(frames.pack(header, body))
            await self._writer.drain()
        except ConnectionError as exc:
            raise AgentGone(str(exc)) from None

    async def _prefix(self) -> tuple[int, int]:
        prefix = await self._reader.readexactly(protocol.PREFIX.size)
        try:
            return protocol.unpack_prefix(prefix)
        except protocol.ProtocolError as exc:
            raise AgentBroke(str(exc)) from None

    @staticmethod
    def _result_len(answer: dict[str, Any], body_len: int) -> int:
        try:
            return min(max(0, int(answer.get("result_len") or 0)), body_len)
        except (TypeError, ValueError):
            raise AgentBroke(f"bad result_len {answer.get('result_len')!r}") from None

    @staticmethod
    def _header(raw: bytes) -> dict[str, Any]:
        try:
            return frames.decode_header(raw)
        except protocol.ProtocolError as exc:
            raise AgentBroke(str(exc)) from None

    async def _skip(self, count: int) -> None:
        while count > 0:
            chunk = await self._reader.read(min(count, SKIP_CHUNK))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", count)
            count -= len(chunk)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    async def wait_closed(self) -> None:
        """Returns once the connection is closed, by either side: an idle agent's
        container that exits is noticed without a request in flight."""
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


def _close_connection(done: asyncio.Future[AgentConnection]) -> None:
    if not done.cancelled() and done.exception() is None:
        done.result().close()


class CellSocket:
    """Listens on `run_dir/host.sock` for the one agent that belongs to the cell.

    The directory is mounted read-only into the container, so the agent can
    connect but cannot create files; after the first connection the listener
    closes and the socket file is removed, so nothing else can connect.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / protocol.SOCKET_NAME
        self._connected: asyncio.Future[AgentConnection] | None = None
        self._server: asyncio.AbstractServer | None = None

    async def listen(self) -> None:
        self._connected = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path))
        os.chmod(self.path, 0o666)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._connected is not None
        if self._connected.done():
            writer.close()
            return
        connection = AgentConnection(reader, writer)
        try:
            header, _ = await connection.read()
        except (AgentGone, AgentBroke) as exc:
            connection.close()
            if not self._connected.done():
                self._connected.set_exception(AgentGone(f"no hello from the agent: {exc}"))
            return
        if header.get("op") != "hello":
            writer.close()
            return
        connection.hello = header
        if self._connected.done():
            connection.close()  # aborted (or the start given up) meanwhile
            return
        self._connected.set_result(connection)
        self.close()

    async def accept(self, timeout: float) -> AgentConnection:
        assert self._connected is not None, "listen() first"
        try:
            connection = await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except BaseException:
            # Timed out or cancelled (the pool closing): a connection that arrives
            # now, or arrived in the same moment, is closed, never left to the GC.
            self._connected.add_done_callback(_close_connection)
            raise
        finally:
            self.close()
        return connection

    def abort(self, reason: str) -> None:
        """The container is gone before its agent connected: fail `accept` now."""
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(AgentGone(reason))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
