"""An idle tenant costs no consumer (runtime/scheduler/consumers.py, runtime/broker/hints.py).

A scheduler consumes a tenant's queue only while it has work: it starts on the
work hint a publisher sends, stops once the queue has been idle for
`queue_idle_s`, and a sweep of queue depths finds messages no hint announced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    Webhook,
    consumers,
    deploy,
    eventually,
    function_zip,
    own_platform,
    returns,
    submit_event,
    wait_task,
)


@pytest.fixture(scope="module")
def idle_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, queue_idle_s=2, queue_sweep_s=1) as p:
        yield p


@pytest.fixture
def client(idle_platform: Platform) -> Iterator[httpx.Client]:
    c = idle_platform.new_tenant()
    yield c
    c.close()


def test_consumed_only_while_it_has_work(idle_platform: Platform, client: httpx.Client) -> None:
    amqp_url = idle_platform.env["FNHOST_AMQP_URL"]
    queue = f"fnhost.t.{client.tenant_id}"  # type: ignore[attr-defined]
    assert deploy(client, "f", function_zip(returns(1))).status_code == 201
    for _ in range(3):
        r = submit_event(client, "f", {})
        assert r.status_code == 202, r.text
        started = time.monotonic()
        assert wait_task(client, r.headers["x-task-id"], timeout=15)["status"] == "Succeeded"
        assert time.monotonic() - started < 5
        assert consumers(amqp_url, queue) == 1  # consumed while it has work...
        eventually(lambda: consumers(amqp_url, queue) == 0, 10, "no consumer once idle")  # ...only


def test_sweep_finds_work_no_hint_announced(idle_platform: Platform, client: httpx.Client) -> None:
    import aio_pika

    tenant = client.tenant_id  # type: ignore[attr-defined]
    with Webhook() as hook:
        config = {"async": {"task_mode": False, "on_success": {"type": "webhook", "url": hook.url}}}
        assert deploy(client, "g", function_zip(returns("swept")), config).status_code == 201
        r = submit_event(client, "g", {})  # declares the queue; then idle again
        assert r.status_code == 202
        hook.wait(1)
        eventually(lambda: consumers(idle_platform.env["FNHOST_AMQP_URL"], f"fnhost.t.{tenant}") == 0,
              10, "no consumer once idle")
        task_id = str(uuid.uuid4())

        async def publish_behind_the_platforms_back() -> None:
            connection = await aio_pika.connect(idle_platform.env["FNHOST_AMQP_URL"])
            try:
                channel = await connection.channel()
                exchange = await channel.get_exchange("fnhost.invoke")
                headers = {"tenant": tenant, "function": "g", "task_id": task_id,
                           "request_id": task_id, "created_ms": int(time.time() * 1000),
                           "attempt": 1, "task_mode": False}
                await exchange.publish(
                    aio_pika.Message(b"{}", headers=headers, content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=tenant,
                )
            finally:
                await connection.close()

        asyncio.run(publish_behind_the_platforms_back())
        record = hook.wait(1, timeout=15, task_id=task_id)[0]["json"]
        assert record["requestContext"]["condition"] == "Success", record
