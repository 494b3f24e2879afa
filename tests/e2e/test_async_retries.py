"""Async retries end to end: attempts, exponential backoff, timeouts, non-retryable
errors, event age, and retry waits that hold no container."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from tests.harness import deploy, function_zip, invoke, submit_event, wait_task

# Fails when the event asks for it, else answers: lets a sync call of the same
# function run while an async task of it waits for its retry.
FAILS_ON_REQUEST = """
def handler(event, context):
    if isinstance(event, dict) and event.get("fail"):
        raise ValueError("failing on request")
    return {"ok": True, "attempt": context.attempt}
"""


def statuses(task: dict[str, Any]) -> list[str]:
    return [h["status"] for h in task["history"]]


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))


def retry_gaps(task: dict[str, Any]) -> list[float]:
    """Seconds from each Retrying to the Running that follows it."""
    gaps = []
    history = task["history"]
    for i, entry in enumerate(history):
        if entry["status"] != "Retrying":
            continue
        following = next(h for h in history[i + 1:] if h["status"] == "Running")
        gaps.append((at(following) - at(entry)).total_seconds())
    return gaps


def accepted(r: httpx.Response) -> str:
    assert r.status_code == 202, r.text
    return str(r.headers["x-task-id"])


def test_always_failing_task_is_retried_with_exponential_backoff_then_fails(
    tenant: httpx.Client,
) -> None:
    config = {"async": {"max_retry_attempts": 2, "retry_backoff_s": 1}}
    assert deploy(tenant, "always-fails", "always-fails", config).status_code == 201
    task_id = accepted(submit_event(tenant, "always-fails", {"n": 1}))
    task = wait_task(tenant, task_id, timeout=45)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 3, task
    assert statuses(task) == [
        "Enqueued", "Processed", "Running", "Retrying", "Processed", "Running",
        "Retrying", "Processed", "Running", "Failed",
    ], task["history"]
    first, second = retry_gaps(task)
    assert 1.0 <= first < 1.0 + 3, task["history"]
    assert 2.0 <= second < 2.0 + 3, task["history"]
    assert task["error"]["errorType"] == "ValueError", task["error"]
    assert "always fails" in task["error"]["errorMessage"]


def test_a_task_that_fails_once_succeeds_on_its_second_attempt(tenant: httpx.Client) -> None:
    config = {"async": {"max_retry_attempts": 2, "retry_backoff_s": 1}}
    assert deploy(tenant, "flaky", "fail-then-succeed", config).status_code == 201
    task_id = accepted(submit_event(tenant, "flaky", {}))
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    assert task["attempts"] == 2, task
    assert task["result"] == {"attempt": 2, "message": "succeeded after a retry"}
    assert statuses(task) == [
        "Enqueued", "Processed", "Running", "Retrying", "Processed", "Running", "Succeeded"
    ], task["history"]


def test_no_retries_fails_after_one_attempt(tenant: httpx.Client) -> None:
    config = {"async": {"max_retry_attempts": 0, "retry_backoff_s": 1}}
    assert deploy(tenant, "fails-once", "always-fails", config).status_code == 201
    task_id = accepted(submit_event(tenant, "fails-once", {}))
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 1, task
    assert statuses(task) == ["Enqueued", "Processed", "Running", "Failed"], task["history"]
    assert task["error"]["errorType"] == "ValueError", task


def test_timeouts_are_retried(tenant: httpx.Client) -> None:
    config = {"timeout_s": 1, "async": {"max_retry_attempts": 1, "retry_backoff_s": 1}}
    assert deploy(tenant, "slow", "sleep", config).status_code == 201
    task_id = accepted(submit_event(tenant, "slow", {"seconds": 5}))
    task = wait_task(tenant, task_id, timeout=40)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 2, task
    assert statuses(task).count("Running") == 2, task["history"]
    assert "Retrying" in statuses(task), task["history"]
    assert task["error"]["errorType"] == "Timeout", task["error"]


def test_a_handler_that_cannot_be_imported_fails_at_once(tenant: httpx.Client) -> None:
    source = "raise RuntimeError('broken at import time')\n\ndef handler(event, context):\n    return 1\n"
    config = {"async": {"max_retry_attempts": 3, "retry_backoff_s": 1}}
    assert deploy(tenant, "broken", function_zip(source), config).status_code == 201
    task_id = accepted(submit_event(tenant, "broken", {}))
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 1, task
    assert "Retrying" not in statuses(task), task["history"]
    assert task["error"]["errorType"] == "Runtime.ImportModuleError", task["error"]


def test_an_invalid_json_payload_fails_at_once(tenant: httpx.Client) -> None:
    config = {"async": {"max_retry_attempts": 3, "retry_backoff_s": 1}}
    assert deploy(tenant, "echo", "echo", config).status_code == 201
    task_id = accepted(submit_event(tenant, "echo", content=b'{"not": json'))
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 1, task
    assert "Retrying" not in statuses(task), task["history"]
    assert task["error"]["errorType"] == "Runtime.InvalidPayload", task["error"]


def test_a_task_older_than_its_max_age_expires_without_running(tenant: httpx.Client) -> None:
    config = {"async": {"max_event_age_s": 1}}
    assert deploy(tenant, "hello", "hello", config).status_code == 201
    task_id = accepted(submit_event(tenant, "hello", {"name": "late"},
                                    headers={"X-Delay-Seconds": "3"}))
    task = wait_task(tenant, task_id, timeout=20)
    assert task["status"] == "Expired", task
    assert "Running" not in statuses(task), task["history"]
    assert task["attempts"] == 0, task


def test_retries_whose_backoff_outlives_the_max_age_end_expired(tenant: httpx.Client) -> None:
    config = {"async": {"max_event_age_s": 3, "retry_backoff_s": 2, "max_retry_attempts": 5}}
    assert deploy(tenant, "aging", "always-fails", config).status_code == 201
    task_id = accepted(submit_event(tenant, "aging", {}))
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Expired", task
    assert "Failed" not in statuses(task), task["history"]
    assert 1 <= task["attempts"] < 6, task


def test_a_retry_wait_holds_no_container(tenant: httpx.Client) -> None:
    """While a task waits 5 s in Retrying, a sync call of the same function (one
    instance at most) is served at once by the warm container the task ran in."""
    config = {"max_concurrency": 1, "async": {"max_retry_attempts": 1, "retry_backoff_s": 5}}
    assert deploy(tenant, "on-request", function_zip(FAILS_ON_REQUEST), config).status_code == 201
    task_id = accepted(submit_event(tenant, "on-request", {"fail": True}))
    task = wait_task(tenant, task_id, {"Retrying"}, timeout=30)
    waiting_until = at({"at": task["due_at"]}).timestamp()
    started = time.monotonic()
    r = invoke(tenant, "on-request", {"fail": False})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert "x-function-error" not in r.headers, r.text
    assert r.json() == {"ok": True, "attempt": 1}
    assert r.headers["x-fnhost-start"] == "warm", r.headers
    assert elapsed < 2.0, elapsed
    assert time.time() < waiting_until, "the sync call should have run while the task waited"
    assert tenant.get(f"/v1/tasks/{task_id}").json()["status"] == "Retrying"
