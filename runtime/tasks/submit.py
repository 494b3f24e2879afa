"""Submitting an asynchronous invocation: record (task mode), then publish or schedule.

Used by the gateway (`X-Invocation-Type: Event`) and by the `function`
destination. The caller gets a task id only once the task is durable: the
broker confirmed the message, or its timer is stored in MongoDB.

A submission that is not durable leaves no record behind: a record written
before a refused publish is taken back, and so is one whose insert broke off
with the database connection (it may have landed). When the database cannot
be reached for that undo either, it is retried in the background until it is.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

from runtime import constants as c
from runtime.broker.publisher import InvokePublisher
from runtime.errors import Conflict, FnhostError, Unavailable
from runtime.later import RetryLater
from runtime.store.functions import FunctionRecord
from runtime.store.mongo import Doc
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import DELAY, TimerStore, timer

log = logging.getLogger(__name__)
# Undoes waiting for the database to come back, and how often they are tried.
MAX_PENDING_UNDOS = 10_000
UNDO_RETRY_S = 0.5


@dataclass(frozen=True)
class Submission:
    record: FunctionRecord
    payload: bytes
    content_type: str | None
    task_id: str | None = None
    delay_s: float = 0.0
    request_id: str | None = None
    # How many function destinations led to this task (0: a client submitted it).
    chain_depth: int = 0


@dataclass(frozen=True)
class Accepted:
    task_id: str
    request_id: str
    due_at: datetime | None


def message_headers(
    *, tenant: str, function: str, task_id: str, request_id: str, created_at: datetime,
    attempt: int, task_mode: bool, chain_depth: int = 0,
) -> dict[str, Any]:
    headers = {
        c.H_TENANT: tenant,
        c.H_FUNCTION: function,
        c.H_TASK_ID: task_id,
        c.H_REQUEST_ID: request_id,
        c.H_CREATED_MS: int(created_at.timestamp() * 1000),
        c.H_ATTEMPT: attempt,
        c.H_TASK_MODE: task_mode,
    }
    if chain_depth:
        headers[c.H_CHAIN_DEPTH] = chain_depth
    return headers


@dataclass(slots=True)
class _Plan:
    """A submission with its ids, times and message headers decided."""

    sub: Submission
    task_id: str
    request_id: str
    created_at: datetime
    due_at: datetime | None
    task_mode: bool

    @property
    def keeps_id(self) -> bool:
        """Whether the database holds the task's id (its record, or a claimed id)."""
        return self.task_mode or self.sub.task_id is not None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.sub.record.tenant, self.sub.record.name, self.task_id)

    def headers(self) -> dict[str, Any]:
        record = self.sub.record
        return message_headers(
            tenant=record.tenant, function=record.name, task_id=self.task_id,
            request_id=self.request_id, created_at=self.created_at, attempt=1,
            task_mode=self.task_mode, chain_depth=self.sub.chain_depth,
        )

    def accepted(self) -> Accepted:
        return Accepted(self.task_id, self.request_id, self.due_at)

    def record(self, tasks: TaskStore) -> Doc:
        """The task's record (task mode)."""
        record = self.sub.record
        doc = tasks.record(
            tenant=record.tenant, function=record.name, task_id=self.task_id,
            request_id=self.request_id, payload=self.sub.payload,
            content_type=self.sub.content_type, created_at=self.created_at, due_at=self.due_at,
        )
        if self.sub.chain_depth:
            doc["chain_depth"] = self.sub.chain_depth  # a redrive keeps its place in the chain
        return doc

    def timer(self) -> Doc:
        """The timer that holds the message of a delayed task until it is due."""
        assert self.due_at is not None
        record = self.sub.record
        return timer(
            self.due_at, kind=DELAY, tenant=record.tenant, function=record.name,
            headers=self.headers(), body=self.sub.payload, content_type=self.sub.content_type,
        )


def _plan(sub: Submission, created_at: datetime) -> _Plan:
    due_at = created_at + timedelta(seconds=sub.delay_s) if sub.delay_s > 0 else None
    return _Plan(
        sub, sub.task_id or str(uuid.uuid4()), sub.request_id or str(uuid.uuid4()),
        created_at, due_at, sub.record.config.async_.task_mode,
    )


