"""Stops that cross a task's start.

A short task has its Processed and Running written with its outcome (one write);
only a task still running after FNHOST_RUNNING_WRITE_DELAY_S has Running written
on its own. Until then its record says Enqueued, so a stop answers Stopped as for
a queued task. These tests widen that window (30 s) to hit it for sure: the task
must still be stopped (killed, or never started), with one Stopped record at its
destination and a record that tells what happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    Webhook,
    container_gone,
    deploy,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)


@pytest.fixture(scope="module")
def late_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, running_write_delay_s=30) as platform:
        yield platform


@pytest.fixture
def client(late_platform: Platform) -> Iterator[httpx.Client]:
    tenant = late_platform.new_tenant()
    yield tenant
    tenant.close()


def statuses(task: dict[str, Any]) -> list[str]:
    return [h["status"] for h in task["history"]]


def task_id_of(r: httpx.Response) -> str:
    assert r.status_code == 202, r.text
    return str(r.headers["x-task-id"])


def test_a_short_task_is_written_once_with_its_whole_history(client: httpx.Client) -> None:
    assert deploy(client, "hello", "hello").status_code == 201
    task = wait_task(client, task_id_of(submit_event(client, "hello", {})), timeout=30)
    assert task["status"] == "Succeeded", task
    assert statuses(task) == ["Enqueued", "Processed", "Running", "Succeeded"], task
    times = [h["at"] for h in task["history"]]
    assert times == sorted(times), task["history"]
    assert task["attempts"] == 1 and task["approximate_invoke_count"] == 1, task
    assert task["container"] and task["timings"]["start"] in ("cold", "warm", "stem"), task


def test_stop_crossing_the_start_kills_the_task(client: httpx.Client, webhook: Webhook) -> None:
    config = {"timeout_s": 60, "async": {"on_failure": {"type": "webhook", "url": webhook.url}}}
    assert deploy(client, "sleep", "sleep", config).status_code == 201
    started = time.monotonic()
    task_id = task_id_of(submit_event(client, "sleep", {"seconds": 30}))
    time.sleep(3)  # it runs by now; its record still says Enqueued (Running is written at 30 s)
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "Enqueued"
    r = client.post(f"/v1/tasks/{task_id}/stop")
    assert r.status_code == 200 and r.json()["status"] == "Stopped", r.text
    (post,) = webhook.wait(1, timeout=15, task_id=task_id)
    assert time.monotonic() - started < 20, "the task was not cut short"
    assert post["json"]["requestContext"]["condition"] == "Stopped", post["json"]
    task = wait_task(client, task_id, timeout=10, until=lambda t: t["destination"] is not None)
    assert task["status"] == "Stopped", task
    # It did start: the record says so, in time order, and counts the attempt.
    assert statuses(task) == ["Enqueued", "Processed", "Running", "Stopped"], task["history"]
    times = [h["at"] for h in task["history"]]
    assert times == sorted(times), task["history"]
    assert task["attempts"] == 1 and task["container"], task
    assert task["destination"]["status"] == "delivered", task
    assert container_gone(task["container"], timeout=10), task["container"]
    time.sleep(1)
    assert len(webhook.wait(1, timeout=0.1, task_id=task_id)) == 1, "one record, not two"


def test_stop_of_a_task_waiting_for_a_container_never_runs_it(
    client: httpx.Client, webhook: Webhook
) -> None:
    config = {
        "timeout_s": 30,
        "max_concurrency": 1,
        "async": {"on_failure": {"type": "webhook", "url": webhook.url}},
    }
    assert deploy(client, "sleep", "sleep", config).status_code == 201
    # A sync call holds the function's only container for 4 s.
    holder = threading.Thread(target=invoke, args=(client, "sleep", {"seconds": 4}))
    holder.start()
    time.sleep(1)
    task_id = task_id_of(submit_event(client, "sleep", {"seconds": 0}))
    time.sleep(1)  # taken from the queue, waiting for the container
    r = client.post(f"/v1/tasks/{task_id}/stop")
    assert r.status_code == 200 and r.json()["status"] == "Stopped", r.text
    holder.join(timeout=30)
    (post,) = webhook.wait(1, timeout=30, task_id=task_id)
    assert post["json"]["requestContext"]["condition"] == "Stopped", post["json"]
    time.sleep(2)  # the container is free now: the task must still not run
    task = wait_task(client, task_id, timeout=10, until=lambda t: t["destination"] is not None)
    assert task["status"] == "Stopped", task
    assert "Running" not in statuses(task), task["history"]
    assert task["attempts"] == 0 and "result" not in task, task
