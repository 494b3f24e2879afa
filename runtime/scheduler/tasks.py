"""The task lifecycle on the scheduler: one queue message in, one final status out.

    Enqueued -> Processed -> Running -> Succeeded | Failed | Retrying (-> timer -> Running)
    Stopping -> Stopped; Expired (too old before it ran); Invalid (function deleted)

The message is acknowledged only after the outcome is recorded and the
destination has its record (or its delivery was given up by policy and that
is recorded). A crash before that redelivers the message: the task runs again
(`approximateInvokeCount` > 1), nothing is lost. Retry waits are durable
timers, never sleeps holding a container or a queue slot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from bson import Binary

from runtime import constants as c
from runtime.cache import FunctionCache
from runtime.destinations import Destinations, build_record
from runtime.errors import Throttled, Unavailable
from runtime.models import AsyncConfig
from runtime.pool.container import Container
from runtime.pool.pool import Lease, Pool
from runtime.scheduler.invoker import OK, TIMEOUT, Invocation, Invoker, Outcome
from runtime.store.functions import FunctionRecord
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import PARK, RETRY, TimerStore
from runtime.tasks import status as st

log = logging.getLogger(__name__)
RUNNABLE = frozenset({st.ENQUEUED, st.RETRYING, st.PROCESSED, st.RUNNING})
PARK_S = 5.0
MAX_BACKOFF_S = 300.0
H_THROTTLES = "throttles"
H_QUEUED_MS = "queued_ms"  # when a timer put it back in the queue


def backoff_s(base: float, attempt: int) -> float:
    """`retry_backoff_s` doubled for each earlier attempt, capped at 300 s."""
    return float(min(MAX_BACKOFF_S, base * (2 ** max(0, attempt - 1))))


@dataclass
class Job:
    """One delivered message, decoded."""

    message: AbstractIncomingMessage
    tenant: str
    function: str
    task_id: str
    request_id: str
    created_at: datetime
    attempt: int
    task_mode: bool
    throttles: int
    queued_at: datetime

    @property
    def key(self) -> str:
        return task_key(self.tenant, self.function, self.task_id)

    @classmethod
    def decode(cls, message: AbstractIncomingMessage) -> Job:
        h: dict[str, Any] = dict(message.headers or {})
        return cls(
            message=message,
            tenant=str(h[c.H_TENANT]),
            function=str(h[c.H_FUNCTION]),
            task_id=str(h[c.H_TASK_ID]),
            request_id=str(h.get(c.H_REQUEST_ID, "")),
            created_at=datetime.fromtimestamp(int(h[c.H_CREATED_MS]) / 1000, UTC),
            attempt=int(h.get(c.H_ATTEMPT, 1)),
            task_mode=bool(h.get(c.H_TASK_MODE, True)),
            throttles=int(h.get(H_THROTTLES, 0)),
            queued_at=datetime.fromtimestamp(
                int(h.get(H_QUEUED_MS) or h[c.H_CREATED_MS]) / 1000, UTC
            ),
        )

    def headers(self, **changes: Any) -> dict[str, Any]:
        headers = dict(self.message.headers or {})
        headers.update(changes)
        return headers


class NotRunnable(Exception):
    """The task's record forbids running it (stopped, deleted, already final)."""


