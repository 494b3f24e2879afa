"""Destinations: the record of a finished async task and its delivery to a webhook,
a queue in the tenant's namespace or another function of the same tenant.

A delivery is at least once: a retry after a lost answer can repeat it, so
the record carries the task id (and the webhook a header) to drop repeats by.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
import orjson
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError
from aiormq.exceptions import ChannelPreconditionFailed
from pamqp.common import FieldValue

from runtime import constants as c
from runtime.broker.topology import DepthReader
from runtime.errors import FnhostError, QuotaExceeded, Throttled, Unavailable
from runtime.models import FunctionDestination, QueueDestination, WebhookDestination
from runtime.settings import Settings
from runtime.tasks import status as st
from runtime.webhook_policy import shown_host
from runtime.webhooks import AiohttpWebhooks, WebhookClient, WebhookError, WebhookRefused

log = logging.getLogger(__name__)

RECORD_VERSION = "1.0"
CONDITIONS = (st.SUCCESS, st.RETRIES_EXHAUSTED, st.EVENT_AGE_EXCEEDED, st.STOPPED_CONDITION)
FUNCTION_ERRORS = (None, "Unhandled", "Timeout")
JSON = "application/json"
# Queue names declared by this process (durable, so declared once); bounded.
DECLARED_QUEUES_MAX = 4096

Submit = Callable[[str, str, bytes, str, int], Awaitable[str]]
"""Async invoke of a function: (tenant, function, body, content type, chain depth of the
new task: 1 + that of the task whose record it is) -> task id."""

Target = WebhookDestination | QueueDestination | FunctionDestination
DeliveryStatus = Literal["delivered", "failed", "refused", "pending"]


# -- the record (contract) ---------------------------------------------------


def build_record(
    *,
    request_id: str,
    task_id: str,
    function: str,
    version: str,
    condition: str,
    invoke_count: int,
    payload: bytes,
    content_type: str | None,
    status_code: int,
    function_error: str | None,
    result: bytes | None,
    result_content_type: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The record sent to a destination, exactly as DESIGN.md section 3 names its fields."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, not {condition!r}")
    if function_error not in FUNCTION_ERRORS:
        raise ValueError(f"functionError must be null, Unhandled or Timeout, not {function_error!r}")
    return {
        "version": RECORD_VERSION,
        "timestamp": timestamp(now or datetime.now(UTC)),
        "requestContext": {
            "requestId": request_id,
            "taskId": task_id,
            "function": f"{function}:{version}",
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": payload_value(payload, content_type),
        "responseContext": {"statusCode": status_code, "functionError": function_error},
        "responsePayload": payload_value(result, result_content_type),
    }


def timestamp(at: datetime) -> str:
    """UTC, milliseconds, `Z`: 2026-11-25T16:00:00.000Z. A naive time is taken as UTC."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_json_type(content_type: str | None) -> bool:
    """`application/json` or any `+json` media type, parameters ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json")


def payload_value(data: bytes | None, content_type: str | None) -> Any:
    """The JSON value when the bytes are declared and parse as JSON, else their base64;
    nothing (missing or empty) is null."""
    if not data:
        return None
    if is_json_type(content_type):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return base64.b64encode(data).decode("ascii")


# -- delivery ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one record, as the task record shows it."""

    type: str
    target: str
    # pending: handed to the outbox (runtime/outbox.py), which updates it when done;
    # refused: not tried, its address is not allowed (runtime/webhook_policy.py)
    status: DeliveryStatus
    attempts: int
    error: str | None
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["duration_ms"] = round(self.duration_ms, 3)
        return out


@dataclass(frozen=True, slots=True)
class Tried:
    """The outcome of one attempt: `error` None when delivered; `retry` whether another
    attempt may do better; `refused` when it was not made (the address is not allowed)."""

    error: str | None
    retry: bool = False
    refused: bool = False

    @property
    def status(self) -> DeliveryStatus:
        """The delivery's status once this attempt is its last."""
        return "delivered" if self.error is None else "refused" if self.refused else "failed"


