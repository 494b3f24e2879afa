"""The control bus: a fanout exchange every gateway and scheduler listens on.

It carries cache invalidations (a function changed or was deleted), API keys
issued and revoked, and scheduler heartbeats. Messages are small JSON objects
with a `kind`.

Anyone allowed on the broker could publish on the exchange, so every event is
signed: an HMAC-SHA256, keyed by a key derived from the cluster secret, over
the time it was sent and its body, both in the message's headers. Receivers drop
an event whose MAC does not match, or whose time is further than
`max_age_s` from their clock (a replay): a forged heartbeat names no scheduler,
a forged key event changes no key.

Events broadcast while a process was cut from the broker never reach it; so when
its connection is restored, its handlers get a local `resync` event and reload
what such events would have told them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
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
# What the key that signs control events is derived for (Settings.cluster_key).
CONTROL_KEY = "control events"
# Message headers of a signed event: its MAC and when it was sent (ms since the epoch).
H_MAC, H_SENT_MS = "mac", "sent_ms"
# A flood of forged events is logged at most once per this long.
DROP_LOG_S = 60.0


def event_mac(key: bytes, sent_ms: int, body: bytes) -> str:
    """The MAC of one control event: over its send time and its body, as sent."""
    return hmac.new(key, b"%d\n" % sent_ms + body, hashlib.sha256).hexdigest()


class ControlBus:
    """Every event carries the cluster id; events of other clusters sharing the
    broker (another deployment, a test run) are dropped on arrival, and so are
    events of this cluster that are not signed with `key` or are stale."""

    def __init__(self, connection: AbstractRobustConnection, cluster: str, key: bytes,
                 max_age_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self._connection = connection
        self._cluster = cluster
        self._key = key
        self._max_age_ms = max_age_s * 1000
        self._clock = clock
        self.dropped = 0  # events of this cluster refused: unsigned, forged or stale
        self._dropped_logged = float("-inf")
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
        sent_ms = int(self._clock() * 1000)
        headers: dict[str, Any] = {H_MAC: event_mac(self._key, sent_ms, body), H_SENT_MS: sent_ms}
        try:
            await asyncio.wait_for(
                self._exchange.publish(aio_pika.Message(body, headers=headers), routing_key=""),
                PUBLISH_TIMEOUT_S,
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
        problem = self.check(message.body, message.headers or {})
        if problem is not None:
            self._drop(str(event.get("kind")), problem)
            return
        if event.get("kind") == c.CTL_RESYNC:
            return  # local only: not taken from the wire
        await self._dispatch(event)

    def check(self, body: bytes, headers: dict[str, Any]) -> str | None:
        """Why an event of this cluster is refused (None: signed with the cluster's key, and fresh)."""
        mac, sent_ms = headers.get(H_MAC), headers.get(H_SENT_MS)
        if not isinstance(mac, str | bytes) or not isinstance(sent_ms, int) or isinstance(sent_ms, bool):
            return "unsigned"
        expected = event_mac(self._key, sent_ms, body)
        given = mac.encode() if isinstance(mac, str) else bytes(mac)
        if not hmac.compare_digest(given, expected.encode()):
            return "bad signature"
        if abs(self._clock() * 1000 - sent_ms) > self._max_age_ms:
            return "stale"
        return None

    def _drop(self, kind: str, problem: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged >= DROP_LOG_S:
            self._dropped_logged = now
            log.warning("dropped a control event %r of this cluster (%s): %d so far",
                        kind[:40], problem, self.dropped)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                result = handler(event)
                if result is not None:
                    await result
            except Exception:
                log.exception("control handler failed on %s", event.get("kind"))
