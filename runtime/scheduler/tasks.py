"""The task lifecycle on the scheduler: one queue message in, one final status out.

    Enqueued -> Processed -> Running -> Succeeded | Failed | Retrying (-> timer -> Running)
    Stopping -> Stopped; Expired (too old before it ran); Invalid (function deleted)

The message is acknowledged only after the outcome is recorded and the
destination has its record, or the record is in the outbox (runtime/outbox.py:
one short inline attempt, then durable timers deliver it), or its delivery
failed for good and that is recorded. A crash before that redelivers the
message: the task runs again (`approximateInvokeCount` > 1), nothing is lost.
Retry waits are durable timers, never sleeps holding a container or a queue slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from bson import Binary

from runtime import constants as c
from runtime.broker.routing import Router
from runtime.cache import FunctionCache
from runtime.destinations import build_record
from runtime.errors import Throttled, Unavailable
from runtime.models import AsyncConfig
from runtime.outbox import Outbox
from runtime.pool.container import Container
from runtime.pool.pool import Lease, Pool
from runtime.scheduler.acks import Acks
from runtime.scheduler.flow import Flow
from runtime.scheduler.invoker import OK, TIMEOUT, Invocation, Invoker, Outcome
from runtime.store.functions import FunctionRecord
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import PARK, RETRY, TimerStore
from runtime.store.usage import RecordBytes
from runtime.tasks import status as st

log = logging.getLogger(__name__)
RUNNABLE = frozenset({st.ENQUEUED, st.RETRYING, st.PROCESSED, st.RUNNING})
PARK_S = 5.0
MAX_BACKOFF_S = 300.0
H_THROTTLES = "throttles"
H_QUEUED_MS = "queued_ms"  # when a timer put it back in the queue
History = list[tuple[str, datetime]]


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
    chain_depth: int = 0  # function destinations that led to this task

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
            chain_depth=int(h.get(c.H_CHAIN_DEPTH, 0)),
        )

    def headers(self, **changes: Any) -> dict[str, Any]:
        headers = dict(self.message.headers or {})
        headers.update(changes)
        return headers


class NotRunnable(Exception):
    """The task's record forbids running it (stopped, deleted, already final)."""


class Abandoned(Exception):
    """The scheduler is shutting down past its grace period: this run's outcome is
    not recorded; the message, unacknowledged, goes back to the queue."""


@dataclass
class Run:
    """What the task record has still to learn about this delivery.

    Processed and Running are written late: with the outcome for a short task,
    or by a timer once the task has run for `running_write_delay_s`.
    """

    processed_at: datetime
    started_at: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    written: bool = False  # Processed and Running are stored
    writing: bool = False
    writer: asyncio.Task[None] | None = None

    def pending(self, attempted: bool) -> tuple[History, dict[str, Any], dict[str, int] | None]:
        """History entries, fields and counters to add to the next write."""
        if self.written:
            return [], {}, None
        earlier = [(st.PROCESSED, self.processed_at)]
        if self.started_at is not None:
            earlier.append((st.RUNNING, self.started_at))
        inc = {"attempts": 1, "invoke_count": 1} if attempted else None
        return earlier, dict(self.fields), inc

    async def settle(self) -> None:
        """Cancel the Running write if it has not begun; else wait for it."""
        if self.writer is None:
            return
        if not self.writing:
            self.writer.cancel()
        with contextlib.suppress(BaseException):
            await self.writer