class _Failure(Exception):
    """One attempt failed; `retry` says whether another attempt may do better."""

    def __init__(self, message: str, *, retry: bool, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.refused = refused


class Destinations:
    """Delivers records; one per process, sharing one HTTP pool and one confirm channel."""

    def __init__(
        self,
        settings: Settings,
        connection: AbstractRobustConnection,
        submit: Submit | None,
        webhooks: WebhookClient | None = None,
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._submit = submit
        self._webhooks: WebhookClient = webhooks or AiohttpWebhooks(settings)
        self._channel: AbstractRobustChannel | None = None
        self._declared: OrderedDict[str, None] = OrderedDict()
        # Queues declared without a length limit by earlier versions (the broker refuses
        # to declare them again with one): bounded by their depth, read before a publish.
        self._unbounded: OrderedDict[str, None] = OrderedDict()
        self._depths = DepthReader(connection, settings.destination_publish_timeout_s)

    @property
    def max_delivery_s(self) -> float:
        """The longest one delivery can take: every attempt times out, every backoff waited."""
        return self.max_attempts * self.attempt_timeout_s + self._backoff_total()

    @property
    def max_attempts(self) -> int:
        """Attempts in all for one record (FNHOST_WEBHOOK_RETRY_ATTEMPTS)."""
        return self._settings.webhook_retry_attempts

    @property
    def attempt_timeout_s(self) -> float:
        """The longest one attempt can take, whatever the destination's type."""
        s = self._settings
        return max(s.webhook_timeout_s, s.destination_publish_timeout_s)

    def backoff_s(self, attempt: int) -> float:
        """The wait before attempt `attempt` (2, 3, ...): FNHOST_WEBHOOK_BACKOFF_S, doubled
        after each attempt."""
        return self._settings.webhook_backoff_s * (1 << max(0, attempt - 2))

    def target(self, tenant_id: str, destination: Target) -> str:
        """What a record is delivered to: the URL, the queue's full name or the function."""
        if isinstance(destination, WebhookDestination):
            return destination.url
        if isinstance(destination, QueueDestination):
            return c.destination_queue(tenant_id, destination.name)
        return destination.name

    async def start(self) -> None:
        await self._webhooks.start()
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel

    async def close(self) -> None:
        await self._webhooks.close()
        await self._depths.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def deliver(
        self, tenant_id: str, destination: Target, record: dict[str, Any], chain_depth: int = 0
    ) -> Delivery:
        """Deliver one record, every attempt of the policy inline; never raises for a
        delivery that fails, it reports it. (A scheduler tries once inline and leaves
        the rest to its outbox: runtime/outbox.py.)"""
        started = time.monotonic()
        context = record["requestContext"]
        target, attempt = self._plan(
            tenant_id, destination, orjson.dumps(record), str(context["taskId"]),
            str(context["condition"]), chain_depth,
        )
        attempts, last = await self._attempt(attempt)
        error = last.error
        delivery = Delivery(
            type=destination.type,
            target=target,
            status=last.status,
            attempts=attempts,
            error=error,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        if error is not None:
            shown = shown_host(target) if destination.type == "webhook" else target
            log.warning(
                "destination %s %s of tenant %s failed after %d attempt(s): %s",
                destination.type, shown, tenant_id, attempts, error,
            )
        return delivery

    async def try_once(
        self, tenant_id: str, destination: Target, body: bytes, task_id: str, condition: str,
        deadline_s: float | None = None, chain_depth: int = 0,
    ) -> Tried:
        """One attempt of the record `body`, bounded by its own timeout and by `deadline_s`
        when given. A function destination is never cut short by `deadline_s`: its submit
        may have been accepted all the same, and submitting again could run it twice.
        `chain_depth`: that of the task whose record it is."""
        _, attempt = self._plan(tenant_id, destination, body, task_id, condition, chain_depth)
        if deadline_s is None or isinstance(destination, FunctionDestination):
            return await self._once(attempt)
        try:
            async with asyncio.timeout(deadline_s):
                return await self._once(attempt)
        except TimeoutError:
            return Tried(f"no answer within {deadline_s:g} s", retry=True)

    def _plan(
        self, tenant_id: str, destination: Target, body: bytes, task_id: str, condition: str,
        chain_depth: int,
    ) -> tuple[str, Callable[[], Awaitable[None]]]:
        """What to deliver to, and one attempt of it."""
        target = self.target(tenant_id, destination)
        if isinstance(destination, WebhookDestination):
            return target, lambda: self._post(target, body, task_id, condition)
        if isinstance(destination, QueueDestination):
            return target, lambda: self._publish(target, body, task_id, condition)
        return target, lambda: self._invoke(tenant_id, target, body, chain_depth + 1)

    async def _attempt(self, attempt: Callable[[], Awaitable[None]]) -> tuple[int, Tried]:
        """Run `attempt` until it succeeds, fails for good or the attempts run out
        (each attempt bounds itself); returns the attempts made and the last outcome."""
        tried = Tried("no attempt")
        for n in range(1, self.max_attempts + 1):
            if n > 1:
                await asyncio.sleep(self.backoff_s(n))
            tried = await self._once(attempt)
            if tried.error is None or not tried.retry:
                return n, tried
        return self.max_attempts, tried

    async def _once(self, attempt: Callable[[], Awaitable[None]]) -> Tried:
        try:
            await attempt()
            return Tried(None)
        except _Failure as exc:
            return Tried(exc.message, retry=exc.retry, refused=exc.refused)
        except Exception as exc:  # a bug must fail the delivery, not the task
            log.exception("destination delivery raised")
            return Tried(f"{type(exc).__name__}: {exc}")

    def _backoff_total(self) -> float:
        return sum(self.backoff_s(n) for n in range(2, self.max_attempts + 1))

    # -- one attempt per destination type -------------------------------------

    async def _post(self, url: str, body: bytes, task_id: str, condition: str) -> None:
        headers = {
            "Content-Type": JSON,
            c.HTTP_DEST_TASK_ID: task_id,
            c.HTTP_DEST_CONDITION: condition,
        }
        timeout = self._settings.webhook_timeout_s
        try:
            # The whole answer, from connecting to its last byte (a slow drip too).
            async with asyncio.timeout(timeout):
                code, reason = await self._webhooks.post(url, body, headers)
        except TimeoutError:
            raise _Failure(f"no answer within {timeout:g} s", retry=True) from None
        except WebhookRefused as exc:
            # Never tried, and the same again later: no retry, no outbox.
            raise _Failure(str(exc), retry=False, refused=True) from None
        except WebhookError as exc:
            raise _Failure(str(exc), retry=True) from None
        if 200 <= code < 300:
            return
        # Only a server error, throttling or a request timeout can go away on its own.
        retry = code >= 500 or code in (408, 429)
        raise _Failure(f"HTTP {code} {reason}".rstrip(), retry=retry)

    async def _publish(self, queue: str, body: bytes, task_id: str, condition: str) -> None:
        channel = self._channel
        if channel is None:
            raise RuntimeError("Destinations.start() first")
        message = aio_pika.Message(
            body,
            content_type=JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=task_id,
            headers={c.H_TASK_ID: task_id, c.H_CONDITION: condition},
        )
        timeout = self._settings.destination_publish_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if queue not in self._declared:
                    await self._declare(queue)
                if queue in self._unbounded:
                    await self._check_depth(queue)
                await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
        except TimeoutError:
            raise _Failure(f"the broker did not confirm within {timeout:g} s", retry=True) from None
        except PublishError:
            # Returned as unroutable: the queue was deleted since; declare it again next time.
            self._declared.pop(queue, None)
            raise _Failure(f"queue {queue} is missing: the broker returned the record", retry=True) from None
        except DeliveryError as exc:
            # A queue at its length limit refuses the publish (x-overflow: reject-publish).
            limit = self._settings.destination_queue_max_messages
            raise _Failure(f"the broker refused the record (queue {queue} full at {limit} "
                           f"records, or unavailable): {exc}", retry=True) from None
        except ChannelPreconditionFailed as exc:
            raise _Failure(f"queue {queue} exists with other arguments: {exc}", retry=False) from None
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            raise _Failure(f"broker: {type(exc).__name__}: {exc}", retry=True) from None

    async def _declare(self, queue: str) -> None:
        """Declare a queue destination with its length limit. One declared by an earlier
        version (quorum, no limit) is taken as it is, bounded by its depth instead; one
        with other arguments (another type, another limit) fails the delivery."""
        limit = self._settings.destination_queue_max_messages
        bounded: dict[str, FieldValue] = {
            "x-queue-type": "quorum", "x-max-length": limit, "x-overflow": "reject-publish",
        }
        if await self._declare_as(queue, bounded):
            self._unbounded.pop(queue, None)
        elif await self._declare_as(queue, {"x-queue-type": "quorum"}):
            log.warning("queue destination %s was declared without a length limit: its depth "
                        "is read before each publish instead", queue)
            self._unbounded[queue] = None
            if len(self._unbounded) > DECLARED_QUEUES_MAX:
                self._unbounded.popitem(last=False)
        else:
            raise _Failure(f"queue {queue} exists with other arguments (another type, or a "
                           f"length limit other than {limit})", retry=False)
        self._remember(queue)

    async def _declare_as(self, queue: str, arguments: dict[str, FieldValue]) -> bool:
        """Declare a durable queue on a channel of its own (a refusal closes that
        channel, not the publishing one); False when it exists with other arguments."""
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(queue, durable=True, arguments=arguments)
            return True
        except ChannelPreconditionFailed:
            return False
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _check_depth(self, queue: str) -> None:
        """The length limit of a queue declared without one: refuse while it is full."""
        limit = self._settings.destination_queue_max_messages
        depth = await self._depths.read(queue)
        if depth is None:
            self._declared.pop(queue, None)  # deleted since: declared again (bounded) next time
            self._unbounded.pop(queue, None)
            raise _Failure(f"queue {queue} is missing", retry=True)
        if depth[0] >= limit:
            raise _Failure(f"queue {queue} is full ({depth[0]} records, the limit is {limit})",
                           retry=True)

    def _remember(self, queue: str) -> None:
        self._declared[queue] = None
        if len(self._declared) > DECLARED_QUEUES_MAX:
            self._declared.popitem(last=False)

    async def _invoke(self, tenant_id: str, function: str, body: bytes, chain_depth: int) -> None:
        if self._submit is None:
            raise _Failure("function destinations are not available in this process", retry=False)
        timeout = self._settings.destination_publish_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._submit(tenant_id, function, body, JSON, chain_depth)
        except TimeoutError:
            # It may have been accepted all the same: submitting again could run the function twice.
            raise _Failure(
                f"no answer within {timeout:g} s; the invocation may have been submitted", retry=False
            ) from None
        except (Throttled, Unavailable, QuotaExceeded) as exc:  # each may pass: try again
            raise _Failure(exc.message, retry=True) from None
        except FnhostError as exc:
            raise _Failure(exc.message, retry=False) from None
