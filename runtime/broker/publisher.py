"""Publishing invocations to tenant queues with publisher confirms."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from pamqp.commands import Basic

from runtime.broker import topology
from runtime.errors import Unavailable

CONFIRM_TIMEOUT_S = 10.0
# What a publish or a declaration raises when the broker is down, restarting or refuses;
# a channel whose connection is being restored raises a RuntimeError subclass.
BROKER_ERRORS = (DeliveryError, AMQPError, TimeoutError, ConnectionError, RuntimeError)


class InvokePublisher:
    """One confirm channel; many publishes in flight on it at once."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._declaring: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await topology.invoke_exchange(self._channel)

    async def ensure_tenant_queue(self, tenant: str) -> None:
        """Declare the tenant's queue once; Unavailable when the broker cannot be reached."""
        if tenant in self._declared:
            return
        task = self._declaring.get(tenant)
        if task is None:
            assert self._channel is not None
            task = asyncio.ensure_future(
                asyncio.wait_for(topology.tenant_queue(self._channel, tenant), CONFIRM_TIMEOUT_S)
            )
            self._declaring[tenant] = task
        try:
            await task
            self._declared.add(tenant)
        except BROKER_ERRORS as exc:
            raise Unavailable(f"the message broker is unreachable: {exc!s:.200}") from None
        finally:
            self._declaring.pop(tenant, None)

    async def publish(
        self, tenant: str, headers: dict[str, Any], body: bytes, content_type: str | None
    ) -> None:
        """Durable once this returns: the broker confirmed the persistent message."""
        assert self._exchange is not None, "InvokePublisher.start() first"
        await self.ensure_tenant_queue(tenant)
        try:
            confirmation = await self._exchange.publish(
                aio_pika.Message(
                    body,
                    headers=headers,
                    content_type=content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=tenant,
                mandatory=True,
                timeout=CONFIRM_TIMEOUT_S,
            )
        except BROKER_ERRORS as exc:
            raise Unavailable(f"the message broker did not confirm the task: {exc!s:.200}") from None
        if not isinstance(confirmation, Basic.Ack):
            raise Unavailable(f"the message broker refused the task ({type(confirmation).__name__})")
