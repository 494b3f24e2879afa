"""A cheap webhook receiver for the benchmarks: counts the records POSTed to it.

It runs as a process of its own, so its CPU time is measured apart from the
client's, and it must cost little itself (it shares the machine with what is
measured): one asyncio protocol, no HTTP library, uvloop when installed.

    .venv/bin/python bench/webhook_receiver.py [--host 127.0.0.1] [--port 0]

It prints `PORT <n>` on stdout once listening, then serves HTTP/1.1 keep-alive:

- any `POST`: a record; answered `200` with an empty body. Its arrival time
  (`time.monotonic()`, the same clock in every process of the machine) is kept
  under its `X-Fnhost-Task-Id` header, with its `X-Fnhost-Condition`.
- `GET /count`: the number of records since the last reset, as text.
- `GET /arrivals`: `{"arrivals": {task_id: monotonic seconds}, "conditions": {...},
  "records": n}` of every record since the last reset (a repeat of a task id
  keeps its first arrival).
- `GET /reset`: forget every record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, cast

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
TASK_ID = b"\r\nx-fnhost-task-id:"
CONDITION = b"\r\nx-fnhost-condition:"
CONTENT_LENGTH = b"\r\ncontent-length:"
MAX_HEAD = 64 * 1024


class Records:
    def __init__(self) -> None:
        self.count = 0
        self.arrivals: dict[str, float] = {}
        self.conditions: dict[str, int] = {}

    def reset(self) -> None:
        self.count = 0
        self.arrivals = {}
        self.conditions = {}


def _header(head: bytes, lowered: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, with its CRLF and colon) in `head`."""
    at = lowered.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


class Receiver(asyncio.Protocol):
    def __init__(self, records: Records) -> None:
        self.records = records
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._close()
                return
            head = bytes(buffer[:end])
            lowered = head.lower()
            length = _header(head, lowered, CONTENT_LENGTH)
            total = end + 4 + (int(length) if length else 0)
            if len(buffer) < total:
                return
            del buffer[:total]
            self._request(head, lowered)

    def _request(self, head: bytes, lowered: bytes) -> None:
        assert self.transport is not None
        line_end = head.find(b"\r\n")
        method, _, rest = head[:line_end if line_end >= 0 else len(head)].partition(b" ")
        path = rest.split(b" ", 1)[0]
        records = self.records
        if method == b"POST":
            records.count += 1
            task_id = _header(head, lowered, TASK_ID)
            if task_id is not None:
                records.arrivals.setdefault(task_id.decode("latin-1"), time.monotonic())
            condition = (_header(head, lowered, CONDITION) or b"").decode("latin-1")
            records.conditions[condition] = records.conditions.get(condition, 0) + 1
            self.transport.write(OK)
            return
        if path == b"/count":
            self._answer(str(records.count).encode())
        elif path == b"/arrivals":
            self._answer(json.dumps({"arrivals": records.arrivals, "conditions": records.conditions,
                                     "records": records.count}).encode())
        elif path == b"/reset":
            records.reset()
            self._answer(b"ok")
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int) -> None:
    records = Records()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(records), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run: Any
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of fnhost
        run = asyncio.run
    try:
        run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
