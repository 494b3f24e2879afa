"""The database idle and down: the first request after an idle period succeeds, and a
submission while the database is down answers 503 with Retry-After, never 500,
leaving no record without a message behind it.

The MongoDB-wire server is the test's own (stopped and started again on the same port
and storage), so that the shared one is not disturbed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fault.faults import RestartableMongo, submit_when_back
from tests.harness import (
    FINAL_STATUSES,
    Platform,
    assert_error,
    deploy,
    list_all_tasks,
    own_platform,
    submit_event,
    wait_task,
)

# The server closes a connection idle this long (300 s by default; shortened here).
SERVER_IDLE_S = 2.0


@pytest.fixture
def idle_closing() -> Iterator[tuple[RestartableMongo, Platform]]:
    """A platform whose MongoDB-wire server closes connections idle for SERVER_IDLE_S;
    its clients retire pooled connections after half that (FNHOST_MONGO_MAX_IDLE_S)."""
    mongo = RestartableMongo(idle_timeout_s=SERVER_IDLE_S).start()
    try:
        with own_platform(mongo.url, mongo_max_idle_s=SERVER_IDLE_S / 2) as platform:
            yield mongo, platform
    finally:
        mongo.close()


def sit_idle() -> None:
    """Long enough for the server to close every connection that sat idle in a pool."""
    time.sleep(SERVER_IDLE_S + 1.5)


def test_first_requests_after_an_idle_period_succeed(
    idle_closing: tuple[RestartableMongo, Platform],
) -> None:
    _, platform = idle_closing
    sit_idle()  # the gateway's pooled connections, used for readiness, go stale
    with platform.admin() as admin:
        r = admin.post("/v1/tenants", json={"name": "after-idle"})
        assert r.status_code == 201, r.text
        key = r.json()["api_key"]
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        sit_idle()
        assert deploy(client, "hello", "hello").status_code == 201
        sit_idle()
        r = submit_event(client, "hello", {"name": "idle"})
        assert r.status_code == 202, r.text
        sit_idle()
        assert wait_task(client, r.headers["x-task-id"])["status"] == "Succeeded"
    assert "unhandled error" not in platform.tail(400), platform.tail()


@pytest.fixture
def restartable() -> Iterator[tuple[RestartableMongo, Platform]]:
    mongo = RestartableMongo().start()
    try:
        with own_platform(mongo.url) as platform:
            yield mongo, platform
    finally:
        mongo.close()


def test_submissions_while_the_database_is_down_are_503_and_leave_nothing(
    restartable: tuple[RestartableMongo, Platform],
) -> None:
    mongo, platform = restartable
    with platform.new_tenant() as client:
        assert deploy(client, "hello", "hello").status_code == 201
        first = submit_event(client, "hello", {}).headers["x-task-id"]
        assert wait_task(client, first)["status"] == "Succeeded"
        with mongo.down():
            # The gateway knows the key and the function (cached): only the task
            # record needs the database.
            for headers in ({}, {"X-Task-Id": "while-down"}, {"X-Delay-Seconds": "5"}):
                r = submit_event(client, "hello", {}, headers=headers)
                err = assert_error(r, 503, "unavailable")
                assert "database" in err["message"], err
                assert int(r.headers["retry-after"]) >= 1, r.headers
                assert "x-task-id" not in r.headers, r.headers
        # Back up: the same task id is free (no record was left), and it runs.
        submit_when_back(client, "hello", "while-down")
        assert wait_task(client, "while-down")["status"] == "Succeeded"
        tasks = list_all_tasks(client)
        assert {t["task_id"] for t in tasks} == {first, "while-down"}, tasks
        assert all(t["status"] in FINAL_STATUSES for t in tasks), tasks
    assert "unhandled error" not in platform.tail(400), platform.tail()
