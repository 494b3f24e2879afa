"""A slow or failing destination never holds a queue slot for long: one short inline
attempt, then the outbox (durable timers) delivers the record within the destination's
policy, and the task record's `destination` follows it (pending, then delivered or
failed). Its records survive a scheduler restart.

The platform here has a small prefetch (8 messages in hand per tenant queue), so that
deliveries held inline would hold up the tenant's queue at once, and a policy of
WEBHOOK_ATTEMPTS attempts of at most 1 s each, with waits of 0.25, 0.5, 1, 2, 4 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.hanging import HangingWebhook
from tests.harness import (
    MongoServer,
    Platform,
    Webhook,
    deploy,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)

PREFETCH = 8
INLINE_S = 0.5
WEBHOOK_TIMEOUT_S = 1.0
WEBHOOK_ATTEMPTS = 6
BACKOFF_S = 0.25
BACKOFFS_S = sum(BACKOFF_S * 2**k for k in range(WEBHOOK_ATTEMPTS - 1))  # 7.75 s
# What inline retries took before, per record to a webhook that never answers: every
# attempt timed out, every wait waited, holding a queue slot all along.
INLINE_RETRIES_S = WEBHOOK_ATTEMPTS * WEBHOOK_TIMEOUT_S + BACKOFFS_S  # 13.75 s
A_TASKS = 24
B_TASKS = 16
# B's tasks take well under a second alone; behind A's deliveries held inline they
# would wait A_TASKS / PREFETCH rounds of INLINE_RETRIES_S (over 40 s).
B_PROMPT_S = 10.0


@pytest.fixture(scope="module")
def outbox_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(
        mongo.url, async_prefetch=PREFETCH, destination_inline_s=INLINE_S,
        webhook_timeout_s=WEBHOOK_TIMEOUT_S, webhook_retry_attempts=WEBHOOK_ATTEMPTS,
        webhook_backoff_s=BACKOFF_S,
    ) as platform:
        yield platform


@pytest.fixture
def client(outbox_platform: Platform) -> Iterator[httpx.Client]:
    tenant = outbox_platform.new_tenant()
    yield tenant
    tenant.close()


def deploy_noop(client: httpx.Client, name: str, async_config: dict[str, Any]) -> None:
    r = deploy(client, name, "noop", {"async": async_config})
    assert r.status_code == 201, r.text
    assert invoke(client, name).status_code == 200  # warm: its container is up


def submit_all(client: httpx.Client, name: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = submit_event(client, name, {"i": i})
        assert r.status_code == 202, r.text
        ids.append(r.headers["x-task-id"])
    return ids


def destination_of(client: httpx.Client, task_id: str, name: str) -> dict[str, Any] | None:
    r = client.get(f"/v1/tasks/{task_id}", params={"function": name})
    assert r.status_code == 200, r.text
    destination: dict[str, Any] | None = r.json()["destination"]
    return destination


def completion_s(task: dict[str, Any]) -> float:
    """From submission to the final status, as the task's history has them."""
    created = datetime.fromisoformat(task["created_at"].replace("Z", "+00:00"))
    final = datetime.fromisoformat(task["history"][-1]["at"].replace("Z", "+00:00"))
    return (final - created).total_seconds()


def test_a_hanging_webhook_holds_up_no_other_function_and_gets_its_records_once_it_answers(
    client: httpx.Client,
) -> None:
    with HangingWebhook() as hook:
        deploy_noop(client, "a", {"on_success": {"type": "webhook", "url": hook.url}})
        deploy_noop(client, "b", {})
        a_ids = submit_all(client, "a", A_TASKS)
        b_ids = submit_all(client, "b", B_TASKS)

        # (1) B's tasks finish promptly while A's records wait in the outbox.
        b_tasks = [wait_task(client, t, timeout=60, function="b") for t in b_ids]
        assert {t["status"] for t in b_tasks} == {"Succeeded"}, b_tasks
        slowest = max(completion_s(t) for t in b_tasks)
        print(f"\nB's slowest task: {slowest:.2f} s")
        assert slowest < B_PROMPT_S, f"B's slowest task took {slowest:.1f} s"
        a_tasks = [wait_task(client, t, timeout=30, function="a") for t in a_ids]
        assert {t["status"] for t in a_tasks} == {"Succeeded"}, a_tasks  # final status: at once
        pending = [t["destination"] for t in a_tasks if t["destination"]["status"] == "pending"]
        assert pending, [t["destination"] for t in a_tasks]
        for destination in pending:
            assert destination["type"] == "webhook" and destination["target"] == hook.url, destination
            assert destination["outbox"] and destination["error"], destination
            assert destination["attempts"] < WEBHOOK_ATTEMPTS, destination
        assert not hook.task_ids(answered=True)

        # (2) Once it answers, the outbox delivers every record, at least once.
        hook.answer()
        deadline = time.monotonic() + 30
        undelivered = set(a_ids)
        while undelivered and time.monotonic() < deadline:
            undelivered = {t for t in undelivered
                           if (destination_of(client, t, "a") or {}).get("status") != "delivered"}
            time.sleep(0.2)
        shown = {t: destination_of(client, t, "a") for t in sorted(undelivered)[:5]}
        assert not undelivered, f"{len(undelivered)} records not delivered: {shown}"
        assert set(hook.task_ids(answered=True)) >= set(a_ids)
        for task_id in a_ids:
            destination = destination_of(client, task_id, "a")
            assert destination is not None and destination["error"] is None, destination
            assert 1 <= destination["attempts"] <= WEBHOOK_ATTEMPTS, destination


