"""When the broker does not confirm a message, the answer is 503, never 202, and
nothing is left behind: no task record, the task id free, a retried task as it was.

The refusal is real: the tenant queue is unbound from the invoke exchange, so the
broker returns the (mandatory) message as unroutable instead of confirming it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aio_pika
import httpx
import pytest

from runtime import constants as c
from runtime.broker import topology
from tests.harness import (
    MongoServer,
    Platform,
    Vhost,
    assert_error,
    deploy,
    submit_event,
    wait_task,
)


@pytest.fixture(scope="module")
def refusing(mongo: MongoServer) -> Iterator[tuple[Platform, Vhost]]:
    vhost = Vhost().create()
    platform = Platform(mongo.url, amqp_url=vhost.url)
    try:
        platform.start()
        yield platform, vhost
    finally:
        platform.stop()
        vhost.delete()


def set_routable(vhost: Vhost, tenant: str, routable: bool) -> None:
    async def change() -> None:
        connection = await aio_pika.connect(vhost.url)
        async with connection:
            channel = await connection.channel()
            exchange = await topology.invoke_exchange(channel)
            queue = await channel.declare_queue(c.tenant_queue(tenant), passive=True)
            if routable:
                await queue.bind(exchange, routing_key=tenant)
            else:
                await queue.unbind(exchange, routing_key=tenant)

    asyncio.run(change())


def wait_refusing(client: httpx.Client, name: str) -> None:
    """Submit until one is refused (503): the broker does not route them any more."""
    deadline = time.monotonic() + 20
    while (r := submit_event(client, name, {})).status_code == 202:
        assert time.monotonic() < deadline, "the broker still routes the messages"
        time.sleep(0.3)
    assert_error(r, 503)


def test_unconfirmed_submit_is_503_and_leaves_nothing(refusing: tuple[Platform, Vhost]) -> None:
    platform, vhost = refusing
    with platform.new_tenant() as client:
        assert deploy(client, "hello", "hello").status_code == 201
        first = submit_event(client, "hello", {}).headers["x-task-id"]
        assert wait_task(client, first)["status"] == "Succeeded"
        set_routable(vhost, client.tenant_id, False)  # type: ignore[attr-defined]
        try:
            wait_refusing(client, "hello")
            r = submit_event(client, "hello", {}, headers={"X-Task-Id": "never-queued"})
            err = assert_error(r, 503)
            assert "broker" in err["message"], err
            assert "x-task-id" not in r.headers, r.headers
            assert_error(client.get("/v1/tasks/never-queued"), 404, "not_found")
        finally:
            set_routable(vhost, client.tenant_id, True)  # type: ignore[attr-defined]
        # The id is free again, and the task runs once the broker takes it.
        deadline = time.monotonic() + 20
        again = {"X-Task-Id": "never-queued"}
        while (r := submit_event(client, "hello", {}, headers=again)).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.3)
        assert r.status_code == 202, r.text
        assert wait_task(client, "never-queued")["status"] == "Succeeded"


def test_unconfirmed_retry_is_503_and_the_task_stays_as_it_was(
    refusing: tuple[Platform, Vhost],
) -> None:
    platform, vhost = refusing
    with platform.new_tenant() as client:
        config = {"async": {"max_retry_attempts": 0}}
        assert deploy(client, "fails", "always-fails", config).status_code == 201
        task_id = submit_event(client, "fails", {}).headers["x-task-id"]
        failed = wait_task(client, task_id)
        assert failed["status"] == "Failed", failed
        set_routable(vhost, client.tenant_id, False)  # type: ignore[attr-defined]
        try:
            wait_refusing(client, "fails")
            assert_error(client.post(f"/v1/tasks/{task_id}/retry"), 503)
            after = client.get(f"/v1/tasks/{task_id}").json()
            for key in ("status", "history", "created_at", "error", "destination", "attempts"):
                assert after[key] == failed[key], (key, after[key], failed[key])
        finally:
            set_routable(vhost, client.tenant_id, True)  # type: ignore[attr-defined]
        # Still retryable: this time it is queued and runs.
        deadline = time.monotonic() + 20
        while (r := client.post(f"/v1/tasks/{task_id}/retry")).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.3)
        assert r.status_code == 202, r.text
        again = wait_task(client, task_id, {"Failed"}, until=lambda t: t["attempts"] == 2)
        assert again["attempts"] == 2, again


def test_unconfirmed_tasks_of_a_batch_are_503_each(refusing: tuple[Platform, Vhost]) -> None:
    """A batch whose messages the broker refuses: those tasks are 503 (with a retry
    time), their records and ids taken back; a delayed task of the same batch, held by
    a timer in the database, is accepted all the same."""
    platform, vhost = refusing
    with platform.new_tenant() as client:
        assert deploy(client, "hello", "hello").status_code == 201
        set_routable(vhost, client.tenant_id, False)  # type: ignore[attr-defined]
        try:
            wait_refusing(client, "hello")
            r = client.post("/v1/functions/hello/invocations/batch", json={"tasks": [
                {"task_id": "batch-never"}, {"task_id": "batch-later", "delay_s": 3600}, {},
            ]})
            assert r.status_code == 200, r.text
            never, later, anonymous = r.json()["results"]
            for refused in (never, anonymous):
                assert refused["status"] == 503, refused
                assert refused["error"]["code"] == "unavailable", refused
                assert "broker" in refused["error"]["message"], refused
                assert refused["error"]["retry_after_s"] >= 1, refused
            assert later["status"] == 202 and later["task_id"] == "batch-later", later
            assert_error(client.get("/v1/tasks/batch-never"), 404, "not_found")
            assert client.get("/v1/tasks/batch-later").json()["status"] == "Enqueued"
        finally:
            set_routable(vhost, client.tenant_id, True)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while True:
            r = client.post("/v1/functions/hello/invocations/batch",
                            json={"tasks": [{"task_id": "batch-never"}]})
            assert r.status_code == 200, r.text
            (result,) = r.json()["results"]
            if result["status"] == 202:
                break
            assert result["status"] == 503 and time.monotonic() < deadline, result
            time.sleep(0.3)
        assert wait_task(client, "batch-never")["status"] == "Succeeded"
