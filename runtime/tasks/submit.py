"""Submitting an asynchronous invocation: record (task mode), then publish or schedule.

Used by the gateway (`X-Invocation-Type: Event`) and by the `function`
destination. The caller gets a task id only once the task is durable: the
broker confirmed the message, or its timer is stored in MongoDB.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime import constants as c
from runtime.broker.publisher import InvokePublisher
from runtime.store.functions import FunctionRecord
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import DELAY, TimerStore


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

    async def submit(self, sub: Submission) -> Accepted:
        record = sub.record
        task_mode = record.config.async_.task_mode
        task_id = sub.task_id or str(uuid.uuid4())
        request_id = sub.request_id or str(uuid.uuid4())
        created_at = datetime.now(UTC)
        due_at = created_at + timedelta(seconds=sub.delay_s) if sub.delay_s > 0 else None
        if task_mode:
            await self._tasks.create(
                tenant=record.tenant, function=record.name, task_id=task_id,
                request_id=request_id, payload=sub.payload, content_type=sub.content_type,
                created_at=created_at, due_at=due_at,
            )
        elif sub.task_id is not None:
            await self._tasks.claim_id(record.tenant, record.name, task_id, created_at)
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
                await self._publisher.publish(record.tenant, headers, sub.payload, sub.content_type)
        except Exception:
            # Not durable: take the record back so the same task id can be sent again.
            if task_mode or sub.task_id is not None:
                await self._tasks.forget(record.tenant, record.name, task_id)
            raise
        return Accepted(task_id, request_id, due_at)
