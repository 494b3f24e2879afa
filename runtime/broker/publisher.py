"""Publishing invocations to tenant queues with publisher confirms."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from pamqp.commands import Basic

from runtime import constants as c
from runtime.broker import topology
from runtime.errors import Unavailable

CONFIRM_TIMEOUT_S = 10.0
# What a publish or a declaration raises when the broker is down, restarting or refuses;
# a channel whose connection is being restored raises a RuntimeError subclass.
BROKER_ERRORS = (DeliveryError, AMQPError, TimeoutError, ConnectionError, RuntimeError)


class Unroutable(Exception):
    """No queue is bound to the routing key (the broker returned the message)."""


class InvokePublisher:
    """One confirm channel; many publishes in flight on it at once."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._declared: set[str] = set()
        self._declaring: dict[str, asyncio.Future[Any]] = {}
        # Called with the tenant and the function after each confirmed publish to a
        # tenant's queue (the work hints, runtime/broker/hints.py; a gateway's view of
        # bursts, runtime/flow/burst.py).
        self.on_published: Callable[[str, str], None] | None = None

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
        self, tenant: str, headers: dict[str, Any], body: bytes, content_type: str | None,
        function: str | None = None,
    ) -> None:
        """Durable once this returns: the broker confirmed the persistent message.

        With `function`, to that function's dedicated queue; if it has none (not yet
        declared, or demoted and unbound), to the tenant's queue, whose consumer
        forwards it wherever the function is routed then."""
        if function is not None:
            try:
                await self._publish(c.function_route(tenant, function), headers, body, content_type)
                return
            except Unroutable:
                pass
        await self.ensure_tenant_queue(tenant)
        try:
            await self._publish(tenant, headers, body, content_type)
        except Unroutable:
            raise Unavailable("the message broker refused the task (unroutable)") from None
        if self.on_published is not None:
            self.on_published(tenant, str(headers.get(c.H_FUNCTION, "")))

    async def publish_to_function(
        self, tenant: str, function: str, headers: dict[str, Any], body: bytes,
        content_type: str | None,
    ) -> None:
        """To the function's dedicated queue, declaring (and binding) it if need be."""
        try:
            await self._publish(c.function_route(tenant, function), headers, body, content_type)
        except Unroutable:
            assert self._channel is not None
            try:
                await asyncio.wait_for(
                    topology.function_queue(self._channel, tenant, function), CONFIRM_TIMEOUT_S
                )
            except BROKER_ERRORS as exc:
                raise Unavailable(f"the message broker is unreachable: {exc!s:.200}") from None
            await self._publish(c.function_route(tenant, function), headers, body, content_type)

    async def _publish(
        self, routing_key: str, headers: dict[str, Any], body: bytes, content_type: str | None
    ) -> None:
        assert self._exchange is not None, "InvokePublisher.start() first"
        try:
            confirmation = await self._exchange.publish(
                aio_pika.Message(
                    body,
                    headers=headers,
                    content_type=content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
                mandatory=True,
                timeout=CONFIRM_TIMEOUT_S,
            )
        except DeliveryError as exc:
            if exc.frame is not None and isinstance(exc.frame, Basic.Return):
                raise Unroutable(routing_key) from None
            raise Unavailable(f"the message broker did not confirm the task: {exc!s:.200}") from None
        except BROKER_ERRORS as exc:
            raise Unavailable(f"the message broker did not confirm the task: {exc!s:.200}") from None
        if not isinstance(confirmation, Basic.Ack):
            raise Unavailable(f"the message broker refused the task ({type(confirmation).__name__})")
