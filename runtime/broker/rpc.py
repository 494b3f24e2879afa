"""Sync invocations: RabbitMQ RPC with direct reply-to, gateway side.

The gateway publishes to the `fnhost.sync` direct exchange with the owning
scheduler's id as routing key, `mandatory` set, and `reply_to` the pseudo
queue `amq.rabbitmq.reply-to`; the reply comes straight back on this channel.
A message nobody can route (the scheduler just left) is returned by the
broker and fails its caller at once instead of timing out.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from runtime import constants as c
from runtime.broker import topology
from runtime.errors import Unavailable


class SyncClient:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._pending: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-"
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await topology.sync_exchange(self._channel)
        replies = await self._channel.declare_queue(c.REPLY_TO, passive=True)
        await replies.consume(self._on_reply, no_ack=True)
        self._channel.return_callbacks.add(self._on_return)
        self._channel.close_callbacks.add(self._on_close)

    async def call(
        self,
        scheduler_id: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        content_type: str | None,
        timeout: float,
    ) -> AbstractIncomingMessage:
        """Send one invocation to a scheduler and wait for its reply."""
        assert self._exchange is not None, "SyncClient.start() first"
        correlation_id = self._prefix + str(next(self._ids))
        future: asyncio.Future[AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[correlation_id] = future
        try:
            await self._exchange.publish(
                aio_pika.Message(
                    body,
                    headers=headers,
                    content_type=content_type,
                    correlation_id=correlation_id,
                    reply_to=c.REPLY_TO,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                    expiration=timeout,
                ),
                routing_key=scheduler_id,
                mandatory=True,
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Unavailable(
                f"no answer from scheduler {scheduler_id} within {timeout:.0f} s"
            ) from None
        finally:
            self._pending.pop(correlation_id, None)

    def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message)

    def _on_return(self, _channel: Any, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_exception(Unavailable("the scheduler for this tenant is not reachable"))

    def _on_close(self, *_args: Any) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable("lost the connection to RabbitMQ"))
