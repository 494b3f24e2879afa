"""Batch submission end to end: POST /v1/functions/{name}/invocations/batch.

Real gateway and scheduler processes, RabbitMQ, a MongoDB-wire server and Docker:
each entry is answered in order, every accepted task runs and delivers its record,
task ids stay unique across batches and single submissions, and the request as a
whole is refused as the single path refuses it (401, 404, 413, 400).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import httpx

from tests.harness import Platform, Webhook, assert_error, deploy, submit_event, wait_task

MAX_TASKS = 100  # FNHOST_BATCH_MAX_TASKS's default
ASYNC_LIMIT = 1 << 20  # FNHOST_ASYNC_PAYLOAD_LIMIT's default


def batch(client: httpx.Client, name: str, tasks: Any, headers: dict[str, str] | None = None,
          content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return client.post(f"/v1/functions/{name}/invocations/batch", content=content,
                           headers={"Content-Type": "application/json", **(headers or {})})
    return client.post(f"/v1/functions/{name}/invocations/batch", json={"tasks": tasks},
                       headers=headers)


def results(r: httpx.Response, count: int) -> list[dict[str, Any]]:
    assert r.status_code == 200, f"{r.status_code}: {r.text[:2000]}"
    found: list[dict[str, Any]] = r.json()["results"]
    assert len(found) == count, found
    return found


def accepted(result: dict[str, Any], task_id: str | None = None) -> str:
    assert result["status"] == 202, result
    assert result["request_id"] and result["task_id"], result
    if task_id is not None:
        assert result["task_id"] == task_id, result
    return str(result["task_id"])


def refused(result: dict[str, Any], status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert result["status"] == status, result
    error: dict[str, Any] = result["error"]
    assert error["code"] == code and error["message"], result
    if field is not None:
        assert error.get("field") == field, result
    return error


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def with_webhook(client: httpx.Client, name: str, webhook: Webhook, task_mode: bool = True,
                 **config: Any) -> None:
    r = deploy(client, name, "hello", {
        "async": {"task_mode": task_mode, "on_success": {"type": "webhook", "url": webhook.url}},
        **config,
    })
    assert r.status_code == 201, r.text


def test_mixed_batch_answered_in_order(tenant: httpx.Client, webhook: Webhook) -> None:
    with_webhook(tenant, "hello", webhook)
    tid = "batch-" + uuid.uuid4().hex[:8]
    r = batch(tenant, "hello", [
        {"payload": {"name": "one"}, "task_id": tid},
        {"payload": {"name": "two"}},
        {"payload": {"name": "again"}, "task_id": tid},
        {"payload": {"name": "bad id"}, "task_id": "no spaces"},
        {"payload": {"name": "bad delay"}, "delay_s": 86401},
        {"payload": {"name": "three"}, "delay_s": 0},
        {"payload": {"name": "unknown"}, "priority": 1},
    ])
    one, two, again, bad_id, bad_delay, three, unknown = results(r, 7)
    accepted(one, tid)
    refused(again, 409, "conflict", "tasks[2].task_id")
    refused(bad_id, 400, "bad_request", "tasks[3].task_id")
    refused(bad_delay, 400, "bad_request", "tasks[4].delay_s")
    refused(unknown, 400, "bad_request", "tasks[6].priority")
    ids = {accepted(one, tid): "one", accepted(two): "two", accepted(three): "three"}
    assert len(ids) == 3
    for task_id, name in ids.items():
        task = wait_task(tenant, task_id)
        assert task["status"] == "Succeeded", task
        assert task["result"] == {"message": f"hello, {name}"}, task
        assert task["payload"] == {"name": name}, task
        assert task["history"][0]["status"] == "Enqueued", task
        assert webhook.wait(1, task_id=task_id)
    # The refused entries touched nothing: no task under the duplicate's payload, none
    # for the others (their ids were never given, or were not valid).
    listed = tenant.get("/v1/tasks", params={"function": "hello", "limit": 50}).json()["tasks"]
    assert sorted(t["task_id"] for t in listed) == sorted(ids), listed

    # A second batch reusing the id: that entry alone is 409, naming the task's status.
    r = batch(tenant, "hello", [{"payload": {"name": "four"}}, {"payload": {}, "task_id": tid}])
    four, reused = results(r, 2)
    error = refused(reused, 409, "conflict")
    assert tid in error["message"] and "Succeeded" in error["message"], error
    assert wait_task(tenant, accepted(four))["result"] == {"message": "hello, four"}
    # The single path and the batch share one set of ids.
    assert_error(submit_event(tenant, "hello", {}, {"X-Task-Id": tid}), 409, "conflict")
    fresh = "single-" + uuid.uuid4().hex[:8]
    assert submit_event(tenant, "hello", {}, {"X-Task-Id": fresh}).status_code == 202
    refused(results(batch(tenant, "hello", [{"task_id": fresh}]), 1)[0], 409, "conflict")


def test_task_mode_off(tenant: httpx.Client, webhook: Webhook) -> None:
    with_webhook(tenant, "quiet", webhook, task_mode=False)
    tid = "off-" + uuid.uuid4().hex[:8]
    tasks: list[dict[str, Any]] = [{"payload": {"name": f"n{i}"}} for i in range(20)]
    tasks += [{"payload": {"name": "mine"}, "task_id": tid}, {"payload": {}, "task_id": tid}]
    found = results(batch(tenant, "quiet", tasks), 22)
    ids = [accepted(r) for r in found[:21]]
    assert ids[-1] == tid
    refused(found[21], 409, "conflict", "tasks[21].task_id")
    posts = webhook.wait(21, timeout=60)
    delivered = {p["json"]["requestContext"]["taskId"] for p in posts}
    assert delivered == set(ids), (delivered, ids)
    assert all(p["json"]["requestContext"]["condition"] == "Success" for p in posts)
    # No record without task mode, but the id stays taken, in a batch as in a single submit.
    assert_error(tenant.get(f"/v1/tasks/{tid}"), 404)
    refused(results(batch(tenant, "quiet", [{"task_id": tid}]), 1)[0], 409, "conflict")
    assert_error(submit_event(tenant, "quiet", {}, {"X-Task-Id": tid}), 409, "conflict")


def test_delay_respected(tenant: httpx.Client) -> None:
    r = deploy(tenant, "hello", "hello")
    assert r.status_code == 201, r.text
    later, now = results(batch(tenant, "hello", [
        {"payload": {"name": "later"}, "delay_s": 3}, {"payload": {"name": "now"}},
    ]), 2)
    late = wait_task(tenant, accepted(later), statuses={"Enqueued"})
    assert late["due_at"] is not None
    assert abs((at(late["due_at"]) - at(late["created_at"])).total_seconds() - 3) < 0.01, late
    done_now = wait_task(tenant, accepted(now))
    assert done_now["status"] == "Succeeded", done_now
    # The immediate task finished while the delayed one still waited.
    assert tenant.get(f"/v1/tasks/{late['task_id']}").json()["status"] == "Enqueued"
    done = wait_task(tenant, late["task_id"], timeout=30)
    assert done["status"] == "Succeeded" and done["result"] == {"message": "hello, later"}, done
    running = next(at(h["at"]) for h in done["history"] if h["status"] == "Running")
    assert (running - at(done["created_at"])).total_seconds() >= 3.0, done["history"]


def test_max_rate_refuses_per_task(tenant: httpx.Client) -> None:
    r = deploy(tenant, "paced", "hello", {"max_rate": 1})
    assert r.status_code == 201, r.text
    found = results(batch(tenant, "paced", [{"payload": {"name": str(i)}} for i in range(6)]), 6)
    ok = [f for f in found if f["status"] == 202]
    throttled = [f for f in found if f["status"] == 429]
    assert ok and throttled and len(ok) + len(throttled) == 6, found
    for f in throttled:
        error = refused(f, 429, "throttled")
        assert isinstance(error["retry_after_s"], int) and error["retry_after_s"] >= 1, error
        assert "max_rate" in error["message"], error
    for f in ok:
        assert wait_task(tenant, f["task_id"])["status"] == "Succeeded"
    listed = tenant.get("/v1/tasks", params={"function": "paced"}).json()["tasks"]
    assert len(listed) == len(ok), listed  # a refused task left nothing


def test_request_refused_as_a_whole(platform: Platform, tenant: httpx.Client) -> None:
    r = deploy(tenant, "hello", "hello")
    assert r.status_code == 201, r.text
    assert_error(batch(tenant, "hello", [{}] * (MAX_TASKS + 1)), 400, "bad_request", "tasks")
    assert results(batch(tenant, "hello", [{"delay_s": 3600}] * MAX_TASKS), MAX_TASKS)
    big = {"payload": "x" * (ASYNC_LIMIT // 2)}
    assert_error(batch(tenant, "hello", [big, big]), 413, "payload_too_large")
    assert_error(batch(tenant, "no-such-function", [{}]), 404, "not_found")
    with httpx.Client(base_url=platform.url, timeout=30) as anonymous:
        assert_error(batch(anonymous, "hello", [{}]), 401, "unauthorized")
    with httpx.Client(base_url=platform.url, timeout=30,
                      headers={"Authorization": "Bearer not-a-key"}) as stranger:
        assert_error(batch(stranger, "hello", [{}]), 401, "unauthorized")
    for raw in (b"not json", b"[]", b"{}", b'{"tasks": []}', b'{"tasks": [{}], "more": 1}'):
        assert_error(batch(tenant, "hello", None, content=raw), 400, "bad_request")
    for header, value in (("X-Invocation-Type", "RequestResponse"), ("X-Invocation-Type", "DryRun"),
                          ("X-Invocation-Type", "nonsense"), ("X-Task-Id", "t-1"),
                          ("X-Delay-Seconds", "1"), ("X-Log-Type", "Tail")):
        assert_error(batch(tenant, "hello", [{}], {header: value}), 400, "bad_request", header)
    found = results(batch(tenant, "hello", [{"payload": 1}], {"X-Invocation-Type": "Event"}), 1)
    accepted(found[0])
    # None of the refused requests made a task: only the 100 delayed ones and the last.
    listed = tenant.get("/v1/tasks", params={"function": "hello", "limit": 200}).json()["tasks"]
    assert len(listed) == MAX_TASKS + 1, len(listed)


def test_paused_function_holds_batch_tasks(tenant: httpx.Client) -> None:
    """As with single submissions: a paused function's tasks are accepted and wait,
    durable, until it is resumed."""
    r = deploy(tenant, "hello", "hello")
    assert r.status_code == 201, r.text
    assert tenant.post("/v1/functions/hello/pause").status_code == 200
    found = results(batch(tenant, "hello", [{"payload": {"name": str(i)}} for i in range(3)]), 3)
    ids = [accepted(f) for f in found]
    time.sleep(2.0)
    for task_id in ids:
        task = tenant.get(f"/v1/tasks/{task_id}").json()
        assert task["status"] == "Enqueued", task
    assert tenant.post("/v1/functions/hello/resume").status_code == 200
    for i, task_id in enumerate(ids):
        task = wait_task(tenant, task_id, timeout=20)
        assert task["status"] == "Succeeded" and task["result"] == {"message": f"hello, {i}"}, task
