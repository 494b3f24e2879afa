"""Bundle uploads: spooled under the size limit (never held whole), and a bounded
number at once per gateway."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from starlette.requests import Request
from starlette.types import Message

from gateway.body import SPOOL_MEMORY_BYTES, limited_request, spool_limited
from gateway.uploads import UploadSlots
from runtime.errors import BadRequest, PayloadTooLarge, Unavailable

CHUNK = 64 * 1024


def request(chunks: int, **headers: str) -> tuple[Request, list[int]]:
    """A request whose body is `chunks` chunks of 64 KB; the list counts those read."""
    read = [0]

    async def receive() -> Message:
        read[0] += 1
        more = read[0] < chunks
        return {"type": "http.request", "body": bytes([read[0] % 256]) * CHUNK, "more_body": more}

    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "PUT", "path": "/", "headers": raw}, receive), read


async def test_a_body_is_spooled_whole_and_moves_to_disk_past_the_threshold() -> None:
    req, _ = request(40)  # 2.5 MB
    with await spool_limited(req, 10 << 20, "bundle") as spool:
        assert spool._rolled  # on disk: more than SPOOL_MEMORY_BYTES
        spool.seek(0)
        data = spool.read()
    assert len(data) == 40 * CHUNK
    assert data[:CHUNK] == b"\x01" * CHUNK and data[-CHUNK:] == bytes([40]) * CHUNK


async def test_a_small_body_stays_in_memory() -> None:
    req, _ = request(2)
    with await spool_limited(req, 10 << 20) as spool:
        assert not spool._rolled and spool.tell() == 2 * CHUNK < SPOOL_MEMORY_BYTES


async def test_a_body_over_the_limit_is_refused_as_soon_as_it_passes_it() -> None:
    req, read = request(1000)  # 62.5 MB, not declared
    with pytest.raises(PayloadTooLarge):
        await spool_limited(req, 1 << 20, "bundle")
    assert read[0] == 17  # the chunk that passed 1 MB, and no more


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    req, read = request(1000, content_length=str(2 << 20))
    with pytest.raises(PayloadTooLarge):
        await spool_limited(req, 1 << 20)
    assert read[0] == 0
    with pytest.raises(BadRequest):
        await spool_limited(request(1, content_length="x1")[0], 1 << 20)


async def test_a_limited_request_refuses_its_stream_past_the_limit() -> None:
    req, read = request(1000)
    limited = limited_request(req, 1 << 20, "upload")
    with pytest.raises(PayloadTooLarge):
        async for _ in limited.stream():
            pass
    assert read[0] == 17


async def test_uploads_past_the_bound_wait_for_a_slot() -> None:
    slots = UploadSlots(2, wait_s=5)
    order: list[str] = []

    async def upload(name: str, hold_s: float) -> None:
        async with slots.hold(name):
            order.append(f"{name}+")
            await asyncio.sleep(hold_s)
            order.append(f"{name}-")

    await asyncio.gather(upload("a", 0.2), upload("b", 0.2), upload("c", 0))
    assert order.index("c+") > min(order.index("a-"), order.index("b-"))


async def test_an_upload_that_waits_too_long_is_refused_with_retry_after() -> None:
    slots = UploadSlots(1, wait_s=0.05)
    async with slots.hold("a"):
        with pytest.raises(Unavailable) as refused:
            async with slots.hold("b"):
                pass
    assert refused.value.retry_after_s >= 1
    # A failure inside frees the slot too.
    with contextlib.suppress(RuntimeError):
        async with slots.hold("a"):
            raise RuntimeError("boom")
    async with slots.hold("b"):
        pass
    assert slots._tenants == {}


async def test_one_tenant_holds_at_most_half_the_slots() -> None:
    slots = UploadSlots(4, wait_s=0.1)
    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(slots.hold("greedy"))
        await held.enter_async_context(slots.hold("greedy"))
        with pytest.raises(Unavailable):
            async with slots.hold("greedy"):
                pass
        # Another tenant still gets one of the slots left.
        async with slots.hold("other"):
            pass
    assert slots._tenants == {}