@dataclass
class Slot:
    """One of a function's dispatch slots, held by a task until `release`."""

    flow: Flow
    tenant: str
    function: str
    taken: float
    held: bool = True
    finishing: bool = False

    def release(self) -> None:
        """Its invocation is over; its message is still in hand."""
        if self.held:
            self.held = False
            self.flow.leave(
                self.tenant, self.function, time.perf_counter() - self.taken, finishing=True
            )
            self.finishing = True

    def settle(self) -> None:
        """Its message is settled."""
        if self.held:
            self.held = False
            self.flow.leave(self.tenant, self.function, time.perf_counter() - self.taken)
        elif self.finishing:
            self.finishing = False
            self.flow.settled(self.tenant, self.function)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A read nobody may wait for (its message was set aside): its error is not news."""
    if not future.cancelled():
        future.exception()


class TaskRunner:
    def __init__(
        self,
        cache: FunctionCache,
        invoker: Invoker,
        pool: Pool,
        tasks: TaskStore,
        timers: TimerStore,
        outbox: Outbox,
        flow: Flow,
        router: Router,
        running_write_delay_s: float = 0.2,
        max_window: int = 1000,
        record_bytes: RecordBytes | None = None,
    ) -> None:
        # A task still running this long after its container was bound has its
        # Running status written then; a shorter one gets Processed and Running
        # (with their times) in the same write as its outcome: one write, not two.
        self._running_write_delay_s = running_write_delay_s
        self._cache = cache
        self._invoker = invoker
        self._pool = pool
        self._tasks = tasks
        self._timers = timers
        self._outbox = outbox
        self._flow = flow
        self._router = router
        self._max_window = max_window  # the host's capacity bounds every dispatch window
        # The tenant's task-record bytes (its quota): a final record's result and logs.
        self._record_bytes = record_bytes
        # Tasks taken from the queue and not finished; the container once bound.
        self._inflight: dict[str, Container | None] = {}
        self._acks = Acks()
        self._handling = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._abandoning = False
        self._stop_requested: set[str] = set()

    # -- entry points ----------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """A message from a tenant's queue."""
        await self._handle_message(message, shared=True)

    async def handle_dedicated(self, message: AbstractIncomingMessage) -> None:
        """A message from a function's dedicated queue."""
        await self._handle_message(message, shared=False)

    async def _handle_message(self, message: AbstractIncomingMessage, shared: bool) -> None:
        """Run one message; ack after its outcome is stored, nack (redeliver) on a crash."""
        self._acks.taken(message)
        self._handling += 1
        self._idle.clear()
        try:
            await self._handle(Job.decode(message), shared)
        except Abandoned:
            self._acks.forget(message)  # redelivered once this scheduler's channel closes
            return
        except Exception:
            log.exception("task handling failed; the message will be redelivered")
            self._acks.forget(message)
            await message.nack(requeue=True)
            return
        finally:
            self._handling -= 1
            if not self._handling:
                self._idle.set()
        self._acks.done(message)

    async def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for the tasks in hand to finish; then abandon the rest:
        their outcomes are not recorded and their messages go back to the queue (to
        run again elsewhere, not to fail because this scheduler stopped)."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            self._abandoning = True
            log.warning("shutting down with %d task(s) in hand: they will run again", self._handling)
            return False

    def on_control(self, event: dict[str, Any]) -> None:
        if event.get("kind") != c.CTL_STOP_TASK:
            return
        self._request_stop(str(event["key"]))

    def _request_stop(self, key: str) -> None:
        """Stop the task if it is in hand here: kill its container, or never start it."""
        if key in self._inflight:
            self._stop_requested.add(key)
            container = self._inflight[key]
            if container is not None:
                self._pool.discard(container)

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

    async def _handle(self, job: Job, shared: bool) -> None:
        record = await self._cache.get(job.tenant, job.function)
        if record is None:
            if job.task_mode:
                await self._tasks.advance(
                    job.key, st.INVALID, when=RUNNABLE | {st.STOPPING},
                    fields={"error": _error("Fnhost.FunctionDeleted", "the function was deleted")},
                )
            return
        if shared and record.routed:
            await self._router.forward(job.message, job.tenant, job.function)
            return
        status: asyncio.Future[str | None] | None = None
        if job.task_mode and not self._flow.free(job.tenant, job.function):
            # It will wait for a slot: read its status meanwhile, not after.
            status = asyncio.ensure_future(self._tasks.status(job.key))
            status.add_done_callback(_retrieve)
        ceiling = min(record.config.max_concurrency, self._max_window)
        reason = await self._flow.admit(job.tenant, job.function, ceiling, shared=shared)
        if reason is not None:
            # It holds up its tenant's queue: to a queue of its own, and this message too.
            await self._router.promote(job.tenant, job.function, reason)
            await self._router.forward(job.message, job.tenant, job.function)
            return
        slot = Slot(self._flow, job.tenant, job.function, time.perf_counter())
        try:
            await self._run(job, record, slot, status)
        finally:
            slot.settle()

    async def _run(
        self, job: Job, record: FunctionRecord, slot: Slot,
        status: asyncio.Future[str | None] | None,
    ) -> None:
        """The task in hand, holding one of its function's dispatch slots until its
        invocation is over (its record and destination hand-off take none)."""
        config = record.config.async_
        if job.task_mode and await (status or self._tasks.status(job.key)) not in RUNNABLE:
            # Stopped, deleted or already final: drop it before it costs a container
            # (or, its function paused, a parking timer).
            await self._not_runnable(job, record)
            return
        if record.config.paused:
            await self._schedule(job, PARK, datetime.now(UTC) + timedelta(seconds=PARK_S), job.headers())
            return
        # Approximate, as the contract says: a redelivery after a crash counts once more.
        invoke_count = job.attempt + (1 if job.message.redelivered else 0)
        run = Run(processed_at=datetime.now(UTC))
        if (run.processed_at - job.created_at).total_seconds() > config.max_event_age_s:
            await self._finish(
                job, record, st.EXPIRED, st.EVENT_AGE_EXCEEDED, None, invoke_count, run,
                error=_error("Fnhost.EventAgeExceeded", "the event was older than max_event_age_s"),
            )
            return

        async def on_start(lease: Lease) -> None:
            if job.key in self._stop_requested:
                raise NotRunnable  # stopped while it waited for a container
            self._inflight[job.key] = lease.container
            if lease.slow:
                self._flow.on_capacity_error(job.tenant, job.function)  # the engine lags
            run.started_at = datetime.now(UTC)
            run.fields = {
                "version": record.version,
                "container": lease.container.short_id,
                "timings.queue_ms": _ms_between(job.queued_at, run.processed_at),
                "timings.start": lease.start.value,
                "timings.init_ms": round(lease.init_ms, 3),
            }
            if job.task_mode:
                run.writer = asyncio.ensure_future(self._write_running(job, run))

        invocation = Invocation(
            request_id=job.request_id,
            payload=job.message.body,
            content_type=job.message.content_type or "application/octet-stream",
            task_id=job.task_id,
            attempt=job.attempt,
        )
        self._inflight[job.key] = None
        try:
            outcome = await self._invoker.invoke(record, invocation, on_start=on_start)
        except NotRunnable:
            await self._not_runnable(job, record)
            return
        except (Throttled, Unavailable):
            # No capacity: not the function's fault, so not an attempt. Back off and
            # try again until the event's age runs out.
            self._flow.on_capacity_error(job.tenant, job.function)
            await self._retry_later(job, record, config, run, throttled=True)
            return
        finally:
            slot.release()
            self._inflight.pop(job.key, None)
            stopped = job.key in self._stop_requested
            self._stop_requested.discard(job.key)
            await run.settle()
        if self._abandoning:
            raise Abandoned
        if outcome.capacity_error:
            self._flow.on_capacity_error(job.tenant, job.function)
        elif outcome.status == OK:
            self._flow.on_success(job.tenant, job.function)
        if stopped:
            await self._finish(
                job, record, st.STOPPED, st.STOPPED_CONDITION, outcome, invoke_count, run,
                error=_error("Fnhost.Stopped", "the task was stopped while it ran"),
            )
        elif outcome.status == OK:
            await self._finish(job, record, st.SUCCEEDED, st.SUCCESS, outcome, invoke_count, run)
        elif outcome.retryable and job.attempt <= config.max_retry_attempts:
            await self._retry_later(job, record, config, run, outcome=outcome)
        else:
            await self._finish(
                job, record, st.FAILED, st.RETRIES_EXHAUSTED, outcome, invoke_count, run,
                error=outcome.error,
            )

    async def _write_running(self, job: Job, run: Run) -> None:
        """Record Processed and Running of a task still running after a moment."""
        await asyncio.sleep(self._running_write_delay_s)
        run.writing = True
        earlier, fields, inc = run.pending(attempted=True)
        applied = await self._tasks.advance(
            job.key, st.RUNNING, when=RUNNABLE, earlier=earlier[:1], at=run.started_at,
            fields=fields, inc=inc,
        )
        run.written = applied
        if not applied:
            # Stopped as queued (the stop crossed its start) or deleted: stop it.
            self._request_stop(job.key)

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
        delivery = await self._outbox.deliver(
            job.tenant, destination,
            self._record(job, record, st.STOPPED_CONDITION, None, invoke_count),
            function=job.function, key=job.key, task_mode=job.task_mode, chain_depth=job.chain_depth,
        )
        await self._tasks.set_fields(job.key, {"destination": delivery})

    async def _retry_later(
        self, job: Job, record: FunctionRecord, config: AsyncConfig, run: Run,
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
                job, record, st.EXPIRED, st.EVENT_AGE_EXCEEDED, outcome, job.attempt, run,
                error=_error("Fnhost.EventAgeExceeded", "max_event_age_s ran out before a retry"),
            )
            return
        if job.task_mode:
            earlier, fields, inc = run.pending(attempted=outcome is not None)
            fields["due_at"] = due
            if outcome is not None:
                fields.update(_outcome_fields(outcome))
                fields["error"] = outcome.error
            applied = await self._tasks.advance(
                job.key, st.RETRYING, when=RUNNABLE, fields=fields, inc=inc, earlier=earlier
            )
            if not applied:
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
        outcome: Outcome | None, invoke_count: int, run: Run, error: dict[str, Any] | None = None,
    ) -> None:
        """Deliver the destination record (or hand it to the outbox, durably), then store
        the final status: then it may be acked."""
        config = record.config.async_
        destination = config.on_success if condition == st.SUCCESS else config.on_failure
        delivery: dict[str, Any] = {"status": "none"}
        started = time.perf_counter()
        if destination is not None:
            delivery = await self._outbox.deliver(
                job.tenant, destination, self._record(job, record, condition, outcome, invoke_count),
                function=job.function, key=job.key, task_mode=job.task_mode, chain_depth=job.chain_depth,
            )
        if not job.task_mode:
            return
        earlier, fields, inc = run.pending(attempted=outcome is not None)
        fields.update({
            "destination": delivery,
            "timings.destination_ms": round((time.perf_counter() - started) * 1000, 3),
            "error": error,
        })
        if outcome is not None:
            fields.update(_outcome_fields(outcome))
            fields.setdefault("version", record.version)
            if self._record_bytes is not None:
                kept = len(outcome.logs) + (len(fields["result"]) if "result" in fields else 0)
                self._record_bytes.add(job.tenant, job.created_at, kept)
        if await self._tasks.advance(
            job.key, status, when=RUNNABLE | {st.STOPPING}, fields=fields, inc=inc, earlier=earlier
        ):
            return
        if run.started_at is not None and not run.written:
            # Marked Stopped as a queued task while it was starting here (before its
            # Running was written): it did run, so its record takes the real outcome,
            # the one its destination was given.
            await self._tasks.overrule_stop(
                job.key, status, fields=fields, inc=inc, earlier=earlier
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