def test_a_destination_that_never_works_is_given_up_within_the_policy(client: httpx.Client) -> None:
    with Webhook(status=500) as hook:
        deploy_noop(client, "c", {"on_success": {"type": "webhook", "url": hook.url}})
        (task_id,) = submit_all(client, "c", 1)
        task = wait_task(client, task_id, timeout=30, function="c")
        assert task["status"] == "Succeeded", task
        seen = [task["destination"]]
        deadline = time.monotonic() + INLINE_RETRIES_S + 15
        while seen[-1]["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.1)
            destination = destination_of(client, task_id, "c")
            assert destination is not None
            if destination != seen[-1]:
                seen.append(destination)
        final = seen[-1]
        assert final["status"] == "failed", seen
        assert final["attempts"] == WEBHOOK_ATTEMPTS, final
        assert final["error"] == "HTTP 500 Internal Server Error", final
        # Its attempts so far were shown while it was pending.
        shown = [d["attempts"] for d in seen if d["status"] == "pending"]
        assert shown and shown == sorted(shown) and max(shown) < WEBHOOK_ATTEMPTS, seen
        posts = hook.wait(WEBHOOK_ATTEMPTS, timeout=5, task_id=task_id)
        time.sleep(1.0)
        assert len(hook.posts) == WEBHOOK_ATTEMPTS, "no attempt after the giving-up"
        # The policy's waits between attempts, and not much more.
        spread = posts[-1]["at"] - posts[0]["at"]
        assert BACKOFFS_S - 0.1 <= spread < INLINE_RETRIES_S + 5, spread


def test_the_outbox_survives_a_scheduler_restart(outbox_platform: Platform, client: httpx.Client) -> None:
    with HangingWebhook() as hook:
        on_success = {"type": "webhook", "url": hook.url}
        deploy_noop(client, "d", {"on_success": on_success})
        deploy_noop(client, "d-notask", {"task_mode": False, "on_success": on_success})
        ids = submit_all(client, "d", 4)
        no_record = submit_all(client, "d-notask", 2)
        tasks = [wait_task(client, t, timeout=30, function="d",
                           until=lambda t: (t["destination"] or {}).get("status") == "pending")
                 for t in ids]
        assert all(t["status"] == "Succeeded" for t in tasks), tasks
        deadline = time.monotonic() + 10
        while not set(no_record) <= set(hook.task_ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(no_record) <= set(hook.task_ids()), hook.task_ids()  # tried, not answered

        outbox_platform.stop_role("scheduler")
        stopped_at = time.time()
        hook.answer()  # too late for the stopped scheduler
        outbox_platform.start_role("scheduler")
        outbox_platform.wait_ready(60)

        for task_id in ids:
            task = wait_task(client, task_id, timeout=30, function="d",
                             until=lambda t: t["destination"]["status"] != "pending")
            assert task["destination"]["status"] == "delivered", task["destination"]
        deadline = time.monotonic() + 30
        while (not set(ids + no_record) <= set(hook.task_ids(answered=True, since=stopped_at))
               and time.monotonic() < deadline):
            time.sleep(0.1)
        after = set(hook.task_ids(answered=True, since=stopped_at))
        assert set(ids + no_record) <= after, (sorted(after), ids, no_record)
