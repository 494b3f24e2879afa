"""Per-tenant quotas end to end: over a quota the answer is 429 (a count used up) or
413 (an upload's own bytes) with code QuotaExceeded naming the quota, and nothing is
stored; the admin raises a tenant's quotas; the usage endpoints count what the
tenant holds; a full queue destination refuses records (a failed delivery).

One platform for the module, with small quotas; each test has a tenant of its own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from runtime.tasks.quotas import FAR_ROUNDS
from tests.harness import (
    MongoServer,
    Platform,
    assert_error,
    deploy,
    function_zip,
    own_platform,
    read_queue,
    returns,
    submit_event,
    wait_task,
)

QUOTAS = {"functions": 3, "bundle_bytes": 30_000, "versions": 5, "queued_tasks": 5,
          "queue_destinations": 2}
QUEUE_MAX = 3
REFRESH_S = 0.2


@pytest.fixture(scope="module")
def quota_platform(mongo: MongoServer) -> Iterator[Platform]:
    settings = {f"quota_{k}": v for k, v in QUOTAS.items()}
    with own_platform(
        mongo.url, quota_refresh_s=REFRESH_S, destination_queue_max_messages=QUEUE_MAX,
        webhook_backoff_s=0.05, destination_circuit_s=0, **settings,
    ) as p:
        yield p


@pytest.fixture
def client(quota_platform: Platform) -> Iterator[httpx.Client]:
    c = quota_platform.new_tenant()
    yield c
    c.close()


def tenant_id(client: httpx.Client) -> str:
    return str(client.tenant_id)  # type: ignore[attr-defined]


def quota_error(response: httpx.Response, status: int, quota: str) -> dict[str, Any]:
    error = assert_error(response, status, "QuotaExceeded")
    assert error.get("quota") == quota, error
    assert quota in error["message"], error
    return error


def code(n: int, size: int = 0) -> bytes:
    """A distinct bundle (its own version); `size` incompressible bytes besides."""
    return function_zip(returns(n), extra={"blob.bin": os.urandom(size)} if size else None)


def usage(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/v1/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def set_quotas(platform: Platform, tenant: str, quotas: dict[str, int | None]) -> dict[str, Any]:
    with platform.admin() as admin:
        r = admin.patch(f"/v1/tenants/{tenant}", json={"quotas": quotas})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_functions_quota_refuses_the_next_function_and_the_admin_raises_it(
    quota_platform: Platform, client: httpx.Client
) -> None:
    for n in range(3):
        assert deploy(client, f"f{n}", code(n)).status_code == 201
    error = quota_error(deploy(client, "f3", code(3)), 429, "functions")
    assert "3" in error["message"], error
    assert client.get("/v1/functions/f3").status_code == 404
    assert [f["name"] for f in client.get("/v1/functions").json()["functions"]] == ["f0", "f1", "f2"]
    # Updating an existing function is no new function.
    assert deploy(client, "f0", code(10)).status_code == 200

    shown = set_quotas(quota_platform, tenant_id(client), {"functions": 4})
    assert shown["quotas"]["functions"] == 4 and shown["overrides"] == {"functions": 4}, shown
    assert deploy(client, "f3", code(3)).status_code == 201
    quota_error(deploy(client, "f4", code(4)), 429, "functions")
    # Back to the default (3): nothing is deleted, no new function is allowed.
    assert set_quotas(quota_platform, tenant_id(client), {"functions": None})["quotas"]["functions"] == 3
    quota_error(deploy(client, "f4", code(4)), 429, "functions")
    assert usage(client)["usage"]["functions"] == 4


def test_bundle_bytes_quota_is_413_and_stores_nothing(
    quota_platform: Platform, client: httpx.Client
) -> None:
    assert deploy(client, "big", code(1, 20_000)).status_code == 201
    before = usage(client)["usage"]
    assert 20_000 < before["bundle_bytes"] < 30_000, before
    quota_error(deploy(client, "big2", code(2, 20_000)), 413, "bundle_bytes")
    # A new version of an existing function is refused the same way, and keeps the old one.
    version = client.get("/v1/functions/big").json()["version"]
    quota_error(deploy(client, "big", code(3, 20_000)), 413, "bundle_bytes")
    assert client.get("/v1/functions/big").json()["version"] == version
    assert client.get("/v1/functions/big2").status_code == 404
    assert usage(client)["usage"] == before
    # The same bundle again is stored already: no bytes added.
    assert deploy(client, "same", code(1, 0)).status_code == 201
    set_quotas(quota_platform, tenant_id(client), {"bundle_bytes": 100_000})
    assert deploy(client, "big2", code(2, 20_000)).status_code == 201


def test_versions_quota_counts_new_versions_only(client: httpx.Client) -> None:
    for n in range(5):
        assert deploy(client, "v", code(n)).status_code in (200, 201)
    quota_error(deploy(client, "v", code(5)), 429, "versions")
    assert client.get("/v1/functions/v").json()["version"] != ""
    assert usage(client)["usage"]["versions"] == 5
    # Uploading a version the store keeps already adds none.
    assert deploy(client, "v", code(2)).status_code == 200


def test_queued_tasks_quota_in_a_batch_and_single(
    quota_platform: Platform, client: httpx.Client
) -> None:
    assert deploy(client, "later", code(1)).status_code == 201
    tasks = [{"payload": {"n": i}, "task_id": f"t{i}", "delay_s": 3600} for i in range(8)]
    r = client.post("/v1/functions/later/invocations/batch", json={"tasks": tasks})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [202] * 5 + [429] * 3, results
    for refused in results[5:]:
        assert refused["error"]["code"] == "QuotaExceeded", refused
        assert refused["error"]["quota"] == "queued_tasks", refused
        assert refused["error"]["retry_after_s"] >= 1, refused
    for i in range(5, 8):  # refused: no record, the id is free
        assert client.get(f"/v1/tasks/t{i}").status_code == 404
    # Read back from the store (the delayed tasks' timers), past several refreshes.
    time.sleep(REFRESH_S * 5)
    single = submit_event(client, "later", {"n": 9}, headers={"X-Task-Id": "t9"})
    quota_error(single, 429, "queued_tasks")
    assert int(single.headers["Retry-After"]) >= 1
    assert client.get("/v1/tasks/t9").status_code == 404
    assert usage(client)["usage"]["queued_tasks"] == 5

    set_quotas(quota_platform, tenant_id(client), {"queued_tasks": 6})
    time.sleep(REFRESH_S * 5)
    assert submit_event(client, "later", {"n": 9}, headers={"X-Task-Id": "t9"}).status_code == 202
    quota_error(submit_event(client, "later", {"n": 10}), 429, "queued_tasks")


def test_queued_tasks_counts_tasks_held_for_a_paused_function(client: httpx.Client) -> None:
    assert deploy(client, "held", code(1)).status_code == 201
    assert client.post("/v1/functions/held/pause").status_code == 200
    for i in range(5):
        assert submit_event(client, "held", {"n": i}).status_code == 202
    quota_error(submit_event(client, "held", {"n": 5}), 429, "queued_tasks")
    # Whether still in the tenant's queue or parked by the scheduler, they are counted.
    eventually(lambda: usage(client)["usage"]["queued_tasks"] == 5)
    time.sleep(REFRESH_S * 5)
    quota_error(submit_event(client, "held", {"n": 5}), 429, "queued_tasks")
    assert client.post("/v1/functions/held/resume").status_code == 200
    eventually(lambda: usage(client)["usage"]["queued_tasks"] == 0, timeout=60)
    eventually(lambda: submit_event(client, "held", {"n": 6}).status_code == 202)


def test_task_record_bytes_quota(quota_platform: Platform, client: httpx.Client) -> None:
    assert deploy(client, "rec", code(1)).status_code == 201
    set_quotas(quota_platform, tenant_id(client), {"task_record_bytes": 1000})
    payload = {"pad": "x" * 390}  # about 400 bytes a record
    for _ in range(2):
        assert submit_event(client, "rec", payload, headers={"X-Delay-Seconds": "3600"}).status_code == 202
    quota_error(submit_event(client, "rec", payload, headers={"X-Delay-Seconds": "3600"}),
                429, "task_record_bytes")
    eventually(lambda: 800 <= usage(client)["usage"]["task_record_bytes"] < 1000)
    time.sleep(REFRESH_S * 5)  # read back from the counters: still refused
    quota_error(submit_event(client, "rec", payload, headers={"X-Delay-Seconds": "3600"}),
                429, "task_record_bytes")


def test_queue_destinations_quota(client: httpx.Client) -> None:
    two = {"async": {"on_success": {"type": "queue", "name": "q1"},
                     "on_failure": {"type": "queue", "name": "q2"}}}
    assert deploy(client, "a", code(1), two).status_code == 201
    same = {"async": {"on_success": {"type": "queue", "name": "q1"}}}
    assert deploy(client, "b", code(2), same).status_code == 201
    third = {"async": {"on_success": {"type": "queue", "name": "q3"}}}
    quota_error(deploy(client, "c", code(3), third), 429, "queue_destinations")
    assert client.get("/v1/functions/c").status_code == 404
    r = client.patch("/v1/functions/b", json={"async": {"on_failure": {"type": "queue", "name": "q3"}}})
    quota_error(r, 429, "queue_destinations")
    assert client.get("/v1/functions/b").json()["config"]["async"].get("on_failure") is None
    # Moving a's destinations to names it frees is no new queue past the quota.
    r = client.patch("/v1/functions/a", json={"async": {"on_failure": None}})
    assert r.status_code == 200, r.text
    assert usage(client)["usage"]["queue_destinations"] == 1
    r = client.patch("/v1/functions/b", json={"async": {"on_failure": {"type": "queue", "name": "q3"}}})
    assert r.status_code == 200, r.text
    assert usage(client)["usage"]["queue_destinations"] == 2


def test_usage_endpoints(quota_platform: Platform, client: httpx.Client) -> None:
    sizes = []
    for n, name in enumerate(("u1", "u2")):
        r = deploy(client, name, code(n, 1000), {"async": {"on_success": {"type": "queue", "name": "out"}}})
        assert r.status_code == 201, r.text
        sizes.append(r.json()["bundle_size"])
    assert submit_event(client, "u1", {"n": 1}, headers={"X-Delay-Seconds": "3600"}).status_code == 202
    expected = {"functions": 2, "bundle_bytes": sum(sizes), "versions": 2, "queued_tasks": 1,
                "queue_destinations": 1}
    mine = usage(client)
    assert mine["id"] == tenant_id(client)
    assert {k: mine["usage"][k] for k in expected} == expected, mine
    assert mine["quotas"] == {**QUOTAS, "task_record_bytes": mine["quotas"]["task_record_bytes"]}, mine
    eventually(lambda: usage(client)["usage"]["task_record_bytes"] >= len(b'{"n": 1}'))
    with quota_platform.admin() as admin:
        shown = admin.get(f"/v1/tenants/{tenant_id(client)}")
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["id"] == tenant_id(client) and body["overrides"] == {}, body
        assert {k: body["usage"][k] for k in expected} == expected, body
        assert body["quotas"] == usage(client)["quotas"]
        assert_error(admin.get("/v1/tenants/tnothere"), 404, "not_found")
        bad = admin.patch(f"/v1/tenants/{tenant_id(client)}", json={"quotas": {"functions": -1}})
        assert_error(bad, 400, field="quotas.functions")
        bad = admin.patch(f"/v1/tenants/{tenant_id(client)}", json={"quotas": {"disk": 1}})
        assert_error(bad, 400, field="quotas.disk")
    # The admin's routes are the admin's only.
    assert_error(client.get(f"/v1/tenants/{tenant_id(client)}"), 403)
    assert_error(client.patch(f"/v1/tenants/{tenant_id(client)}", json={"quotas": {"functions": 99}}), 403)


def test_a_full_queue_destination_is_a_failed_delivery(
    quota_platform: Platform, client: httpx.Client
) -> None:
    config = {"async": {"on_success": {"type": "queue", "name": "bounded"}}}
    assert deploy(client, "echo", code(1), config).status_code == 201
    statuses = []
    for i in range(QUEUE_MAX + 3):
        r = submit_event(client, "echo", {"n": i})
        assert r.status_code == 202, r.text
        task = wait_task(client, r.headers["X-Task-Id"], timeout=60,
                         until=lambda t: t["destination"] and t["destination"]["status"] != "pending")
        assert task["status"] == "Succeeded", task
        statuses.append(task["destination"])
    # A quorum queue takes one message past its x-max-length before it refuses
    # (RabbitMQ's documented behaviour): the limit holds within one.
    delivered = [d["status"] for d in statuses].count("delivered")
    assert QUEUE_MAX <= delivered <= QUEUE_MAX + 1, statuses
    assert [d["status"] for d in statuses] == ["delivered"] * delivered + ["failed"] * (
        len(statuses) - delivered), statuses
    assert "full" in statuses[-1]["error"], statuses[-1]
    assert statuses[-1]["attempts"] >= 2, statuses[-1]
    queue = f"fnhost.d.{tenant_id(client)}.bounded"
    got = read_queue(quota_platform.env["FNHOST_AMQP_URL"], queue, delivered)
    assert len(got) == delivered


def test_a_queue_declared_without_a_limit_is_bounded_too(
    quota_platform: Platform, client: httpx.Client
) -> None:
    """A queue destination declared by an earlier version (no length limit): the broker
    refuses to declare it again with one, so its depth bounds it instead."""
    import aio_pika

    name = "old" + secrets.token_hex(3)
    queue = f"fnhost.d.{tenant_id(client)}.{name}"

    async def declare() -> None:
        connection = await aio_pika.connect(quota_platform.env["FNHOST_AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})

    asyncio.run(declare())
    config = {"async": {"on_success": {"type": "queue", "name": name}}}
    assert deploy(client, "echo", code(1), config).status_code == 201
    statuses = []
    for i in range(QUEUE_MAX + 1):
        r = submit_event(client, "echo", {"n": i})
        assert r.status_code == 202, r.text
        task = wait_task(client, r.headers["X-Task-Id"], timeout=60,
                         until=lambda t: t["destination"] and t["destination"]["status"] != "pending")
        statuses.append(task["destination"])
    assert [d["status"] for d in statuses] == ["delivered"] * QUEUE_MAX + ["failed"], statuses
    assert "full" in statuses[-1]["error"], statuses[-1]
    assert len(read_queue(quota_platform.env["FNHOST_AMQP_URL"], queue, QUEUE_MAX)) == QUEUE_MAX


def test_a_retried_task_counts_as_queued(quota_platform: Platform, client: httpx.Client) -> None:
    source = "def handler(event, context):\n    raise RuntimeError('on purpose')\n"
    r = deploy(client, "fails", function_zip(source), {"async": {"max_retry_attempts": 0}})
    assert r.status_code == 201, r.text
    task_id = submit_event(client, "fails", {"n": 1}).headers["X-Task-Id"]
    assert wait_task(client, task_id, timeout=60)["status"] == "Failed"
    set_quotas(quota_platform, tenant_id(client), {"queued_tasks": 1})
    # The failed task left the queue a moment ago: the view lets go of it within a few
    # readings (it errs high, never low).
    delayed = {"X-Delay-Seconds": "3600", "X-Task-Id": "d1"}
    eventually(lambda: submit_event(client, "fails", {"n": 2}, headers=delayed).status_code == 202,
               timeout=5)
    quota_error(client.post(f"/v1/tasks/{task_id}/retry"), 429, "queued_tasks")
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "Failed"
    set_quotas(quota_platform, tenant_id(client), {"queued_tasks": 2})
    time.sleep(REFRESH_S * 5)
    assert client.post(f"/v1/tasks/{task_id}/retry").status_code == 202


def test_another_gateway_counts_what_one_accepted(quota_platform: Platform, client: httpx.Client) -> None:
    assert deploy(client, "later", code(1)).status_code == 201
    url = quota_platform.start_gateway("gateway-quotas")
    try:
        other = httpx.Client(base_url=url, headers=dict(client.headers), timeout=60)
        with other:
            # Both gateways have seen the tenant before the tasks come in.
            first = submit_event(other, "later", {"n": 0}, headers={"X-Delay-Seconds": "3600"})
            assert first.status_code == 202, first.text
            for i in range(4):
                r = submit_event(client, "later", {"n": i}, headers={"X-Delay-Seconds": "3600"})
                assert r.status_code == 202, r.text
            quota_error(submit_event(client, "later", {"n": 5}), 429, "queued_tasks")
            # The other gateway learns of them at its next reading: within ten refresh
            # intervals while the tenant was far from its quota there (1 of 5).
            time.sleep(FAR_ROUNDS * REFRESH_S + 1)
            refused = submit_event(other, "later", {"n": 6}, headers={"X-Task-Id": "x6"})
            quota_error(refused, 429, "queued_tasks")
            assert usage(other)["usage"]["queued_tasks"] == 5
    finally:
        quota_platform.stop_role("gateway-quotas")


def test_a_function_destination_counts_against_the_queued_tasks_quota(
    quota_platform: Platform, client: httpx.Client
) -> None:
    """A task submitted by a function destination is a queued task like a client's: past
    the quota it is refused (retried, then a failed delivery naming the quota)."""
    tenant = tenant_id(client)
    assert deploy(client, "sink", code(1)).status_code == 201
    assert client.post("/v1/functions/sink/pause").status_code == 200
    config = {"async": {"on_success": {"type": "function", "name": "sink"}}}
    assert deploy(client, "source", code(2), config).status_code == 201
    assert client.post("/v1/functions/source/pause").status_code == 200
    source = submit_event(client, "source", {})
    assert source.status_code == 202
    for i in range(4):
        assert submit_event(client, "sink", {"n": i}).status_code == 202
    set_quotas(quota_platform, tenant, {"queued_tasks": 4})  # 5 queued: the quota goes down to 4
    assert client.post("/v1/functions/source/resume").status_code == 200
    # `source` runs (4 queued: sink's), and its record would be sink's fifth.
    task = wait_task(client, source.headers["x-task-id"], timeout=60)
    assert task["status"] == "Succeeded", task

    failed: list[dict[str, Any]] = []

    def delivery_failed() -> bool:
        found = client.get(f"/v1/tasks/{source.headers['x-task-id']}").json()["destination"]
        if found and found["status"] == "failed":
            failed.append(found)
        return bool(failed)

    eventually(delivery_failed, timeout=60)
    assert "queued_tasks" in str(failed[0]["error"]), failed
    assert usage(client)["usage"]["queued_tasks"] == 4
