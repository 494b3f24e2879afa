"""Function destinations go through the limits of any submission, and a chain of
them stops: a function whose `on_success` is itself runs FNHOST_DESTINATION_CHAIN_MAX
more times, then its destination is refused with a clear error, every task final.
A record over the async payload limit is refused; a destination function's
`max_rate` holds for the tasks its callers' destinations submit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.harness import (
    FINAL_STATUSES,
    MongoServer,
    Platform,
    deploy,
    eventually,
    function_zip,
    own_platform,
    returns,
    submit_event,
    wait_task,
)

CHAIN_MAX = 3
PAYLOAD_LIMIT = 4096


@pytest.fixture(scope="module")
def chained(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, destination_chain_max=CHAIN_MAX,
                      async_payload_limit=PAYLOAD_LIMIT) as p:
        yield p


@pytest.fixture
def client(chained: Platform) -> Iterator[httpx.Client]:
    c = chained.new_tenant()
    yield c
    c.close()


def tasks_of(client: httpx.Client, function: str) -> list[dict[str, Any]]:
    r = client.get("/v1/tasks", params={"function": function, "limit": 500})
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


def settled(client: httpx.Client, function: str, count: int) -> list[dict[str, Any]] | None:
    """The function's tasks once there are `count`, all final with their destination
    delivered or failed (not pending in the outbox)."""
    found = tasks_of(client, function)
    if len(found) < count:
        return None
    full = [wait_task(client, t["task_id"], function=function) for t in found]
    if all(t["status"] in FINAL_STATUSES and (t.get("destination") or {}).get("status")
           in ("delivered", "failed", "none") for t in full):
        return full
    return None


def test_a_function_whose_destination_is_itself_stops(client: httpx.Client) -> None:
    r = deploy(client, "again", function_zip(returns("once more")),
               {"async": {"on_success": {"type": "function", "name": "again"}}})
    assert r.status_code == 201, r.text
    r = submit_event(client, "again", {"start": True})
    assert r.status_code == 202, r.text

    done = eventually(lambda: settled(client, "again", CHAIN_MAX + 1), 60,
                      f"{CHAIN_MAX + 1} tasks of the looping function, all final")
    time.sleep(3)  # time enough for several more rounds, were it still looping
    assert len(tasks_of(client, "again")) == CHAIN_MAX + 1, tasks_of(client, "again")
    assert all(t["status"] == "Succeeded" for t in done), done
    done.sort(key=lambda t: t["created_at"])
    for t in done[:-1]:
        assert t["destination"]["status"] == "delivered", t["destination"]
    last = done[-1]["destination"]
    assert last["status"] == "failed", last
    assert last["type"] == "function" and last["target"] == "again", last
    assert "over the limit of 3" in last["error"] and "function destination" in last["error"], last


def test_a_record_over_the_payload_limit_is_refused(client: httpx.Client) -> None:
    assert deploy(client, "sink", "echo").status_code == 201
    r = deploy(client, "wordy", function_zip(returns("x" * (PAYLOAD_LIMIT + 100))),
               {"async": {"on_success": {"type": "function", "name": "sink"}}})
    assert r.status_code == 201, r.text
    r = submit_event(client, "wordy", {})
    assert r.status_code == 202, r.text
    task = wait_task(client, r.headers["x-task-id"], until=lambda t: (t.get("destination") or {})
                     .get("status") in ("delivered", "failed"))
    assert task["status"] == "Succeeded", task
    assert task["destination"]["status"] == "failed", task["destination"]
    assert task["destination"]["attempts"] == 1, task["destination"]  # no use trying again
    assert "payload limit" in task["destination"]["error"], task["destination"]
    time.sleep(1)
    assert tasks_of(client, "sink") == []


def test_a_destination_functions_max_rate_holds(client: httpx.Client) -> None:
    rate = 1.0
    r = deploy(client, "slow-sink", "echo", {"max_rate": rate})
    assert r.status_code == 201, r.text
    r = deploy(client, "fan", "hello",
               {"async": {"on_success": {"type": "function", "name": "slow-sink"}}})
    assert r.status_code == 201, r.text
    sources = 8
    for n in range(sources):
        r = submit_event(client, "fan", {"name": str(n)})
        assert r.status_code == 202, r.text

    fanned = eventually(lambda: settled(client, "fan", sources), 60,
                        "every fan task final, its destination delivered or given up")
    refused = [t["destination"] for t in fanned if "max_rate" in str(t["destination"].get("error"))]
    assert refused, [t["destination"] for t in fanned]
    sunk = tasks_of(client, "slow-sink")
    delivered = [t for t in fanned if t["destination"]["status"] == "delivered"]
    assert len(sunk) == len(delivered) < sources, (len(sunk), len(delivered))
    created = sorted(datetime.fromisoformat(t["created_at"]) for t in sunk)
    span = (created[-1] - created[0]).total_seconds()
    # GCRA's bound (runtime/flow/rate.py): rate * (span + 1), plus a lease's slack.
    assert len(sunk) <= rate * (span + 1.2) + 1, (len(sunk), span)
