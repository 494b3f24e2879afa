"""Declares fnhost's exchanges and queues; the only place that does."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from runtime import constants as c

# How often a dropped connection is tried again: the broker back from a restart is
# used within this (aio-pika's default is 5 s).
RECONNECT_INTERVAL_S = 1.0


async def connect(url: str) -> AbstractRobustConnection:
    """A robust connection: aio-pika restores channels, queues and consumers after a drop."""
    return await aio_pika.connect_robust(
        url, client_properties={"connection_name": "fnhost"}, reconnect_interval=RECONNECT_INTERVAL_S
    )


async def control_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        c.CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def sync_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        c.SYNC_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )


async def sync_queue(channel: AbstractChannel, scheduler_id: str) -> aio_pika.abc.AbstractQueue:
    """A scheduler's own sync queue: it dies with the scheduler, so nothing waits in it."""
    exchange = await sync_exchange(channel)
    queue = await channel.declare_queue(
        c.sync_queue(scheduler_id), exclusive=True, auto_delete=True
    )
    await queue.bind(exchange, routing_key=scheduler_id)
    return queue


async def invoke_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        c.INVOKE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )


DEAD_LETTER_EXCHANGE = "fnhost.dead"
LEGACY_DEAD_LETTER_QUEUE = "fnhost.dead"  # one queue shared by every cluster (before 0.2)
# A message redelivered this often is poison (it crashed the consumer each
# time); it goes to the dead-letter queue, where the task is marked Failed.
DELIVERY_LIMIT = 20


def dead_letter_queue(cluster_id: str) -> str:
    return f"fnhost.dead.{cluster_id}"


async def dead_letter_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def dead_letters(channel: AbstractChannel, cluster_id: str) -> aio_pika.abc.AbstractQueue:
    """This cluster's dead-letter queue. The exchange is a fanout, so every cluster
    on the vhost gets a copy of every dead letter and handles those of its own
    tenants: no cluster can take another's."""
    exchange = await dead_letter_exchange(channel)
    queue = await channel.declare_queue(
        dead_letter_queue(cluster_id), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange)
    return queue


async def drop_legacy_dead_letters(connection: AbstractRobustConnection) -> None:
    """Delete the shared dead-letter queue of earlier versions once it is empty (else
    leave it to an operator: its messages may belong to any cluster). Quorum queues
    refuse `if-empty` deletes (with a connection error), so its depth is read first."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(LEGACY_DEAD_LETTER_QUEUE, passive=True)
        if not queue.declaration_result.message_count:
            await channel.queue_delete(LEGACY_DEAD_LETTER_QUEUE)
    except aio_pika.exceptions.ChannelClosed:
        pass  # there is none: the broker closed this channel, nothing else
    finally:
        if not channel.is_closed:
            await channel.close()


async def _invoke_queue(
    channel: AbstractChannel, name: str, routing_key: str
) -> aio_pika.abc.AbstractQueue:
    await dead_letter_exchange(channel)
    exchange = await invoke_exchange(channel)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        },
    )
    await queue.bind(exchange, routing_key=routing_key)
    return queue


async def tenant_queue(channel: AbstractChannel, tenant: str) -> aio_pika.abc.AbstractQueue:
    """The tenant's durable quorum queue, bound to the invoke exchange by tenant id."""
    return await _invoke_queue(channel, c.tenant_queue(tenant), tenant)


async def function_queue(
    channel: AbstractChannel, tenant: str, function: str
) -> aio_pika.abc.AbstractQueue:
    """A function's dedicated queue (same guarantees as the tenant's), bound by
    `f.<tenant>.<function>`; declaring it again binds it again."""
    return await _invoke_queue(
        channel, c.function_queue(tenant, function), c.function_route(tenant, function)
    )


async def unbind_function_queue(channel: AbstractChannel, tenant: str, function: str) -> None:
    """Stop routing to a function's queue: a publish to its route comes back unroutable
    (and goes to the tenant's queue instead), so the queue can only drain from now on."""
    exchange = await invoke_exchange(channel)
    queue = await channel.get_queue(c.function_queue(tenant, function), ensure=False)
    await queue.unbind(exchange, routing_key=c.function_route(tenant, function))


class DepthReader:
    """Reads queues' depths by passive declares on a channel of its own, reopened when
    the broker closed it (a passive declare of a missing queue does that).

    On the AMQP channel itself: a robust aio-pika channel answers a passive declare of
    a queue it knows from its own records, with the counts of its first declaration."""

    def __init__(self, connection: AbstractRobustConnection, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        self._channel: AbstractChannel | None = None

    async def read(self, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of the queue; None when it does not exist. A broker
        error (or no answer within the timeout) is raised, and the channel dropped."""
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await asyncio.wait_for(
                    self._connection.channel(publisher_confirms=False), self._timeout_s
                )
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), self._timeout_s)
            result = await asyncio.wait_for(
                underlay.queue_declare(name, passive=True), self._timeout_s
            )
        except ChannelNotFoundEntity:
            await self.close()
            return None
        except Exception:
            await self.close()
            raise
        return int(result.message_count or 0), int(getattr(result, "consumer_count", 0) or 0)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
