"""The control bus: a fanout exchange every gateway and scheduler listens on.

It carries cache invalidations (a function changed or was deleted) and
scheduler heartbeats. Messages are small JSON objects with a `kind`.

Events broadcast while a process was cut from the broker never reach it; so when
its connection is restored, its handlers get a local `resync` event and reload
what such events would have told them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.publisher import BROKER_ERRORS
from runtime.errors import Unavailable
from runtime.later import RetryLater

log = logging.getLogger(__name__)
# A control event is small and unconfirmed: longer than this means the broker is gone.
PUBLISH_TIMEOUT_S = 5.0
# Events of `publish_or_later` waiting for the broker: at most this many, tried this often.
MAX_LATER = 10_000
LATER_RETRY_S = 1.0
Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class ControlBus:
    """Every event carries the cluster id; events of other clusters sharing the
    broker (another deployment, a test run) are dropped on arrival."""

    def __init__(self, connection: AbstractRobustConnection, cluster: str) -> None:
        self._connection = connection
        self._cluster = cluster
        self._handlers: list[Handler] = []
        self._exchange: AbstractExchange | None = None
        self._later: RetryLater[tuple[str, dict[str, Any]]] = RetryLater(
            "control events", self._publish_item, (Unavailable,), LATER_RETRY_S, MAX_LATER
        )

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await topology.control_exchange(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange)
        await queue.consume(self._on_message, no_ack=True)
        self._connection.reconnect_callbacks.add(self._on_reconnect)

    async def _on_reconnect(self, _connection: object) -> None:
        log.info("control bus back: resynchronising")
        await self._dispatch({"kind": c.CTL_RESYNC})

    async def publish(self, kind: str, **fields: Any) -> None:
        """Broadcast an event; Unavailable when the broker cannot take it (down, restarting)."""
        assert self._exchange is not None, "ControlBus.start() first"
        body = orjson.dumps({"kind": kind, **fields, "cluster": self._cluster})
        try:
            await asyncio.wait_for(
                self._exchange.publish(aio_pika.Message(body), routing_key=""), PUBLISH_TIMEOUT_S
            )
        except BROKER_ERRORS as exc:
            raise Unavailable(f"the message broker is unreachable: {exc!s:.200}") from None

    async def publish_or_later(self, kind: str, **fields: Any) -> None:
        """Broadcast an event that reports a change already stored (a function saved,
        a task stopped): if the broker cannot take it now, it is sent again every
        second in the background until it can (the caller's change stands either way;
        processes that were cut off too resynchronise when they are back)."""
        try:
            await self.publish(kind, **fields)
        except Unavailable as exc:
            if self._later.add((kind, fields)):
                log.warning("control event %s not sent (%s): sending it when the broker is back", kind, exc)
            else:
                log.error("control event %s dropped (%d wait already): %s", kind, len(self._later), exc)

    async def _publish_item(self, item: tuple[str, dict[str, Any]]) -> None:
        kind, fields = item
        await self.publish(kind, **fields)

    async def close(self) -> None:
        await self._later.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            log.warning("dropping a control message that is not JSON")
            return
        if not isinstance(event, dict) or event.get("cluster") != self._cluster:
            return
        if event.get("kind") == c.CTL_RESYNC:
            return  # local only: not taken from the wire
        await self._dispatch(event)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                result = handler(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("control handler failed on %s", event.get("kind"))
