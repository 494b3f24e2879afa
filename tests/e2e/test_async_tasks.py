"""The async contract end to end (DESIGN.md sections 3 and 4).

Event invocations, X-Task-Id, X-Delay-Seconds, task statuses and history, the
task API (get, list, logs, stop, retry), pause/resume, batch delete, function
deletion, task records' TTL, task_mode false, and delayed tasks surviving
restarts of every component. Real gateway and scheduler processes, RabbitMQ,
a MongoDB-wire server and Docker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    Webhook,
    assert_error,
    container_gone,
    deploy,
    invoke,
    list_all_tasks,
    submit_event,
    wait_port,
    wait_task,
)

HISTORY_OK = ["Enqueued", "Processed", "Running", "Succeeded"]


def at(value: str) -> datetime:
    """A time as the API shows it (ISO 8601, `Z`)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def statuses(task: dict[str, Any]) -> list[str]:
    return [h["status"] for h in task["history"]]


def history_time(task: dict[str, Any], status: str) -> datetime:
    times = [at(h["at"]) for h in task["history"] if h["status"] == status]
    assert times, f"no {status} in the history: {task['history']}"
    return times[0]


def accepted(r: httpx.Response, task_id: str | None = None) -> str:
    """Checks a 202 answer of an Event invocation; returns its task id."""
    assert r.status_code == 202, f"{r.status_code}: {r.text[:1000]}"
    tid = str(r.headers.get("x-task-id") or "")
    assert tid, r.headers
    if task_id is not None:
        assert tid == task_id
    assert r.headers.get("x-request-id"), r.headers
    assert r.headers.get("location") == f"/v1/tasks/{tid}", r.headers
    body = r.json()
    assert body["task_id"] == tid and body["request_id"] == r.headers["x-request-id"], body
    assert body["status"] == "Enqueued", body
    return tid


def deployed(client: httpx.Client, name: str, bundle: str, config: dict[str, Any] | None = None) -> None:
    r = deploy(client, name, bundle, config)
    assert r.status_code == 201, r.text


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.status_code}: {r.text[:1000]}"
    return r.json()


# -- Event invocations -------------------------------------------------------------


