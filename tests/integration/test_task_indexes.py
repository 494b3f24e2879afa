"""Every query the task store issues is answered from an index (no collection scan).

The store's real methods run against the real MongoDB-wire server while a
command listener records every filter they send; each recorded shape is then
`explain`ed on the same server. A shape whose plan is a COLLSCAN fails the test.

One shape is accepted although the embedded server's explain says COLLSCAN: a
filter whose first field is an `_id` point key (`{_id: k, status: {$in: ...}}`,
the compare-and-set of every status change). MongoDB answers it from the `_id`
index; the embedded server's executor looks up the first indexable clause (the
`_id` keys) and checks the rest on those documents, but its explain only mirrors
whole-filter index picks. (The same server writes a findAndModify through
`{_id, $and: [query]}`, a scan whatever the indexes: the task store sends none.)
The scale benchmark (bench/task_store_bench.py) shows
those writes cost the same at 1,000 and at 1,000,000 records.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import monitoring

from runtime.settings import Settings
from runtime.store.functions import FunctionStore
from runtime.store.mongo import Mongo
from runtime.store.rates import RateStore, rate_key
from runtime.store.tasks import TaskStore, task_key
from runtime.store.timers import OUTBOX, PARK, RETRY, TimerStore
from runtime.tasks import status as st
from tests.harness import MongoServer

STORE_COLLECTIONS = {"tasks", "task_ids", "timers", "versions", "functions", "rates"}


class Recorder(monitoring.CommandListener):
    """Records (collection, filter, sort) of every read and write the store sends."""

    def __init__(self) -> None:
        self.shapes: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []
        self.on = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        cmd, name = event.command, event.command_name
        coll = cmd.get(name)
        if name == "find":
            self.shapes.append((name, coll, dict(cmd.get("filter", {})), cmd.get("sort")))
        elif name == "findAndModify":
            self.shapes.append((name, coll, dict(cmd.get("query", {})), cmd.get("sort")))
        elif name == "update":
            for update in cmd.get("updates", []):
                self.shapes.append((name, coll, dict(update["q"]), None))
        elif name == "delete":
            for delete in cmd.get("deletes", []):
                self.shapes.append((name, coll, dict(delete["q"]), None))
        elif name in ("count", "distinct", "aggregate"):
            first = cmd.get("query", cmd.get("pipeline", [{}])[0])
            self.shapes.append((name, coll, dict(first), None))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


RECORDER = Recorder()
monitoring.register(RECORDER)


@pytest.fixture
async def mongo_store(mongo: MongoServer) -> AsyncIterator[Mongo]:
    settings = Settings(mongo_url=mongo.url, mongo_db="idx" + secrets.token_hex(5))
    store = Mongo(settings)
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(settings.mongo_db)
    await store.close()


@pytest.fixture
def recording() -> Iterator[Recorder]:
    RECORDER.shapes.clear()
    RECORDER.on = True
    yield RECORDER
    RECORDER.on = False


def _plan_stages(plan: Any) -> Iterator[str]:
    if isinstance(plan, dict):
        if "stage" in plan:
            yield str(plan["stage"])
        for value in plan.values():
            yield from _plan_stages(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from _plan_stages(value)


async def _scans(mongo: Mongo, coll: str, filter_: dict[str, Any], sort: Any) -> bool:
    """Whether the server plans a collection scan for this filter (and sort)."""
    find: dict[str, Any] = {"find": coll, "filter": filter_}
    if sort:
        find["sort"] = sort
    reply = await mongo.db.command("explain", find, verbosity="queryPlanner")
    return "COLLSCAN" in set(_plan_stages(reply["queryPlanner"]["winningPlan"]))


def _id_point_first(filter_: dict[str, Any]) -> bool:
    """`_id` first, as one key or a `$in` of keys: looked up by the `_id` index."""
    if not filter_ or next(iter(filter_)) != "_id":
        return False
    key = filter_["_id"]
    if isinstance(key, dict):
        return set(key) == {"$in"} and all(not isinstance(k, dict) for k in key["$in"])
    return True


async def _run_every_query(mongo: Mongo) -> None:
    """Every method of the stores that the API and the schedulers call."""
    tasks = TaskStore(mongo, retention_s=3600)
    timers = TimerStore(mongo)
    functions = FunctionStore(mongo)
    await tasks.ensure_indexes()
    await timers.ensure_indexes()
    tenant = "tn" + secrets.token_hex(4)
    from runtime.models import FunctionConfig

    config = FunctionConfig.model_validate({"handler": "main.handler"})
    for name in ("resize", "notify"):
        await functions.put(tenant, name, config, version="v1", sha256="0" * 64, pickle=None,
                            bundle_size=1, manifest={})
    await functions.get(tenant, "resize")
    await functions.list(tenant)
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    for i in range(30):
        await tasks.create(
            tenant=tenant, function=("resize", "notify")[i % 2], task_id=f"job-{i:03d}",
            request_id=f"r{i}", payload=b"{}", content_type="application/json",
            created_at=t0 + timedelta(seconds=i * 10), due_at=None,
        )
    await tasks.claim_id(tenant, "notify", "no-record-1", t0)
    with pytest.raises(Exception, match="already exists"):  # the duplicate's status read
        await tasks.create(
            tenant=tenant, function="resize", task_id="job-000", request_id="r", payload=b"",
            content_type=None, created_at=t0, due_at=None,
        )
    key = task_key(tenant, "resize", "job-000")
    # GET (with and without ?function=), logs and the API's re-reads
    assert (await tasks.find(tenant, "job-000")) is not None
    assert (await tasks.find(tenant, "job-000", "resize")) is not None
    await tasks.get(key)
    # the hot path: batched status read, batched transitions with their outcome
    await tasks.status(key)
    await tasks.advance(key, st.RUNNING, when=st.WAITING, earlier=[(st.PROCESSED, datetime.now(UTC))])
    await tasks.advance(key, st.SUCCEEDED, when=frozenset({st.RUNNING}), fields={"result": b"1"})
    await tasks.set_fields(key, {"destination": {"status": "none"}})
    # stop (queued, then running) and the scheduler's answers to it
    key2 = task_key(tenant, "resize", "job-002")
    assert await tasks.transition(key2, st.STOPPED, when=st.WAITING) is not None
    await tasks.overrule_stop(key2, st.SUCCEEDED, fields={}, inc=None, earlier=[])
    key4 = task_key(tenant, "resize", "job-004")
    await tasks.transition(key4, st.STOPPING, when=frozenset({st.PROCESSED, st.RUNNING}))
    # retry: redrive and its undo when the broker refuses
    failed = await tasks.transition(key4, st.FAILED, when=None)
    assert failed is not None
    await tasks.transition(key4, st.ENQUEUED, when=st.REDRIVABLE)
    await tasks.undo_redrive(failed)
    await tasks.forget(tenant, "resize", "job-006")
    # list with each filter and every combination of them, with and without a cursor
    filters: dict[str, Any] = {
        "function": "resize", "status": st.ENQUEUED, "since": t0 + timedelta(seconds=30),
        "until": t0 + timedelta(seconds=250), "prefix": "job-01",
    }
    await tasks.transition(task_key(tenant, "resize", "job-014"), st.FAILED, when=None)
    await tasks.transition(task_key(tenant, "resize", "job-016"), st.FAILED, when=None)
    for status in (st.ENQUEUED, st.FAILED):
        filters["status"] = status
        for n in range(len(filters) + 1):
            for combo in itertools.combinations(filters, n):
                page = await tasks.list(tenant, limit=2, **{k: filters[k] for k in combo})
                if page:
                    cursor = (page[-1]["created_at"], page[-1]["_id"])
                    await tasks.list(tenant, limit=2, cursor=cursor, **{k: filters[k] for k in combo})
    # timers: delays, retry backoff, parked tasks of a paused function
    for i, kind in enumerate((RETRY, PARK)):
        await timers.schedule(
            f"{key}#{i}", datetime.now(UTC) - timedelta(seconds=1), kind=kind, tenant=tenant,
            function="resize", headers={}, body=b"{}", content_type=None,
        )
    # the outbox: a destination record held, put back after a failed attempt, then done
    await timers.hold(f"{key}#outbox.1", datetime.now(UTC) - timedelta(seconds=2), tenant=tenant,
                      function="resize", delivery={"attempts": 1, "body": b"{}"})
    claimed = await timers.claim_due(10, 30)
    assert claimed, "due timers are claimed"
    (held,) = [doc for doc in claimed if doc["kind"] == OUTBOX]
    assert await timers.put_back(held, datetime.now(UTC) - timedelta(seconds=1), {"delivery.attempts": 2})
    (held,) = [doc for doc in await timers.claim_due(10, 30) if doc["kind"] == OUTBOX]
    assert held["delivery"]["attempts"] == 2
    await timers.done(held)
    await timers.done(next(doc for doc in claimed if doc["kind"] != OUTBOX))
    await timers.fire_now(f"{key}#1")
    await timers.release_parked(tenant, "resize")
    await timers.cancel(f"{key}#1")
    # delete a function's queued tasks in bulk; a deleted function's tasks become Invalid
    assert await tasks.delete_function_tasks(tenant, "notify", frozenset({st.ENQUEUED})) > 0
    assert await tasks.mark_function_tasks(tenant, "resize", st.WAITING, st.INVALID) > 0
    # the schedulers' expiry sweep
    await tasks.delete_expired(datetime.now(UTC) + timedelta(hours=2))
    # max_rate buckets: created, compare-and-set with what was seen, read again after a
    # lost race, and a refusal
    rates, bucket, now = RateStore(mongo), rate_key(tenant, "resize"), 1_000_000.0
    grant = await rates.take(bucket, 5.0, 2, now, None)
    grant = await rates.take(bucket, 5.0, 2, now, grant.tat)
    assert (await rates.take(bucket, 5.0, 2, now + 1, grant.tat - 0.5)).tokens == 2
    assert (await rates.take(bucket, 0.01, 1, now + 1, None)).tokens == 0


async def test_every_store_query_is_answered_from_an_index(
    mongo_store: Mongo, recording: Recorder
) -> None:
    await _run_every_query(mongo_store)
    recording.on = False
    shapes = [s for s in recording.shapes if s[1] in STORE_COLLECTIONS]
    seen = {(name, coll) for name, coll, _, _ in shapes}
    # the workload reached every kind of query the store sends
    for expected in [("find", "tasks"), ("update", "tasks"), ("delete", "tasks"), ("find", "timers"),
                     ("update", "timers"), ("delete", "timers"), ("delete", "task_ids"),
                     ("find", "versions"), ("find", "rates"), ("update", "rates")]:
        assert expected in seen, f"no {expected[0]} on {expected[1]} was issued"
    # The embedded server writes a findAndModify through `{_id, $and: [query]}`, and
    # a top-level `$and` reads every document: task writes are updates by `_id`.
    assert ("findAndModify", "tasks") not in seen
    scans = []
    for name, coll, filter_, sort in shapes:
        if await _scans(mongo_store, coll, filter_, sort) and not _id_point_first(filter_):
            scans.append(f"{name} {coll} {filter_} sort={sort}")
    assert not scans, "collection scans:\n" + "\n".join(scans)


async def test_the_check_sees_a_collection_scan(mongo_store: Mongo) -> None:
    """The explain check is not vacuous: filters no index serves are reported."""
    await TaskStore(mongo_store, retention_s=3600).ensure_indexes()
    assert await _scans(mongo_store, "tasks", {"status": "Enqueued"}, None)
    # the shape GET /v1/tasks/{id} used to send: an `_id` prefix range
    assert await _scans(mongo_store, "tasks", {"_id": {"$gte": "t/a/", "$lt": "t/a/\uffff"}}, None)
    # a top-level $or (the timers' lease test of earlier versions)
    assert await _scans(mongo_store, "timers", {"due_at": {"$lte": datetime.now(UTC)},
                                                "$or": [{"lease_until": None}]}, None)
    windowed = {"tenant": "t", "created_at": {"$gte": datetime.now(UTC)}}
    assert not await _scans(mongo_store, "tasks", windowed, {"created_at": -1})


async def test_list_pages_across_time_windows(mongo_store: Mongo) -> None:
    """The list reads the index in growing time windows: tasks minutes, hours and weeks
    apart come back newest first, once each, with every filter and cursor."""
    tasks = TaskStore(mongo_store, retention_s=90 * 86400)
    await tasks.ensure_indexes()
    tenant, now = "tw" + secrets.token_hex(4), datetime.now(UTC)
    ages = [0.5, 1, 3, 40, 300, 7200, 7200, 86400 * 3, 86400 * 45, 86400 * 60]
    for i, age in enumerate(ages):
        await tasks.create(
            tenant=tenant, function=("a", "b")[i % 2], task_id=f"w-{i}", request_id="r",
            payload=b"", content_type=None, created_at=now - timedelta(seconds=age), due_at=None,
        )
    order = [f"w-{i}" for i in range(len(ages))]  # newest first (w-5 and w-6 tie: _id desc)
    order[5], order[6] = order[6], order[5]
    listed = [d["task_id"] for d in await tasks.list(tenant, limit=500)]
    assert listed == order
    for limit in (1, 2, 3):
        pages: list[str] = []
        cursor = None
        while True:
            page = await tasks.list(tenant, limit=limit, cursor=cursor)
            pages += [d["task_id"] for d in page]
            if len(page) < limit:
                break
            cursor = (page[-1]["created_at"], page[-1]["_id"])
        assert pages == order, limit
    only_a = [d["task_id"] for d in await tasks.list(tenant, function="a", limit=500)]
    assert only_a == [t for t in order if int(t.split("-")[1]) % 2 == 0]
    week = [d["task_id"] for d in await tasks.list(tenant, since=now - timedelta(days=7), limit=500)]
    assert week == order[:8]
    older = [d["task_id"] for d in await tasks.list(tenant, until=now - timedelta(days=1), limit=500)]
    assert older == order[7:]
    await tasks.transition(task_key(tenant, "b", "w-9"), st.FAILED, when=None)
    await tasks.transition(task_key(tenant, "a", "w-2"), st.FAILED, when=None)
    await tasks.transition(task_key(tenant, "b", "w-3"), st.STOPPED, when=None)
    failed = await tasks.list(tenant, status=st.FAILED, limit=5)
    assert [d["task_id"] for d in failed] == ["w-2", "w-9"] and "payload" not in failed[0]
    assert [d["task_id"] for d in await tasks.list(tenant, status=st.FAILED, function="b")] == ["w-9"]
    assert [d["task_id"] for d in await tasks.list(tenant, status=st.STOPPED, limit=5)] == ["w-3"]
    after_first = (failed[0]["created_at"], failed[0]["_id"])
    next_page = await tasks.list(tenant, status=st.FAILED, limit=1, cursor=after_first)
    assert [d["task_id"] for d in next_page] == ["w-9"]
    assert [d["task_id"] for d in await tasks.list(tenant, prefix="w-8", limit=5)] == ["w-8"]


async def test_get_by_id_finds_the_newest_of_every_function(mongo_store: Mongo) -> None:
    """GET by id without ?function= looks in every function the tenant ever had,
    deleted ones included (their versions stay), and answers the newest task."""
    from runtime.models import FunctionConfig

    tasks, functions = TaskStore(mongo_store, retention_s=3600), FunctionStore(mongo_store)
    tenant, now = "tg" + secrets.token_hex(4), datetime.now(UTC)
    config = FunctionConfig.model_validate({"handler": "main.handler"})
    for i, name in enumerate(("old", "new")):
        await functions.put(tenant, name, config, version="v1", sha256="0" * 64, pickle=None,
                            bundle_size=1, manifest={})
        await tasks.create(tenant=tenant, function=name, task_id="same", request_id="r",
                           payload=b"", content_type=None,
                           created_at=now - timedelta(seconds=10 - i), due_at=None)
    assert (await functions.delete(tenant, "new")) is True
    found = await tasks.find(tenant, "same")
    assert found is not None and found["function"] == "new"
    assert (await tasks.find(tenant, "same", "old") or {}).get("function") == "old"
    assert await tasks.find(tenant, "other") is None
    assert await tasks.find("no-such-tenant", "same") is None
