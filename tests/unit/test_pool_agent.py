"""The host reads an agent's answers within its own bounds, whatever the agent sends."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from runtime import frames
from runtime.agent.protocol import MAX_BODY_BYTES
from runtime.pool.agent import AgentBroke, AgentConnection, AgentGone, log_tail


class Writer:
    """What AgentConnection writes requests to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


def connection(*answers: bytes, eof: bool = False) -> AgentConnection:
    reader = asyncio.StreamReader(limit=1 << 30)
    for answer in answers:
        reader.feed_data(answer)
    if eof:
        reader.feed_eof()
    return AgentConnection(reader, Writer())  # type: ignore[arg-type]


def answer(result: bytes, logs: bytes, **header: Any) -> bytes:
    return frames.pack({"ok": True, "result_len": len(result), **header}, result + logs)


async def call(conn: AgentConnection, result_limit: int = 100, log_limit: int = 50) -> Any:
    return await conn.call({"op": "invoke"}, b"", result_limit=result_limit, log_limit=log_limit)


async def test_an_answer_within_the_bounds_is_read_whole() -> None:
    got = await call(connection(answer(b"result", b"logs")))
    assert (got.result, got.logs, got.result_dropped, got.logs_cut) == (b"result", b"logs", False, False)


async def test_logs_past_the_bound_keep_their_tail_and_the_connection_stays_in_step() -> None:
    logs = b"a" * 1000 + b"the tail"
    conn = connection(answer(b"r", logs), answer(b"next", b""))
    got = await call(conn, log_limit=50)
    assert got.result == b"r"
    assert got.logs == logs[-50:] and got.logs_cut
    assert (await call(conn)).result == b"next"


async def test_a_result_past_the_bound_is_dropped_and_the_connection_stays_in_step() -> None:
    conn = connection(answer(b"x" * 5000, b"logs"), answer(b"next", b""))
    got = await call(conn, result_limit=100)
    assert got.result_dropped and got.result == b"" and got.result_len == 5000
    assert got.logs == b"logs"
    assert (await call(conn)).result == b"next"


async def test_a_result_len_that_lies_is_bounded_by_the_body() -> None:
    body = b"abc"
    frame = frames.pack({"ok": True, "result_len": 10**12}, body)
    got = await call(connection(frame))
    assert got.result == body and got.logs == b""


async def test_a_bad_result_len_breaks_the_protocol() -> None:
    with pytest.raises(AgentBroke):
        await call(connection(frames.pack({"ok": True, "result_len": "many"}, b"x" * 200)))


async def test_a_frame_past_the_wire_bound_breaks_the_protocol() -> None:
    prefix = struct.pack("!II", 2, MAX_BODY_BYTES + 1)
    with pytest.raises(AgentBroke):
        await call(connection(prefix + b"{}"))
    with pytest.raises(AgentBroke):
        await connection(prefix + b"{}").request({"op": "invoke"})


async def test_an_answer_cut_short_is_a_gone_agent() -> None:
    frame = answer(b"x" * 500, b"")
    with pytest.raises(AgentGone):
        await call(connection(frame[:-10], eof=True))


def test_log_tail_does_not_start_inside_a_utf8_sequence() -> None:
    text = ("é" * 10).encode()  # two bytes each
    assert log_tail(text, 5).decode() == "éé"
    assert log_tail(b"short", 50) == b"short"
