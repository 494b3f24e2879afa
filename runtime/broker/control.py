"""The control bus: a fanout exchange every gateway and scheduler listens on.

It carries cache invalidations (a function changed or was deleted) and
scheduler heartbeats. Messages are small JSON objects with a `kind`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from runtime.broker import topology

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class ControlBus:
    """Every event carries the cluster id; events of other clusters sharing the
    broker (another deployment, a test run) are dropped on arrival."""

    def __init__(self, connection: AbstractRobustConnection, cluster: str) -> None:
        self._connection = connection
        self._cluster = cluster
        self._handlers: list[Handler] = []
        self._exchange: AbstractExchange | None = None

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await topology.control_exchange(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange)
        await queue.consume(self._on_message, no_ack=True)

    async def publish(self, kind: str, **fields: Any) -> None:
        assert self._exchange is not None, "ControlBus.start() first"
        body = orjson.dumps({"kind": kind, **fields, "cluster": self._cluster})
        await self._exchange.publish(aio_pika.Message(body), routing_key="")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            log.warning("dropping a control message that is not JSON")
            return
        if not isinstance(event, dict) or event.get("cluster") != self._cluster:
            return
        for handler in self._handlers:
            try:
                result = handler(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("control handler failed on %s", event.get("kind"))
