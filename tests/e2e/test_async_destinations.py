"""Destinations end to end: the record (contract) at a real webhook, a RabbitMQ queue
and another function, for every condition; failed deliveries are recorded."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import httpx
import orjson

from tests.harness import Platform, Webhook, deploy, read_queue, submit_event, wait_task

TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RECORD_KEYS = {"version", "timestamp", "requestContext", "requestPayload", "responseContext",
               "responsePayload"}
CONTEXT_KEYS = {"requestId", "taskId", "function", "condition", "approximateInvokeCount"}


def submit(client: httpx.Client, name: str, payload: Any = None, **kwargs: Any) -> tuple[str, str]:
    """Submit an async invocation; returns (task id, request id)."""
    r = submit_event(client, name, payload, **kwargs)
    assert r.status_code == 202, r.text
    return str(r.headers["x-task-id"]), str(r.headers["x-request-id"])


def check_record(record: dict[str, Any], *, task: dict[str, Any], request_id: str, name: str,
                 version: str, condition: str, invoke_count: int, payload: Any,
                 function_error: str | None, response: Any) -> None:
    """The record has exactly the contract's fields and these values."""
    assert set(record) == RECORD_KEYS, record
    assert record["version"] == "1.0", record
    assert TIMESTAMP_RE.match(record["timestamp"]), record["timestamp"]
    context = record["requestContext"]
    assert set(context) == CONTEXT_KEYS, context
    assert context == {
        "requestId": request_id,
        "taskId": task["task_id"],
        "function": f"{name}:{version}",
        "condition": condition,
        "approximateInvokeCount": invoke_count,
    }, context
    assert record["requestPayload"] == payload, record
    assert record["responseContext"] == {"statusCode": 200, "functionError": function_error}, record
    assert record["responsePayload"] == response, record


def deploy_ok(client: httpx.Client, name: str, bundle: str, config: dict[str, Any]) -> str:
    """Deploy; returns the version."""
    r = deploy(client, name, bundle, config)
    assert r.status_code == 201, r.text
    return str(r.json()["version"])


def test_on_success_webhook_gets_the_record_once(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "echo", "echo",
                        {"async": {"on_success": {"type": "webhook", "url": webhook.url}}})
    event = {"hello": "world", "n": [1, 2, 3]}
    task_id, request_id = submit(tenant, "echo", event)
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    assert task["version"] == version
    (post,) = webhook.wait(1, task_id=task_id)
    assert post["headers"]["content-type"].startswith("application/json"), post["headers"]
    assert post["headers"].get("x-fnhost-task-id") == task_id, post["headers"]
    check_record(post["json"], task=task, request_id=request_id, name="echo", version=version,
                 condition="Success", invoke_count=1, payload=event, function_error=None,
                 response=event)
    destination = task["destination"]
    assert destination["status"] == "delivered", destination
    assert destination["type"] == "webhook" and destination["attempts"] == 1, destination
    assert len(webhook.posts) == 1, webhook.records()  # exactly one POST, never repeated


def test_on_failure_webhook_after_retries(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "always-fails", "always-fails", {"async": {
        "max_retry_attempts": 1, "retry_backoff_s": 1,
        "on_success": {"type": "webhook", "url": webhook.url + "/never"},
        "on_failure": {"type": "webhook", "url": webhook.url},
    }})
    task_id, request_id = submit(tenant, "always-fails", {"x": 1})
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Failed" and task["attempts"] == 2, task
    (post,) = webhook.wait(1, task_id=task_id)
    assert post["path"] == "/hook", post
    record = post["json"]
    check_record(record, task=task, request_id=request_id, name="always-fails", version=version,
                 condition="RetriesExhausted", invoke_count=task["attempts"], payload={"x": 1},
                 function_error="Unhandled", response=record["responsePayload"])
    assert record["responsePayload"]["errorType"] == "ValueError", record
    assert task["destination"]["status"] == "delivered", task["destination"]


def test_on_failure_webhook_after_a_timeout(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "slow", "sleep", {"timeout_s": 1, "async": {
        "max_retry_attempts": 0, "on_failure": {"type": "webhook", "url": webhook.url},
    }})
    task_id, request_id = submit(tenant, "slow", {"seconds": 5})
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Failed", task
    (post,) = webhook.wait(1, task_id=task_id)
    record = post["json"]
    check_record(record, task=task, request_id=request_id, name="slow", version=version,
                 condition="RetriesExhausted", invoke_count=1, payload={"seconds": 5},
                 function_error="Timeout", response=record["responsePayload"])
    assert record["responsePayload"]["errorType"] == "Timeout", record


def test_expired_task_sends_event_age_exceeded(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "hello", "hello", {"async": {
        "max_event_age_s": 1, "on_failure": {"type": "webhook", "url": webhook.url},
    }})
    task_id, request_id = submit(tenant, "hello", {"name": "late"},
                                 headers={"X-Delay-Seconds": "3"})
    task = wait_task(tenant, task_id, timeout=20)
    assert task["status"] == "Expired", task
    (post,) = webhook.wait(1, task_id=task_id)
    check_record(post["json"], task=task, request_id=request_id, name="hello", version=version,
                 condition="EventAgeExceeded", invoke_count=1, payload={"name": "late"},
                 function_error=None, response=None)


