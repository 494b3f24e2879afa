"""Task records past their retention are deleted: by the TTL index on MongoDB, and by
the schedulers' indexed sweep on the embedded server (whose own TTL monitor, a
locked full scan, fnhost turns off). The test server runs as `fnhost up` runs it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from tests.harness import MongoServer, Platform, deploy, own_platform, submit_event, wait_task


@pytest.fixture(scope="module")
def sweeping(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, expiry_sweep_s=1) as platform:
        yield platform


def test_records_past_retention_are_deleted(sweeping: Platform) -> None:
    with sweeping.new_tenant() as client:
        assert deploy(client, "hello", "hello").status_code == 201
        old, kept = (submit_event(client, "hello", {}).headers["x-task-id"] for _ in range(2))
        for task_id in (old, kept):
            assert wait_task(client, task_id)["status"] == "Succeeded"
        mongo: MongoClient[dict[str, Any]] = MongoClient(sweeping.env["FNHOST_MONGO_URL"])
        try:
            tasks = mongo[sweeping.env["FNHOST_MONGO_DB"]]["tasks"]
            past = datetime.now(UTC) - timedelta(seconds=1)
            assert tasks.update_one({"task_id": old}, {"$set": {"expire_at": past}}).modified_count == 1
        finally:
            mongo.close()
        deadline = time.monotonic() + 10
        while client.get(f"/v1/tasks/{old}").status_code != 404:
            assert time.monotonic() < deadline, "the expired record is still there"
            time.sleep(0.3)
        assert client.get(f"/v1/tasks/{kept}").json()["status"] == "Succeeded"
