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

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

from runtime import constants as c
from runtime.broker.publisher import InvokePublisher
from runtime.later import RetryLater
from runtime.store.functions import FunctionRecord
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import DELAY, TimerStore

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


@dataclass(frozen=True)
class Accepted:
    task_id: str
    request_id: str
    due_at: datetime | None


def message_headers(
    *, tenant: str, function: str, task_id: str, request_id: str, created_at: datetime,
    attempt: int, task_mode: bool,
) -> dict[str, Any]:
    return {
        c.H_TENANT: tenant,
        c.H_FUNCTION: function,
        c.H_TASK_ID: task_id,
        c.H_REQUEST_ID: request_id,
        c.H_CREATED_MS: int(created_at.timestamp() * 1000),
        c.H_ATTEMPT: attempt,
        c.H_TASK_MODE: task_mode,
    }


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
        record = sub.record
        task_mode = record.config.async_.task_mode
        task_id = sub.task_id or str(uuid.uuid4())
        request_id = sub.request_id or str(uuid.uuid4())
        created_at = datetime.now(UTC)
        due_at = created_at + timedelta(seconds=sub.delay_s) if sub.delay_s > 0 else None
        undo = (record.tenant, record.name, task_id)
        try:
            if task_mode:
                await self._tasks.create(
                    tenant=record.tenant, function=record.name, task_id=task_id,
                    request_id=request_id, payload=sub.payload, content_type=sub.content_type,
                    created_at=created_at, due_at=due_at,
                )
            elif sub.task_id is not None:
                await self._tasks.claim_id(record.tenant, record.name, task_id, created_at)
        except ServerSelectionTimeoutError:
            raise  # no server to send the insert to: nothing was written
        except ConnectionFailure:
            # The insert may have reached the server before the connection broke.
            if task_mode or sub.task_id is not None:
                await self._undo(undo)
            raise
        headers = message_headers(
            tenant=record.tenant, function=record.name, task_id=task_id, request_id=request_id,
            created_at=created_at, attempt=1, task_mode=task_mode,
        )
        try:
            if due_at is not None:
                await self._timers.schedule(
                    task_key(record.tenant, record.name, task_id), due_at, kind=DELAY,
                    tenant=record.tenant, function=record.name, headers=headers,
                    body=sub.payload, content_type=sub.content_type,
                )
            else:
                await self._publisher.publish(
                    record.tenant, headers, sub.payload, sub.content_type,
                    function=record.name if record.routed else None,
                )
        except Exception:
            # Not durable: take the record back so the same task id can be sent again.
            if task_mode or sub.task_id is not None:
                await self._undo(undo)
            raise
        return Accepted(task_id, request_id, due_at)

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
