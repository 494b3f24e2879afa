"""A webhook receiver that accepts connections and reads each POST but answers none,
until told to: the destination that holds a scheduler's delivery as long as it lets it.

An asyncio server in a thread of its own, so that synchronous tests (and benchmarks)
can use it as a context manager, like tests/harness.Webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any


class HangingWebhook:
    """Every POST is read and kept (`posts`), and waits for `answer()`: from then on every
    POST, the waiting ones included, is answered 200. `url` is where to point a
    `webhook` destination (any path and query of it reaches this receiver). `held` is
    how many POSTs wait for their answer now (their senders still wait too),
    `most_held` the most at once so far."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.held = 0
        self.most_held = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hanging-webhook", daemon=True)
        self.url = ""

    def __enter__(self) -> HangingWebhook:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def answer(self) -> None:
        """Answer from now on (and the POSTs waiting now)."""
        self._loop.call_soon_threadsafe(self._open.set)

    def task_ids(self, answered: bool | None = None, since: float = 0.0) -> list[str]:
        """The `X-Fnhost-Task-Id` of each POST so far (only those answered, or not, when
        given; only those that arrived after `since`, a `time.time()`)."""
        with self._lock:
            return [p["task_id"] for p in self.posts
                    if (answered is None or p["answered"] == answered) and p["at"] > since]

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # Waiting handlers are not ended by close(): their connections closed, they end.
        for writer in list(self._writers):
            writer.close()
        if self._handlers:  # ended before the loop stops (a pending one is reported as destroyed)
            await asyncio.wait(set(self._handlers), timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                post = {"task_id": headers.get("x-fnhost-task-id", ""), "at": time.time(),
                        "answered": False, "request": line.decode("latin-1").strip()}
                with self._lock:
                    self.posts.append(post)
                    self.held += 1
                    self.most_held = max(self.most_held, self.held)
                try:
                    if not await self._until_open(reader):
                        return  # the sender gave up waiting and closed the connection
                finally:
                    with self._lock:
                        self.held -= 1
                with self._lock:
                    post["answered"] = True
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the sender gave up waiting and closed the connection
        finally:
            self._writers.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()

    async def _until_open(self, reader: asyncio.StreamReader) -> bool:
        """Wait for `answer()`; False when the sender closes the connection first (it
        sends nothing more before its answer: no pipelining)."""
        opened = asyncio.ensure_future(self._open.wait())
        closed = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({opened, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            closed.cancel()
            await asyncio.gather(opened, closed, return_exceptions=True)  # the reader is free again
        return opened.done() and not opened.cancelled()