class Submitter:
    def __init__(self, tasks: TaskStore, timers: TimerStore, publisher: InvokePublisher) -> None:
        self._tasks = tasks
        self._timers = timers
        self._publisher = publisher
        self._undos: RetryLater[tuple[str, str, str]] = RetryLater(
            "taking back task records", self._forget, (ConnectionFailure,), UNDO_RETRY_S,
            MAX_PENDING_UNDOS,
        )

    async def submit(self, sub: Submission) -> Accepted:
        plan = _plan(sub, datetime.now(UTC))
        record = sub.record
        try:
            if plan.task_mode:
                await self._tasks.insert(plan.record(self._tasks))
            elif sub.task_id is not None:
                await self._tasks.claim_id(record.tenant, record.name, plan.task_id, plan.created_at)
        except ServerSelectionTimeoutError:
            raise  # no server to send the insert to: nothing was written
        except ConnectionFailure:
            # The insert may have reached the server before the connection broke.
            if plan.keeps_id:
                await self._undo(plan.key)
            raise
        try:
            if plan.due_at is not None:
                await self._timers.put(task_key(*plan.key), plan.timer())
            else:
                await self._publish(plan)
        except Exception:
            # Not durable: take the record back so the same task id can be sent again.
            if plan.keeps_id:
                await self._undo(plan.key)
            raise
        return plan.accepted()

    async def submit_many(self, subs: list[Submission]) -> list[Accepted | FnhostError]:
        """Submissions of one function, each as `submit` would, answered in order, at
        about the cost of one: the records (or claimed ids) in one bulk write, the
        timers of delayed tasks in another, and the messages all published at once on
        the confirm channel, their confirms awaited together. A taken task id
        (Conflict) or a publish the broker did not confirm (Unavailable) is that
        submission's answer alone; a failed write of the records fails them all
        (raised, with nothing left behind)."""
        if not subs:
            return []
        function = subs[0].record
        assert all(sub.record is function for sub in subs), "one function per batch"
        now = datetime.now(UTC)
        plans = [_plan(sub, now) for sub in subs]
        out: list[Accepted | FnhostError | None] = [None] * len(plans)
        await self._record_many(function, plans, out)
        due = [i for i, p in enumerate(plans) if out[i] is None and p.due_at is not None]
        queued = [i for i, p in enumerate(plans) if out[i] is None and p.due_at is None]
        jobs: list[Awaitable[None]] = [self._publish(plans[i]) for i in queued]
        if due:
            jobs.append(self._timers.schedule_many(
                {task_key(*plans[i].key): plans[i].timer() for i in due}
            ))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failed: list[int] = []
        for i, result in zip(queued, results, strict=False):
            if result is not None:
                out[i] = _unavailable(result, "the message broker did not confirm the task")
                failed.append(i)
        if due and results[-1] is not None:
            for i in due:
                out[i] = _unavailable(results[-1], "the database did not store the task's timer")
                failed.append(i)
        # Not durable: take the records back so the same task ids can be sent again.
        await asyncio.gather(*(self._undo(plans[i].key) for i in failed if plans[i].keeps_id))
        return [o if o is not None else plans[i].accepted() for i, o in enumerate(out)]

    async def _record_many(
        self, function: FunctionRecord, plans: list[_Plan], out: list[Accepted | FnhostError | None]
    ) -> None:
        """The records (task mode) or the claimed ids of `plans`, in one bulk write; a
        taken id is that plan's Conflict in `out`. Any other failure takes back what
        was (or may have been) written, and is raised."""
        if function.config.async_.task_mode:
            keeping = list(range(len(plans)))
            written = self._tasks.create_many([p.record(self._tasks) for p in plans])
        else:
            keeping = [i for i, p in enumerate(plans) if p.sub.task_id is not None]
            if not keeping:
                return
            written = self._tasks.claim_ids(
                function.tenant, function.name, [plans[i].task_id for i in keeping],
                plans[0].created_at,
            )
        errors = await written
        broken = [e for e in errors if e is not None and not isinstance(e, Conflict)]
        if broken:
            # An insert that found no server, or whose id was taken, wrote nothing.
            await asyncio.gather(*(
                self._undo(plans[i].key) for i, e in zip(keeping, errors, strict=True)
                if not isinstance(e, Conflict | ServerSelectionTimeoutError)
            ))
            raise broken[0]
        for i, e in zip(keeping, errors, strict=True):
            if isinstance(e, Conflict):
                out[i] = e

    async def _publish(self, plan: _Plan) -> None:
        record = plan.sub.record
        await self._publisher.publish(
            record.tenant, plan.headers(), plan.sub.payload, plan.sub.content_type,
            function=record.name if record.routed else None,
        )

    async def _undo(self, key: tuple[str, str, str]) -> None:
        """Forget a record that has no message behind it; never raises, so the caller's
        own error (a 503) is what the client sees. A connection error is tried once more
        at once (the pool drops broken connections), then in the background."""
        error: ConnectionFailure | None = None
        for _ in range(2):
            try:
                await self._forget(key)
                return
            except ServerSelectionTimeoutError as exc:
                error = exc
                break  # the database is down: no use trying again now
            except ConnectionFailure as exc:
                error = exc
            except Exception:
                log.exception("taking back task %s failed: it stays Enqueued", key)
                return
        if not self._undos.add(key):
            log.error("cannot take back task %s (the database is unreachable: %s) and %d "
                      "undoes already wait: it stays Enqueued", key, error, len(self._undos))
            return
        log.warning("cannot take back task %s yet (the database is unreachable: %s): "
                    "retrying in the background", key, error)

    async def _forget(self, key: tuple[str, str, str]) -> None:
        await self._tasks.forget(*key)

    async def close(self) -> None:
        """Stop retrying undoes (those left keep their Enqueued record)."""
        await self._undos.close()


def _unavailable(error: BaseException, what: str) -> FnhostError:
    """A submission's own answer for an error that left it not durable."""
    if isinstance(error, FnhostError):
        return error
    return Unavailable(f"{what}: {error!s:.200}")
