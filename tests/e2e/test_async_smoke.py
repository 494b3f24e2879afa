"""Async invoke end to end: 202, then the task reaches Succeeded with its history."""

from __future__ import annotations

import time

import httpx

from tests.harness import Platform, deploy


def wait_status(client: httpx.Client, task_id: str, statuses: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/tasks/{task_id}")
        if r.status_code == 200:
            doc = r.json()
            if doc["status"] in statuses:
                return doc
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not reach {statuses}: {doc}")


def test_event_invocation_succeeds(platform: Platform, tenant: httpx.Client) -> None:
    assert deploy(tenant, "hello", "hello").status_code == 201
    r = tenant.post(
        "/v1/functions/hello/invocations", json={"name": "Ada"},
        headers={"X-Invocation-Type": "Event"},
    )
    assert r.status_code == 202, r.text
    task_id = r.headers["x-task-id"]
    assert r.headers["location"] == f"/v1/tasks/{task_id}"
    assert r.headers["x-request-id"]
    doc = wait_status(tenant, task_id, {"Succeeded", "Failed"})
    assert doc["status"] == "Succeeded", doc
    assert doc["result"] == {"message": "hello, Ada"}
    assert [h["status"] for h in doc["history"]] == ["Enqueued", "Processed", "Running", "Succeeded"]
    assert doc["attempts"] == 1
