"""The host side of the agent protocol: a cell's socket and its one connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from runtime import frames
from runtime.agent import protocol


class AgentGone(Exception):
    """The agent's connection closed: the container exited or was killed."""


class AgentConnection:
    """One agent's connection: strictly one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.hello: dict[str, Any] = {}

    async def read(self) -> tuple[dict[str, Any], bytes]:
        try:
            # Header and body in one read: the agent sends a frame in one write.
            header_len, body_len = protocol.unpack_prefix(
                await self._reader.readexactly(protocol.PREFIX.size)
            )
            rest = await self._reader.readexactly(header_len + body_len)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentGone(str(exc) or "connection closed") from None
        return frames.decode_header(rest[:header_len]), rest[header_len:]

    async def request(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        try:
            self._writer.write(frames.pack(header, body))
            await self._writer.drain()
        except ConnectionError as exc:
            raise AgentGone(str(exc)) from None
        return await self.read()

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
        except AgentGone as exc:
            if not self._connected.done():
                self._connected.set_exception(exc)
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