def test_stopped_task_sends_stopped(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "hello", "hello", {"async": {
        "on_failure": {"type": "webhook", "url": webhook.url},
    }})
    delay = 3
    task_id, request_id = submit(tenant, "hello", {"name": "never"},
                                 headers={"X-Delay-Seconds": str(delay)})
    r = tenant.post(f"/v1/tasks/{task_id}/stop")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "Stopped", r.json()
    (post,) = webhook.wait(1, timeout=delay + 5, task_id=task_id)
    task = wait_task(tenant, task_id, timeout=10, until=lambda t: t["destination"] is not None)
    assert task["status"] == "Stopped", task
    assert "Running" not in [h["status"] for h in task["history"]], task["history"]
    check_record(post["json"], task=task, request_id=request_id, name="hello", version=version,
                 condition="Stopped", invoke_count=1, payload={"name": "never"},
                 function_error=None, response=None)
    assert task["destination"]["status"] == "delivered", task["destination"]


def test_a_task_stopped_after_its_max_age_sends_stopped_once(
    tenant: httpx.Client, webhook: Webhook,
) -> None:
    """Stopped is the task's outcome even when it is past its max age by the time a
    scheduler sees it: one Stopped record, no EventAgeExceeded one."""
    deploy_ok(tenant, "hello", "hello", {"async": {
        "max_event_age_s": 1, "on_failure": {"type": "webhook", "url": webhook.url},
    }})
    task_id, _ = submit(tenant, "hello", {"name": "never"}, headers={"X-Delay-Seconds": "6"})
    time.sleep(1.5)
    r = tenant.post(f"/v1/tasks/{task_id}/stop")
    assert r.status_code == 200, r.text
    task = wait_task(tenant, task_id, timeout=15, until=lambda t: t["destination"] is not None)
    assert task["status"] == "Stopped", task
    assert task["destination"]["status"] == "delivered", task["destination"]
    (post,) = webhook.wait(1, task_id=task_id)
    assert post["json"]["requestContext"]["condition"] == "Stopped", post["json"]
    time.sleep(0.5)
    assert len(webhook.posts) == 1, webhook.records()


def test_a_webhook_that_always_fails_does_not_hold_the_task(tenant: httpx.Client) -> None:
    with Webhook(status=500) as hook:
        deploy_ok(tenant, "hello", "hello", {"async": {
            "on_success": {"type": "webhook", "url": hook.url},
        }})
        task_id, _ = submit(tenant, "hello", {"name": "x"})
        # Final after one inline attempt: the record's delivery goes on in the outbox.
        task = wait_task(tenant, task_id, timeout=40)
        assert task["status"] == "Succeeded", task
        assert task["destination"]["status"] in ("pending", "failed"), task["destination"]
        task = wait_task(tenant, task_id, timeout=40,
                         until=lambda t: t["destination"]["status"] != "pending")
        assert task["status"] == "Succeeded", task
        destination = task["destination"]
        assert destination["status"] == "failed", destination
        assert destination["attempts"] >= 2, destination
        assert "500" in (destination["error"] or ""), destination
        assert len(hook.wait(destination["attempts"], task_id=task_id)) == destination["attempts"]


def test_queue_destination(platform: Platform, tenant: httpx.Client) -> None:
    queue_name = "results"
    version = deploy_ok(tenant, "echo", "echo", {"async": {
        "on_success": {"type": "queue", "name": queue_name},
    }})
    event = {"to": "queue"}
    task_id, request_id = submit(tenant, "echo", event)
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    assert task["destination"]["status"] == "delivered", task["destination"]
    queue = f"fnhost.d.{tenant.tenant_id}.{queue_name}"  # type: ignore[attr-defined]
    assert task["destination"]["target"] == queue, task["destination"]
    ((meta, body),) = read_queue(platform.env["FNHOST_AMQP_URL"], queue, 1)
    assert meta["content_type"] == "application/json", meta
    check_record(orjson.loads(body), task=task, request_id=request_id, name="echo", version=version,
                 condition="Success", invoke_count=1, payload=event, function_error=None,
                 response=event)


def test_function_destination(tenant: httpx.Client) -> None:
    deploy_ok(tenant, "sink", "echo", {})
    version = deploy_ok(tenant, "hello", "hello", {"async": {
        "on_success": {"type": "function", "name": "sink"},
    }})
    task_id, request_id = submit(tenant, "hello", {"name": "Ada"})
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    assert task["destination"]["status"] == "delivered", task["destination"]
    found: list[dict[str, Any]] = []

    def sink_tasks() -> list[dict[str, Any]]:
        r = tenant.get("/v1/tasks", params={"function": "sink"})
        assert r.status_code == 200, r.text
        return list(r.json()["tasks"])

    deadline = time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        found = sink_tasks()
        if not found:
            time.sleep(0.1)
    assert len(found) == 1, found
    sink = wait_task(tenant, found[0]["task_id"], timeout=30, function="sink")
    assert sink["status"] == "Succeeded", sink
    check_record(sink["result"], task=task, request_id=request_id, name="hello", version=version,
                 condition="Success", invoke_count=1, payload={"name": "Ada"},
                 function_error=None, response={"message": "hello, Ada"})


def test_binary_payloads_are_base64_in_the_record(tenant: httpx.Client, webhook: Webhook) -> None:
    version = deploy_ok(tenant, "echo", "echo", {"async": {
        "on_success": {"type": "webhook", "url": webhook.url},
    }})
    data = bytes(range(256)) + b"\x00\xff binary"
    task_id, request_id = submit(tenant, "echo", content=data,
                                 headers={"Content-Type": "application/octet-stream"})
    task = wait_task(tenant, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    (post,) = webhook.wait(1, task_id=task_id)
    encoded = base64.b64encode(data).decode()
    check_record(post["json"], task=task, request_id=request_id, name="echo", version=version,
                 condition="Success", invoke_count=1, payload=encoded, function_error=None,
                 response=encoded)