def test_event_invocation_202_and_history(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    r = submit_event(tenant, "hello", {"name": "Ada"})
    tid = accepted(r)
    assert str(uuid.UUID(tid)) == tid  # generated: a uuid
    request_id = r.headers["x-request-id"]
    # The alias header of the invocation type.
    r2 = tenant.post("/v1/functions/hello/invocations", json={"name": "Bo"},
                     headers={"x-fc-invocation-type": "Async"})
    tid2 = accepted(r2)
    assert tid2 != tid

    task = wait_task(tenant, tid)
    assert task["status"] == "Succeeded", task
    assert ok(tenant.get(r.headers["location"])) == task
    assert task["task_id"] == tid and task["request_id"] == request_id, task
    assert task["function"] == "hello" and task["version"], task
    assert statuses(task) == HISTORY_OK, task["history"]
    times = [at(h["at"]) for h in task["history"]]
    assert times == sorted(times), task["history"]
    assert at(task["created_at"]) == times[0]
    timings = task["timings"]
    for key in ("queue_ms", "run_ms"):
        assert isinstance(timings.get(key), int | float) and timings[key] >= 0, timings
    assert timings.get("start") in ("cold", "warm", "stem"), timings
    assert isinstance(timings.get("destination_ms"), int | float), timings
    assert task["destination"] == {"status": "none"}, task  # none configured
    assert task["result"] == {"message": "hello, Ada"}, task
    assert task["attempts"] == 1, task
    assert task["payload"] == {"name": "Ada"}, task
    assert "error" not in task, task

    task2 = wait_task(tenant, tid2)
    assert task2["status"] == "Succeeded" and task2["result"] == {"message": "hello, Bo"}, task2
    assert statuses(task2) == HISTORY_OK


# -- X-Task-Id ---------------------------------------------------------------------


def test_caller_task_id_and_duplicates(tenant: httpx.Client) -> None:
    deployed(tenant, "first", "hello")
    deployed(tenant, "second", "hello")
    tid = "order-42:a.b_c-" + uuid.uuid4().hex[:6]
    accepted(submit_event(tenant, "first", {"name": "one"}, {"X-Task-Id": tid}), tid)
    # A duplicate while the first may still be queued or running: 409 naming the task.
    err = assert_error(submit_event(tenant, "first", {}, {"X-Task-Id": tid}), 409, "conflict")
    assert tid in err["message"], err
    done = wait_task(tenant, tid, function="first")
    assert done["status"] == "Succeeded", done
    err = assert_error(submit_event(tenant, "first", {}, {"X-Task-Id": tid}), 409, "conflict")
    assert tid in err["message"] and "Succeeded" in err["message"], err
    # Still one task, the first one.
    assert len(list_all_tasks(tenant, function="first")) == 1

    # The same id on another function is another task.
    accepted(submit_event(tenant, "second", {"name": "two"}, {"X-Task-Id": tid}), tid)
    other = wait_task(tenant, tid, function="second")
    assert other["function"] == "second" and other["result"] == {"message": "hello, two"}, other
    first = ok(tenant.get(f"/v1/tasks/{tid}", params={"function": "first"}))
    assert first["function"] == "first" and first["result"] == {"message": "hello, one"}, first

    # 128 characters is the longest id.
    longest = "x" * 127 + "1"
    accepted(submit_event(tenant, "first", {}, {"X-Task-Id": longest}), longest)

    for bad in ("", "y" * 129, "a b", "é".encode(), "a/b", "a\tb"):
        r = submit_event(tenant, "first", {}, {"X-Task-Id": bad})
        err = assert_error(r, 400, field="X-Task-Id")
        assert "X-Task-Id" in err["message"], err
    assert len(list_all_tasks(tenant, function="first")) == 2


def test_duplicate_task_id_without_task_mode(tenant: httpx.Client) -> None:
    deployed(tenant, "quiet", "hello", {"async": {"task_mode": False}})
    tid = "quiet-" + uuid.uuid4().hex[:8]
    accepted(submit_event(tenant, "quiet", {}, {"X-Task-Id": tid}), tid)
    assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")
    err = assert_error(submit_event(tenant, "quiet", {}, {"X-Task-Id": tid}), 409, "conflict")
    assert tid in err["message"], err
    assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")
    assert list_all_tasks(tenant, function="quiet") == []


def test_tasks_belong_to_their_tenant(platform: Platform, tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    tid = "mine-" + uuid.uuid4().hex[:8]
    accepted(submit_event(tenant, "hello", {}, {"X-Task-Id": tid}), tid)
    assert wait_task(tenant, tid)["status"] == "Succeeded"
    with platform.new_tenant() as other:
        for method, path in (("GET", f"/v1/tasks/{tid}"), ("GET", f"/v1/tasks/{tid}/logs"),
                             ("POST", f"/v1/tasks/{tid}/stop"), ("POST", f"/v1/tasks/{tid}/retry")):
            assert_error(other.request(method, path), 404, "not_found")
        assert ok(other.get("/v1/tasks"))["tasks"] == []
        assert ok(other.get("/v1/tasks", params={"prefix": "mine-"}))["tasks"] == []
        # The same id and function name in another tenant is another task.
        deployed(other, "hello", "hello")
        accepted(submit_event(other, "hello", {"name": "other"}, {"X-Task-Id": tid}), tid)
        theirs = wait_task(other, tid)
        assert theirs["result"] == {"message": "hello, other"}, theirs
    assert ok(tenant.get(f"/v1/tasks/{tid}"))["result"] == {"message": "hello, world"}
    assert [t["task_id"] for t in list_all_tasks(tenant)] == [tid]


def test_duplicate_task_id_across_gateways(tenant: httpx.Client, second_gateway: str) -> None:
    deployed(tenant, "hello", "hello")
    other = httpx.Client(base_url=second_gateway, headers=dict(tenant.headers), timeout=60)
    try:
        for round_ in range(5):
            tid = f"twice-{round_}-" + uuid.uuid4().hex[:6]
            barrier = threading.Barrier(2)
            answers: list[httpx.Response] = []

            def send(client: httpx.Client, tid: str = tid, barrier: threading.Barrier = barrier,
                     answers: list[httpx.Response] = answers) -> None:
                barrier.wait()
                answers.append(submit_event(client, "hello", {"name": tid}, {"X-Task-Id": tid}))

            threads = [threading.Thread(target=send, args=(c,)) for c in (tenant, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = sorted(r.status_code for r in answers)
            assert codes == [202, 409], [(r.status_code, r.text[:300]) for r in answers]
            conflict = next(r for r in answers if r.status_code == 409)
            assert tid in assert_error(conflict, 409, "conflict")["message"]
            task = wait_task(tenant, tid)
            assert task["status"] == "Succeeded" and task["attempts"] == 1, task
            assert task["result"] == {"message": f"hello, {tid}"}
        # Sequentially, through each gateway in turn.
        tid = "seq-" + uuid.uuid4().hex[:6]
        accepted(submit_event(other, "hello", {}, {"X-Task-Id": tid}), tid)
        assert_error(submit_event(tenant, "hello", {}, {"X-Task-Id": tid}), 409, "conflict")
        assert_error(submit_event(other, "hello", {}, {"X-Task-Id": tid}), 409, "conflict")
    finally:
        other.close()


# -- X-Delay-Seconds -----------------------------------------------------------------


def test_delay_seconds(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    before = datetime.now(UTC)
    tid = accepted(submit_event(tenant, "hello", {"name": "later"}, {"X-Delay-Seconds": "2"}))
    task = ok(tenant.get(f"/v1/tasks/{tid}"))
    assert task["status"] == "Enqueued" and statuses(task) == ["Enqueued"], task
    created, due = at(task["created_at"]), at(task["due_at"])
    assert abs((due - created).total_seconds() - 2) < 0.01, task
    assert abs((due - (before + timedelta(seconds=2))).total_seconds()) < 1.0, (before, task)
    time.sleep(1.0)
    task = ok(tenant.get(f"/v1/tasks/{tid}"))
    assert task["status"] == "Enqueued", task
    done = wait_task(tenant, tid, timeout=20)
    assert done["status"] == "Succeeded", done
    assert statuses(done) == HISTORY_OK, done["history"]
    waited = (history_time(done, "Running") - created).total_seconds()
    assert waited >= 2.0, done["history"]
    assert done["result"] == {"message": "hello, later"}


def test_bad_delay_and_sync_only_headers(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    for bad in ("-1", "86401", "abc", "", "nan", "inf"):
        err = assert_error(submit_event(tenant, "hello", {}, {"X-Delay-Seconds": bad}), 400,
                           field="X-Delay-Seconds")
        assert "X-Delay-Seconds" in err["message"], err
    assert_error(invoke(tenant, "hello", {}, {"X-Task-Id": "sync-1"}), 400, field="X-Task-Id")
    assert_error(invoke(tenant, "hello", {}, {"X-Delay-Seconds": "1"}), 400, field="X-Delay-Seconds")
    assert_error(invoke(tenant, "hello", {}, {"X-Invocation-Type": "RequestResponse",
                                               "X-Task-Id": "sync-2"}), 400, field="X-Task-Id")
    assert_error(submit_event(tenant, "no-such-function", {}, {"X-Task-Id": "nf-1"}), 404, "not_found")
    assert_error(tenant.get("/v1/tasks/nf-1"), 404, "not_found")
    # None of these made a task; the sync invoke itself still works.
    assert list_all_tasks(tenant, function="hello") == []
    r = invoke(tenant, "hello", {"name": "s"})
    assert r.status_code == 200 and r.json() == {"message": "hello, s"}, r.text


def test_async_payload_over_1mb(tenant: httpx.Client) -> None:
    deployed(tenant, "noop", "noop")
    limit = 1 << 20
    r = submit_event(tenant, "noop", content=b"x" * (limit + 1),
                     headers={"X-Task-Id": "too-big", "Content-Type": "application/octet-stream"})
    assert_error(r, 413, "payload_too_large")
    assert list_all_tasks(tenant, function="noop") == []
    assert_error(tenant.get("/v1/tasks/too-big"), 404)
    # Exactly the limit is accepted, and the refused id is still free.
    tid = accepted(submit_event(tenant, "noop", content=b"x" * limit,
                                headers={"X-Task-Id": "too-big",
                                         "Content-Type": "application/octet-stream"}), "too-big")
    assert wait_task(tenant, tid)["status"] == "Succeeded"


# -- the task API ----------------------------------------------------------------------


def test_list_tasks_filters_and_paging(tenant: httpx.Client) -> None:
    # Tasks that never run (delayed an hour; some of them stopped): the listing, not
    # the execution, is under test here.
    deployed(tenant, "good", "hello")
    deployed(tenant, "bad", "hello")
    plan = [("good", f"lst-a-{i}") for i in range(5)] + [("bad", f"lst-b-{i}") for i in range(3)]
    plan += [("good", "other-0"), ("bad", "other-1")]

    def send(item: tuple[str, str]) -> str:
        function, tid = item
        return accepted(submit_event(tenant, function, {}, {"X-Task-Id": tid,
                                                            "X-Delay-Seconds": "3600"}), tid)

    # In parallel: several tasks share a created_at millisecond, which paging must handle.
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(send, plan))
    for function, tid in plan:
        if function == "bad":
            assert ok(tenant.post(f"/v1/tasks/{tid}/stop"))["status"] == "Stopped"

    everything = ok(tenant.get("/v1/tasks", params={"limit": 500}))
    assert everything["next_cursor"] is None
    listed = everything["tasks"]
    assert sorted(t["task_id"] for t in listed) == sorted(ids)
    created = [at(t["created_at"]) for t in listed]
    assert created == sorted(created, reverse=True), "not newest first"
    for t in listed:
        assert {"task_id", "request_id", "function", "status", "attempts", "created_at",
                "history", "timings"} <= set(t), t

    def names(**params: Any) -> list[str]:
        body = ok(tenant.get("/v1/tasks", params={"limit": 500, **params}))
        return [t["task_id"] for t in body["tasks"]]

    order = [t["task_id"] for t in listed]

    def expect(pred: Any) -> list[str]:
        return [t["task_id"] for t in listed if pred(t)]

    assert names(function="good") == expect(lambda t: t["function"] == "good")
    assert len(names(function="good")) == 6
    assert names(status="Stopped") == expect(lambda t: t["function"] == "bad")
    assert names(status="Enqueued") == expect(lambda t: t["function"] == "good")
    assert names(status="Enqueued", function="bad") == []
    assert names(status="Running") == []
    assert names(prefix="lst-a-") == expect(lambda t: t["task_id"].startswith("lst-a-"))
    assert len(names(prefix="lst-")) == 8
    assert names(prefix="lst-a-", function="bad") == []
    assert names(prefix="lst.") == []  # the prefix is literal text, not a pattern
    assert names(function="nothing-here") == []

    # since (inclusive) / until (exclusive), on the tasks' own created_at times.
    times = sorted({at(t["created_at"]) for t in listed})
    lo, hi = times[2], times[-2]
    assert names(since=iso(lo)) == expect(lambda t: at(t["created_at"]) >= lo)
    assert names(until=iso(hi)) == expect(lambda t: at(t["created_at"]) < hi)
    assert names(since=iso(lo), until=iso(hi)) == expect(lambda t: lo <= at(t["created_at"]) < hi)
    combined = expect(lambda t: lo <= at(t["created_at"]) < hi and t["function"] == "good"
                      and t["status"] == "Enqueued" and t["task_id"].startswith("lst-"))
    assert names(since=iso(lo), until=iso(hi), function="good", status="Enqueued",
                 prefix="lst-") == combined
    future = iso(datetime.now(UTC) + timedelta(hours=1))
    assert names(since=future) == []
    assert names(until=future) == order
    assert names(since=str(lo.timestamp())) == expect(lambda t: at(t["created_at"]) >= lo)

    # Paging walks every task exactly once, newest first.
    for limit in (1, 3, 4, 10):
        pages: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            body = ok(tenant.get("/v1/tasks", params=params))
            assert len(body["tasks"]) <= limit
            pages.extend(t["task_id"] for t in body["tasks"])
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
            assert len(pages) <= len(order), pages
        assert pages == order, (limit, pages)
    walked = list_all_tasks(tenant, limit=2, function="good")
    assert [t["task_id"] for t in walked] == expect(lambda t: t["function"] == "good")

    for params, field in (
        ({"status": "Bogus"}, "status"), ({"status": "succeeded"}, "status"),
        ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "abc"}, "limit"),
        ({"since": "yesterday"}, "since"), ({"until": "2024-13-45"}, "until"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ):
        assert_error(tenant.get("/v1/tasks", params=params), 400, field=field)
    # The queued ones never run.
    assert ok(tenant.delete("/v1/functions/good/tasks", params={"status": "Enqueued"}))["deleted"] == 6


def test_task_logs(tenant: httpx.Client) -> None:
    deployed(tenant, "prints-logs", "prints-logs")
    tid = accepted(submit_event(tenant, "prints-logs", {"lines": 4}))
    task = wait_task(tenant, tid)
    assert task["status"] == "Succeeded" and task["result"] == {"stdout_lines": 4, "stderr_lines": 3}
    r = tenant.get(f"/v1/tasks/{tid}/logs")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    for i in range(1, 5):
        assert f"stdout line {i} of 4 (request {task['request_id']})" in r.text, r.text
    for i in range(1, 4):
        assert f"stderr line {i} of 3" in r.text, r.text
    assert "stdout line 5" not in r.text
    assert_error(tenant.get("/v1/tasks/no-such-task/logs"), 404, "not_found")


def test_stop_queued_task(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    tid = accepted(submit_event(tenant, "hello", {}, {"X-Delay-Seconds": "2"}))
    r = tenant.post(f"/v1/tasks/{tid}/stop")
    body = ok(r)
    assert body["status"] == "Stopped" and statuses(body) == ["Enqueued", "Stopped"], body
    # Stopping it again is harmless; it stays Stopped.
    assert ok(tenant.post(f"/v1/tasks/{tid}/stop"))["status"] == "Stopped"
    time.sleep(3.0)  # past its due time
    task = ok(tenant.get(f"/v1/tasks/{tid}"))
    assert task["status"] == "Stopped", task
    assert "Running" not in statuses(task) and "Processed" not in statuses(task), task
    assert task["attempts"] == 0 and "result" not in task, task
    # A Stopped task can be run again on request.
    assert ok(tenant.post(f"/v1/tasks/{tid}/retry"), 202)["status"] == "Enqueued"
    again = wait_task(tenant, tid, until=lambda t: t["attempts"] == 1)
    assert again["status"] == "Succeeded" and again["result"] == {"message": "hello, world"}, again
    assert statuses(again) == ["Enqueued", "Stopped", *HISTORY_OK], again


def test_stop_running_task(tenant: httpx.Client) -> None:
    deployed(tenant, "sleep", "sleep", {"timeout_s": 60})
    started = time.monotonic()
    tid = accepted(submit_event(tenant, "sleep", {"seconds": 30}))
    running = wait_task(tenant, tid, {"Running"}, timeout=30)
    assert running["container"], running
    r = tenant.post(f"/v1/tasks/{tid}/stop")
    body = ok(r, 202)
    assert body["status"] == "Stopping" and statuses(body)[-1] == "Stopping", body
    stopped = wait_task(tenant, tid, timeout=8)
    assert stopped["status"] == "Stopped", stopped
    assert statuses(stopped) == ["Enqueued", "Processed", "Running", "Stopping", "Stopped"], stopped
    assert time.monotonic() - started < 25, "the task was not cut short"
    assert "result" not in stopped, stopped
    assert container_gone(running["container"], timeout=10), running["container"]

    deployed(tenant, "hello", "hello")
    done = wait_task(tenant, accepted(submit_event(tenant, "hello", {})))
    assert done["status"] == "Succeeded"
    err = assert_error(tenant.post(f"/v1/tasks/{done['task_id']}/stop"), 409, "conflict")
    assert "Succeeded" in err["message"], err
    assert_error(tenant.post("/v1/tasks/no-such-task/stop"), 404, "not_found")


def task_doc(platform: Platform, tenant: httpx.Client, task_id: str) -> dict[str, Any]:
    """A task's stored document, read from the platform's database."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(platform.env["FNHOST_MONGO_URL"], tz_aware=True)
    try:
        tasks = client[platform.env["FNHOST_MONGO_DB"]]["tasks"]
        doc = tasks.find_one({"tenant": tenant.tenant_id, "task_id": task_id})  # type: ignore[attr-defined]
        assert doc is not None, task_id
        return doc
    finally:
        client.close()


def test_retry_failed_task(platform: Platform, tenant: httpx.Client) -> None:
    deployed(tenant, "fails", "always-fails", {"async": {"max_retry_attempts": 0}})
    tid = accepted(submit_event(tenant, "fails", {"n": 1}))
    failed = wait_task(tenant, tid)
    assert failed["status"] == "Failed" and failed["attempts"] == 1, failed
    assert statuses(failed) == ["Enqueued", "Processed", "Running", "Failed"], failed
    assert "always fails" in failed["error"]["errorMessage"], failed

    body = ok(tenant.post(f"/v1/tasks/{tid}/retry"), 202)
    assert body["status"] == "Enqueued" and body["task_id"] == tid, body
    again = wait_task(tenant, tid, {"Failed"}, until=lambda t: t["attempts"] == 2)
    assert statuses(again) == ["Enqueued", "Processed", "Running", "Failed"] * 2, again
    assert again["payload"] == {"n": 1}, again
    assert "always fails" in again["error"]["errorMessage"], again
    # Run again from now: kept for the retention period from the retry.
    doc = task_doc(platform, tenant, tid)
    assert doc["expire_at"] - doc["created_at"] == timedelta(days=7), doc
    assert doc["created_at"] > at(failed["created_at"]), (doc, failed)

    deployed(tenant, "hello", "hello")
    done = wait_task(tenant, accepted(submit_event(tenant, "hello", {})))
    assert done["status"] == "Succeeded"
    err = assert_error(tenant.post(f"/v1/tasks/{done['task_id']}/retry"), 409, "conflict")
    assert "Succeeded" in err["message"], err


def test_pause_and_resume(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    body = ok(tenant.post("/v1/functions/hello/pause"))
    assert body["config"]["paused"] is True, body
    ids = [accepted(submit_event(tenant, "hello", {"name": str(i)})) for i in range(3)]
    time.sleep(3.0)
    for tid in ids:
        task = ok(tenant.get(f"/v1/tasks/{tid}"))
        assert task["status"] == "Enqueued" and statuses(task) == ["Enqueued"], task
    body = ok(tenant.post("/v1/functions/hello/resume"))
    assert body["config"]["paused"] is False, body
    deadline = time.monotonic() + 10
    for i, tid in enumerate(ids):
        task = wait_task(tenant, tid, timeout=max(0.5, deadline - time.monotonic()))
        assert task["status"] == "Succeeded" and task["result"] == {"message": f"hello, {i}"}, task
        assert statuses(task) == HISTORY_OK, task


def test_stop_while_paused_is_final_at_once(tenant: httpx.Client) -> None:
    """A paused function's queued task, stopped: its Stopped record goes out now, not
    after a resume; and a resume does not run it."""
    with Webhook() as hook:
        config = {"async": {"on_failure": {"type": "webhook", "url": hook.url}}}
        deployed(tenant, "hello", "hello", config)
        ok(tenant.post("/v1/functions/hello/pause"))
        tid = accepted(submit_event(tenant, "hello", {}))
        time.sleep(1.0)  # taken from the queue and parked
        assert ok(tenant.post(f"/v1/tasks/{tid}/stop"))["status"] == "Stopped"
        (post,) = hook.wait(1, timeout=10, task_id=tid)
        assert post["json"]["requestContext"]["condition"] == "Stopped", post["json"]
        task = wait_task(tenant, tid, until=lambda t: t["destination"] is not None)
        assert task["destination"]["status"] == "delivered", task
        ok(tenant.post("/v1/functions/hello/resume"))
        time.sleep(2.0)
        task = ok(tenant.get(f"/v1/tasks/{tid}"))
        assert task["status"] == "Stopped" and statuses(task) == ["Enqueued", "Stopped"], task
        assert len(hook.wait(1, timeout=0.1, task_id=tid)) == 1


def test_batch_delete_queued_tasks(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    ok(tenant.post("/v1/functions/hello/pause"))
    ids = [accepted(submit_event(tenant, "hello", {})) for _ in range(4)]
    assert_error(tenant.delete("/v1/functions/hello/tasks"), 400, field="status")
    assert_error(tenant.delete("/v1/functions/hello/tasks", params={"status": "Running"}), 400,
                 field="status")
    assert_error(tenant.delete("/v1/functions/nope/tasks", params={"status": "Enqueued"}), 404)
    assert len(list_all_tasks(tenant, function="hello")) == 4
    body = ok(tenant.delete("/v1/functions/hello/tasks", params={"status": "Enqueued"}))
    assert body["deleted"] == 4, body
    for tid in ids:
        assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")
    ok(tenant.post("/v1/functions/hello/resume"))
    # A new task runs; the deleted ones never do.
    fresh = wait_task(tenant, accepted(submit_event(tenant, "hello", {"name": "new"})))
    assert fresh["status"] == "Succeeded", fresh
    time.sleep(1.0)
    assert [t["task_id"] for t in list_all_tasks(tenant, function="hello")] == [fresh["task_id"]]
    for tid in ids:
        assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")


def test_deleting_function_invalidates_queued_tasks(tenant: httpx.Client) -> None:
    deployed(tenant, "held", "hello")
    ok(tenant.post("/v1/functions/held/pause"))
    paused = accepted(submit_event(tenant, "held", {}))
    deployed(tenant, "later", "hello")
    delayed = accepted(submit_event(tenant, "later", {}, {"X-Delay-Seconds": "60"}))
    deployed(tenant, "kept", "hello")
    kept = accepted(submit_event(tenant, "kept", {}, {"X-Delay-Seconds": "60"}))
    time.sleep(0.5)
    for name in ("held", "later"):
        assert tenant.delete(f"/v1/functions/{name}").status_code == 204
    for tid in (paused, delayed):
        task = ok(tenant.get(f"/v1/tasks/{tid}"))
        assert task["status"] == "Invalid", task
        assert statuses(task) == ["Enqueued", "Invalid"], task
    assert ok(tenant.get(f"/v1/tasks/{kept}"))["status"] == "Enqueued"
    invalid = [t["task_id"] for t in list_all_tasks(tenant, status="Invalid")]
    assert sorted(invalid) == sorted([paused, delayed])


def test_ttl_index_and_expire_at(platform: Platform, tenant: httpx.Client) -> None:
    from pymongo import MongoClient

    deployed(tenant, "hello", "hello")
    tid = accepted(submit_event(tenant, "hello", {}))
    wait_task(tenant, tid)
    client: MongoClient[dict[str, Any]] = MongoClient(platform.env["FNHOST_MONGO_URL"], tz_aware=True)
    try:
        tasks = client[platform.env["FNHOST_MONGO_DB"]]["tasks"]
        ttl = [info for info in tasks.index_information().values()
               if [tuple(k) for k in info["key"]] == [("expire_at", 1)]]
        assert len(ttl) == 1 and ttl[0].get("expireAfterSeconds") == 0, tasks.index_information()
        doc = tasks.find_one({"tenant": tenant.tenant_id, "task_id": tid})  # type: ignore[attr-defined]
        assert doc is not None
        assert doc["expire_at"] - doc["created_at"] == timedelta(days=7), doc
    finally:
        client.close()


def test_task_mode_off(tenant: httpx.Client) -> None:
    deployed(tenant, "recorder", "hello")
    deployed(tenant, "quiet", "echo", {"async": {
        "task_mode": False, "on_success": {"type": "function", "name": "recorder"}}})
    tid = accepted(submit_event(tenant, "quiet", {"name": "Zed"}))
    assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")
    deadline = time.monotonic() + 30
    while not (found := list_all_tasks(tenant, function="recorder")):
        assert time.monotonic() < deadline, "the destination function never got a task"
        time.sleep(0.1)
    assert len(found) == 1, found
    task = wait_task(tenant, found[0]["task_id"])
    assert task["status"] == "Succeeded", task
    record = task["payload"]
    assert record["requestContext"]["taskId"] == tid, record
    assert record["requestContext"]["condition"] == "Success", record
    assert record["requestPayload"] == {"name": "Zed"} and record["responsePayload"] == {"name": "Zed"}
    # No record for the quiet function's task, ever.
    assert_error(tenant.get(f"/v1/tasks/{tid}"), 404, "not_found")
    assert list_all_tasks(tenant, function="quiet") == []


# -- restarts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restart_platform(mongo: MongoServer) -> Iterator[Platform]:
    """A platform of its own: its scheduler and gateway are stopped and started again.

    On the shared test vhost: control events carry the cluster id, so no other
    platform there takes its tenants' tasks (and no vhost is made or deleted).
    """
    p = Platform(mongo.url)
    try:
        p.start()
    except Exception:
        print(p.tail())
        p.stop()
        raise
    yield p
    p.stop()


def test_delayed_task_survives_restarts(restart_platform: Platform) -> None:
    p = restart_platform
    client = p.new_tenant()
    try:
        deployed(client, "hello", "hello")
        tid = accepted(submit_event(client, "hello", {"name": "again"},
                                    {"X-Delay-Seconds": "4", "X-Task-Id": "survivor"}), "survivor")
        p.stop_role("scheduler")
        p.stop_role("gateway")
        p.start_role("scheduler")
        gateway = p.start_role("gateway")
        wait_port(p.port, 30, gateway)
        p.wait_ready(60)
        task = wait_task(client, tid, timeout=30)
        assert task["status"] == "Succeeded", (task, p.tail())
        assert statuses(task) == HISTORY_OK, task
        assert (history_time(task, "Running") - at(task["created_at"])).total_seconds() >= 4.0
        assert task["result"] == {"message": "hello, again"}
        assert task["attempts"] == 1
    finally:
        client.close()

