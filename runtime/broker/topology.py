"""Declares fnhost's exchanges and queues; the only place that does."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from runtime import constants as c


async def connect(url: str) -> AbstractRobustConnection:
    """A robust connection: aio-pika restores channels, queues and consumers after a drop."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": "fnhost"})


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
