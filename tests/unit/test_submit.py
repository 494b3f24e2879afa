"""runtime/tasks/submit.py `Submitter.submit_many` with stand-ins for the stores and the
broker: answers in order, one write for the records, undoes for what is not durable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from runtime.broker.publisher import InvokePublisher
from runtime.errors import Conflict, Unavailable
from runtime.models import FunctionConfig
from runtime.store.functions import FunctionRecord
from runtime.store.tasks import TaskStore
from runtime.store.timers import TimerStore
from runtime.tasks.submit import Accepted, Submission, Submitter


class Tasks:
    """The task store: ids already taken, writes counted, forgets kept."""

    def __init__(self, taken: set[str] | None = None, fail: BaseException | None = None) -> None:
        self.taken = set(taken or ())
        self.fail = fail
        self.writes: list[list[str]] = []
        self.forgotten: list[str] = []

    def record(self, **task: Any) -> dict[str, Any]:
        return {"_id": task["task_id"], **task}

    async def create_many(self, docs: list[dict[str, Any]]) -> list[BaseException | None]:
        self.writes.append([d["task_id"] for d in docs])
        return [self._insert(d["task_id"]) for d in docs]

    async def claim_ids(self, tenant: str, function: str, task_ids: list[str],
                        created_at: datetime) -> list[BaseException | None]:
        self.writes.append(list(task_ids))
        return [self._insert(t) for t in task_ids]

    def _insert(self, task_id: str) -> BaseException | None:
        if task_id in self.taken:
            return Conflict(f"task {task_id!r} already exists")
        if self.fail is not None:
            return self.fail
        self.taken.add(task_id)
        return None

    async def forget(self, tenant: str, function: str, task_id: str) -> None:
        self.forgotten.append(task_id)
        self.taken.discard(task_id)


class Timers:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.scheduled: list[dict[str, Any]] = []

    async def schedule_many(self, timers: dict[str, dict[str, Any]]) -> None:
        if self.fail:
            raise AutoReconnect("the database went away")
        self.scheduled.append(timers)


class Publisher:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.refuse = refuse or set()
        self.published: list[str] = []

    async def publish(self, tenant: str, headers: dict[str, Any], body: bytes,
                      content_type: str | None, function: str | None = None) -> None:
        if headers["task_id"] in self.refuse:
            raise Unavailable("the message broker did not confirm the task")
        self.published.append(headers["task_id"])


def function(task_mode: bool = True) -> FunctionRecord:
    now = datetime.now(UTC)
    config = FunctionConfig.model_validate({"async": {"task_mode": task_mode}})
    return FunctionRecord(tenant="t1", name="f", config=config, version="v", sha256="s", revision=1,
                          pickle=None, bundle_size=1, created_at=now, updated_at=now)


def submitter(tasks: Tasks, timers: Timers, publisher: Publisher) -> Submitter:
    return Submitter(cast(TaskStore, tasks), cast(TimerStore, timers), cast(InvokePublisher, publisher))


def subs(record: FunctionRecord, *specs: tuple[str | None, float]) -> list[Submission]:
    return [Submission(record=record, payload=b"{}", content_type="application/json",
                       task_id=task_id, delay_s=delay) for task_id, delay in specs]


async def test_answers_in_order_with_one_write() -> None:
    tasks, timers, publisher = Tasks(taken={"old"}), Timers(), Publisher()
    s = submitter(tasks, timers, publisher)
    out = await s.submit_many(subs(function(), ("a", 0), ("old", 0), (None, 0), ("later", 30)))
    a, old, generated, later = out
    assert isinstance(a, Accepted) and a.task_id == "a" and a.due_at is None
    assert isinstance(old, Conflict)
    assert isinstance(generated, Accepted) and generated.task_id not in ("a", "old", "later")
    assert isinstance(later, Accepted) and later.due_at is not None
    assert len(tasks.writes) == 1 and len(tasks.writes[0]) == 4  # one bulk write for all
    assert publisher.published == ["a", generated.task_id]
    assert [list(t) for t in timers.scheduled] == [["t1/later/f"]]
    assert tasks.forgotten == []
    await s.close()


async def test_task_mode_off_claims_only_given_ids() -> None:
    tasks, timers, publisher = Tasks(taken={"used"}), Timers(), Publisher()
    s = submitter(tasks, timers, publisher)
    out = await s.submit_many(subs(function(task_mode=False), (None, 0), ("mine", 0), ("used", 0)))
    assert [type(o) for o in out] == [Accepted, Accepted, Conflict]
    assert tasks.writes == [["mine", "used"]]
    # Without a given id, nothing is written at all.
    tasks.writes.clear()
    out = await s.submit_many(subs(function(task_mode=False), (None, 0), (None, 0)))
    assert all(isinstance(o, Accepted) for o in out) and tasks.writes == []
    await s.close()


async def test_refused_publish_is_that_task_alone_and_taken_back() -> None:
    tasks, timers, publisher = Tasks(), Timers(), Publisher(refuse={"b"})
    s = submitter(tasks, timers, publisher)
    out = await s.submit_many(subs(function(), ("a", 0), ("b", 0), ("c", 0)))
    assert isinstance(out[0], Accepted) and isinstance(out[2], Accepted)
    assert isinstance(out[1], Unavailable) and "broker" in out[1].message
    assert tasks.forgotten == ["b"] and tasks.taken == {"a", "c"}
    await s.close()


async def test_failed_timers_are_503_and_taken_back() -> None:
    tasks, timers, publisher = Tasks(), Timers(fail=True), Publisher()
    s = submitter(tasks, timers, publisher)
    out = await s.submit_many(subs(function(), ("now", 0), ("d1", 5), ("d2", 5)))
    assert isinstance(out[0], Accepted)
    for o in out[1:]:
        assert isinstance(o, Unavailable) and "timer" in o.message, o
    assert sorted(tasks.forgotten) == ["d1", "d2"]
    await s.close()


async def test_failed_record_write_fails_all_and_leaves_nothing() -> None:
    tasks = Tasks(taken={"old"}, fail=AutoReconnect("connection reset"))
    timers, publisher = Timers(), Publisher()
    s = submitter(tasks, timers, publisher)
    with pytest.raises(AutoReconnect):
        await s.submit_many(subs(function(), ("a", 0), ("old", 0), ("b", 0)))
    # The inserts that may have landed are taken back; the other task's id is not touched.
    assert sorted(tasks.forgotten) == ["a", "b"] and tasks.taken == {"old"}
    assert publisher.published == [] and timers.scheduled == []
    await s.close()


async def test_no_server_wrote_nothing() -> None:
    tasks = Tasks(fail=ServerSelectionTimeoutError("no server"))
    s = submitter(tasks, Timers(), Publisher())
    with pytest.raises(ServerSelectionTimeoutError):
        await s.submit_many(subs(function(), ("a", 0)))
    assert tasks.forgotten == []
    await s.close()