class TaskRunner:
    def __init__(
        self,
        cache: FunctionCache,
        invoker: Invoker,
        pool: Pool,
        tasks: TaskStore,
        timers: TimerStore,
        destinations: Destinations,
    ) -> None:
        self._cache = cache
        self._invoker = invoker
        self._pool = pool
        self._tasks = tasks
        self._timers = timers
        self._destinations = destinations
        self._running: dict[str, Container] = {}
        self._stop_requested: set[str] = set()

    # -- entry points ----------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Run one message; ack after its outcome is stored, nack (redeliver) on a crash."""
        try:
            await self._handle(Job.decode(message))
        except Exception:
            log.exception("task handling failed; the message will be redelivered")
            await message.nack(requeue=True)
            return
        await message.ack()

    def on_control(self, event: dict[str, Any]) -> None:
        if event.get("kind") != c.CTL_STOP_TASK:
            return
        key = str(event["key"])
        if key in self._running:
            self._stop_requested.add(key)
            self._pool.discard(self._running[key])

    async def dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A message redelivered too often (it crashed us each time): fail its task."""
        try:
            job = Job.decode(message)
            if job.task_mode:
                error = {
                    "errorType": "Fnhost.PoisonMessage",
                    "errorMessage": "the task crashed the scheduler repeatedly and was given up",
                    "stackTrace": [],
                }
                await self._tasks.transition(
                    job.key, st.FAILED, when=RUNNABLE | {st.STOPPING}, fields={"error": error}
                )
        except Exception:
            log.exception("could not record a dead-lettered task")
        await message.ack()

    # -- the lifecycle ---------------------------------------------------------

    async def _handle(self, job: Job) -> None:
        record = await self._cache.get(job.tenant, job.function)
        if record is None:
            if job.task_mode:
                await self._tasks.advance(
                    job.key, st.INVALID, when=RUNNABLE | {st.STOPPING},
                    fields={"error": _error("Fnhost.FunctionDeleted", "the function was deleted")},
                )
            return
        config = record.config.async_
        if record.config.paused:
            await self._schedule(job, PARK, datetime.now(UTC) + timedelta(seconds=PARK_S), job.headers())
            return
        # Approximate, as the contract says: a redelivery after a crash counts once more.
        invoke_count = job.attempt + (1 if job.message.redelivered else 0)
        processed_at = datetime.now(UTC)
        if (processed_at - job.created_at).total_seconds() > config.max_event_age_s:
            if job.task_mode:
                # Stopped (or already final) meanwhile: its own record, not EventAgeExceeded.
                doc = await self._tasks.get(job.key)
                if doc is None or doc["status"] not in RUNNABLE:
                    await self._not_runnable(job, record)
                    return
            await self._finish(
                job, record, st.EXPIRED, st.EVENT_AGE_EXCEEDED, None, invoke_count,
                error=_error("Fnhost.EventAgeExceeded", "the event was older than max_event_age_s"),
            )
            return

        started = False

        async def on_start(lease: Lease) -> None:
            nonlocal started
            started = True
            self._running[job.key] = lease.container
            if job.key in self._stop_requested:
                self._pool.discard(lease.container)
            if job.task_mode:
                # Processed and Running go in one write: Processed keeps the time
                # the message was dequeued, Running the time a container was bound.
                applied = await self._tasks.advance(
                    job.key, st.RUNNING, when=RUNNABLE,
                    earlier=[(st.PROCESSED, processed_at)],
                    fields={
                        "version": record.version,
                        "container": lease.container.short_id,
                        "timings.queue_ms": _ms_between(job.queued_at, processed_at),
                        "timings.start": lease.start.value,
                        "timings.init_ms": round(lease.init_ms, 3),
                    },
                    inc={"attempts": 1, "invoke_count": 1},
                )
                if not applied:
                    raise NotRunnable

        invocation = Invocation(
            request_id=job.request_id,
            payload=job.message.body,
            content_type=job.message.content_type or "application/octet-stream",
            task_id=job.task_id,
            attempt=job.attempt,
        )
        try:
            outcome = await self._invoker.invoke(record, invocation, on_start=on_start)
        except NotRunnable:
            await self._not_runnable(job, record)
            return
        except (Throttled, Unavailable):
            # No capacity: not the function's fault, so not an attempt. Back off and
            # try again until the event's age runs out.
            await self._retry_later(job, record, config, throttled=True)
            return
        finally:
            self._running.pop(job.key, None)
        if job.key in self._stop_requested:
            self._stop_requested.discard(job.key)
            await self._finish(
                job, record, st.STOPPED, st.STOPPED_CONDITION, outcome, invoke_count,
                error=_error("Fnhost.Stopped", "the task was stopped while it ran"),
            )
            return
        if outcome.status == OK:
            await self._finish(job, record, st.SUCCEEDED, st.SUCCESS, outcome, invoke_count)
        elif outcome.retryable and job.attempt <= config.max_retry_attempts:
            await self._retry_later(job, record, config, outcome=outcome)
        else:
            # A handler that failed to load never reached Running, yet it was an attempt.
            inc = None if started else {"attempts": 1, "invoke_count": 1}
            await self._finish(
                job, record, st.FAILED, st.RETRIES_EXHAUSTED, outcome, invoke_count,
                error=outcome.error, inc=inc,
            )

    async def _not_runnable(self, job: Job, record: FunctionRecord) -> None:
        """The task's record says it must not run: stopped, deleted or already final."""
        doc = await self._tasks.get(job.key)
        if doc is None:
            return  # deleted (batch delete): nothing to do
        if doc["status"] == st.STOPPING:
            await self._tasks.transition(job.key, st.STOPPED, when=frozenset({st.STOPPING}))
            doc["status"] = st.STOPPED
        if doc["status"] == st.STOPPED and doc.get("destination") is None:
            await self._deliver_stopped(job, record, int(doc.get("invoke_count", 0)))

    async def _deliver_stopped(self, job: Job, record: FunctionRecord, invoke_count: int) -> None:
        destination = record.config.async_.on_failure
        if destination is None:
            await self._tasks.set_fields(job.key, {"destination": {"status": "none"}})
            return
        delivery = await self._destinations.deliver(
            job.tenant, destination,
            self._record(job, record, st.STOPPED_CONDITION, None, invoke_count),
        )
        await self._tasks.set_fields(job.key, {"destination": delivery.to_dict()})

    async def _retry_later(
        self, job: Job, record: FunctionRecord, config: AsyncConfig,
        outcome: Outcome | None = None, throttled: bool = False,
    ) -> None:
        if throttled:
            wait = backoff_s(config.retry_backoff_s, job.throttles + 1)
            headers = job.headers(**{H_THROTTLES: job.throttles + 1})
        else:
            wait = backoff_s(config.retry_backoff_s, job.attempt)
            headers = job.headers(**{c.H_ATTEMPT: job.attempt + 1, H_THROTTLES: 0})
        due = datetime.now(UTC) + timedelta(seconds=wait)
        headers[H_QUEUED_MS] = int(due.timestamp() * 1000)
        if (due - job.created_at).total_seconds() > config.max_event_age_s:
            await self._finish(
                job, record, st.EXPIRED, st.EVENT_AGE_EXCEEDED, outcome, job.attempt,
                error=_error("Fnhost.EventAgeExceeded", "max_event_age_s ran out before a retry"),
            )
            return
        if job.task_mode:
            fields: dict[str, Any] = {"due_at": due}
            if outcome is not None:
                fields.update(_outcome_fields(outcome))
                fields["error"] = outcome.error
            if not await self._tasks.advance(job.key, st.RETRYING, when=RUNNABLE, fields=fields):
                # Stopped (or finished) meanwhile: no retry timer, its record instead.
                await self._not_runnable(job, record)
                return
        await self._schedule(job, RETRY, due, headers)

    async def _schedule(self, job: Job, kind: str, due: datetime, headers: dict[str, Any]) -> None:
        await self._timers.schedule(
            job.key, due, kind=kind, tenant=job.tenant, function=job.function,
            headers=headers, body=job.message.body, content_type=job.message.content_type,
        )

    async def _finish(
        self, job: Job, record: FunctionRecord, status: str, condition: str,
        outcome: Outcome | None, invoke_count: int, error: dict[str, Any] | None = None,
        inc: dict[str, int] | None = None,
    ) -> None:
        """Deliver the destination record, then store the final status: then it may be acked."""
        config = record.config.async_
        destination = config.on_success if condition == st.SUCCESS else config.on_failure
        delivery: dict[str, Any] = {"status": "none"}
        started = time.perf_counter()
        if destination is not None:
            result = await self._destinations.deliver(
                job.tenant, destination, self._record(job, record, condition, outcome, invoke_count)
            )
            delivery = result.to_dict()
        if not job.task_mode:
            return
        fields: dict[str, Any] = {
            "destination": delivery,
            "timings.destination_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": error,
        }
        if outcome is not None:
            fields.update(_outcome_fields(outcome))
        if inc:
            fields.setdefault("version", record.version)
        await self._tasks.advance(
            job.key, status, when=RUNNABLE | {st.STOPPING}, fields=fields, inc=inc
        )

    def _record(
        self, job: Job, record: FunctionRecord, condition: str, outcome: Outcome | None,
        invoke_count: int,
    ) -> dict[str, Any]:
        function_error = None
        if outcome is not None and outcome.status != OK:
            function_error = "Timeout" if outcome.status == TIMEOUT else "Unhandled"
        return build_record(
            request_id=job.request_id,
            task_id=job.task_id,
            function=record.name,
            version=record.version,
            condition=condition,
            invoke_count=max(1, invoke_count),
            payload=job.message.body,
            content_type=job.message.content_type,
            status_code=200,
            function_error=function_error,
            result=outcome.body if outcome is not None else None,
            result_content_type=outcome.content_type if outcome is not None else None,
        )


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"errorType": kind, "errorMessage": message, "stackTrace": []}


def _ms_between(start: datetime, end: datetime) -> float:
    return round(max(0.0, (end - start).total_seconds()) * 1000, 3)


RESULT_LIMIT = 1 << 20


def _outcome_fields(outcome: Outcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "timings.run_ms": round(outcome.run_ms, 3),
        "logs": Binary(outcome.logs),
        "container": outcome.container or None,
    }
    if outcome.status == OK:
        body = outcome.body
        fields["result"] = Binary(body[:RESULT_LIMIT])
        fields["result_type"] = outcome.content_type
        fields["result_truncated"] = len(body) > RESULT_LIMIT
    return fields
