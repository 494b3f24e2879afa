"""The scheduler's end of the sync RPC: one consumer on its own sync queue."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from runtime import constants as c
from runtime.broker import topology
from runtime.cache import FunctionCache
from runtime.errors import FnhostError, NotFound
from runtime.scheduler.invoker import Invocation, Invoker, Outcome

log = logging.getLogger(__name__)


def reply_headers(outcome: Outcome, log_tail: bool) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "status": outcome.status,
        "start": outcome.start.value,
        "container": outcome.container,
        "init_ms": round(outcome.init_ms, 3),
        "run_ms": round(outcome.run_ms, 3),
    }
    if log_tail:
        headers["log_tail"] = base64.b64encode(outcome.logs[-c.LOG_TAIL_BYTES :]).decode()
    return headers


class SyncServer:
    def __init__(self, scheduler_id: str, cache: FunctionCache, invoker: Invoker, limit: int):
        self._scheduler_id = scheduler_id
        self._cache = cache
        self._invoker = invoker
        self._limit = asyncio.Semaphore(limit)
        self._channel: AbstractChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        self._channel = await connection.channel(publisher_confirms=False)
        queue = await topology.sync_queue(self._channel, self._scheduler_id)
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        async with self._limit:
            try:
                body, content_type, reply = await self._run(message, headers)
            except FnhostError as exc:
                body, content_type = exc.to_json_bytes(), "application/json"
                reply = {"status": "error", "error_status": exc.status}
                if hasattr(exc, "retry_after_s"):
                    reply["retry_after"] = exc.retry_after_s
            except Exception as exc:
                log.exception("sync invocation failed")
                err = FnhostError(f"scheduler error: {type(exc).__name__}")
                body, content_type = err.to_json_bytes(), "application/json"
                reply = {"status": "error", "error_status": 500}
        assert self._channel is not None
        if not message.reply_to:
            return
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    headers=reply,
                    content_type=content_type,
                    correlation_id=message.correlation_id,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=message.reply_to,
                mandatory=False,
            )
        except Exception:
            log.exception("could not send a sync reply (the caller may have gone)")

    async def _run(
        self, message: AbstractIncomingMessage, headers: dict[str, Any]
    ) -> tuple[bytes, str, dict[str, Any]]:
        tenant = str(headers[c.H_TENANT])
        name = str(headers[c.H_FUNCTION])
        revision = int(headers.get(c.H_REVISION, 0))  # type: ignore[arg-type]
        record = await self._cache.get(tenant, name, revision)
        if record is None:
            raise NotFound(f"function {name!r} not found")
        invocation = Invocation(
            request_id=str(headers.get(c.H_REQUEST_ID, "")),
            payload=message.body,
            content_type=message.content_type or "application/octet-stream",
        )
        outcome = await self._invoker.invoke(record, invocation)
        reply = reply_headers(outcome, bool(headers.get(c.H_LOG_TAIL)))
        reply["version"] = record.version
        return outcome.body, outcome.content_type, reply
