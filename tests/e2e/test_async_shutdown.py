"""A scheduler stopped with SIGTERM (a deploy, a restart) takes no new task, lets
the ones in hand finish within FNHOST_SHUTDOWN_GRACE_S, and gives back those
still running then: they run again on the next scheduler, never end Failed
because a scheduler stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import MongoServer, Platform, deploy, own_platform, submit_event, wait_task

GRACE_S = 5


@pytest.fixture(scope="module")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, shutdown_grace_s=GRACE_S) as p:
        yield p


@pytest.fixture
def client(platform: Platform) -> Iterator[httpx.Client]:
    with platform.new_tenant() as tenant:
        yield tenant


def restart_scheduler(platform: Platform) -> float:
    """SIGTERM the scheduler, wait for it to exit, start another; returns the stop time."""
    started = time.monotonic()
    platform.stop_role("scheduler")
    took = time.monotonic() - started
    platform.start_role("scheduler")
    platform.wait_ready(60)
    return took


def running(client: httpx.Client, task_id: str) -> dict[str, Any]:
    return wait_task(client, task_id, {"Running"}, timeout=30)


def test_a_task_in_hand_finishes_before_the_scheduler_exits(
    platform: Platform, client: httpx.Client
) -> None:
    assert deploy(client, "sleep", "sleep", {"timeout_s": 60}).status_code == 201
    r = submit_event(client, "sleep", {"seconds": 2})
    task_id = r.headers["x-task-id"]
    running(client, task_id)
    took = restart_scheduler(platform)
    assert took < GRACE_S + 5, f"the scheduler took {took:.1f} s to stop"
    task = wait_task(client, task_id, timeout=30)
    assert task["status"] == "Succeeded", task
    assert task["attempts"] == 1 and task["approximate_invoke_count"] == 1, task


def test_a_task_past_the_grace_period_runs_again_not_failed(
    platform: Platform, client: httpx.Client
) -> None:
    assert deploy(client, "sleep", "sleep", {"timeout_s": 60}).status_code == 201
    r = submit_event(client, "sleep", {"seconds": GRACE_S + 7})
    task_id = r.headers["x-task-id"]
    first = running(client, task_id)
    took = restart_scheduler(platform)
    assert took < GRACE_S + 35, f"the scheduler took {took:.1f} s to stop"
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] in ("Running", "Enqueued")
    task = wait_task(client, task_id, timeout=60)
    assert task["status"] == "Succeeded", task
    assert task["approximate_invoke_count"] == 2, task
    assert task["container"] != first["container"], task
