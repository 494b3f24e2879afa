"""Dead letters: a message redelivered too often (it crashed its scheduler each time)
is dead-lettered by RabbitMQ, and the task is marked Failed, not lost.

Two clusters share one RabbitMQ vhost here. The dead-letter exchange is a fanout
to one queue per cluster, so each cluster sees every dead letter and handles only
its own tenants': neither can take (and drop) the other's.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import aio_pika
import httpx
import pytest

from runtime.broker import topology
from runtime.settings import load_settings
from runtime.tasks.submit import message_headers
from tests.harness import MongoServer, Platform, Vhost, deploy, queue_state, submit_event, wait_task


async def declare_legacy_queue(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            topology.LEGACY_DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )


async def queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True


@pytest.fixture(scope="module")
def vhost() -> Iterator[Vhost]:
    shared = Vhost().create()
    # As an earlier version left it: the one dead-letter queue of every cluster.
    asyncio.run(declare_legacy_queue(shared.url))
    yield shared
    shared.delete()


@pytest.fixture(scope="module")
def clusters(mongo: MongoServer, vhost: Vhost) -> Iterator[tuple[Platform, Platform]]:
    first = Platform(mongo.url, amqp_url=vhost.url)
    second = Platform(mongo.url, amqp_url=vhost.url)
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


def cluster_id(platform: Platform) -> str:
    return load_settings(
        admin_key=platform.env["FNHOST_ADMIN_KEY"],
        cluster_secret=platform.env["FNHOST_CLUSTER_SECRET"],
    ).cluster_id


async def dead_letter(amqp_url: str, headers: dict[str, object]) -> None:
    """What RabbitMQ does with a message past its delivery limit: publish it to the
    dead-letter exchange (with its headers)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await topology.dead_letter_exchange(channel)
        await exchange.publish(
            aio_pika.Message(b"{}", headers=headers, content_type="application/json"),
            routing_key="",
        )


def ready(amqp_url: str, name: str) -> int:
    """Messages ready in a queue that must exist."""
    state = queue_state(amqp_url, name)
    assert state is not None, f"queue {name} does not exist"
    return state[0]


def test_each_cluster_fails_its_own_dead_letters_only(
    clusters: tuple[Platform, Platform], vhost: Vhost
) -> None:
    first, second = clusters
    # Empty, so the schedulers deleted it (a quorum queue refuses an if-empty delete).
    assert not asyncio.run(queue_exists(vhost.url, topology.LEGACY_DEAD_LETTER_QUEUE))
    clients: list[httpx.Client] = [first.new_tenant(), second.new_tenant()]
    try:
        task_ids = []
        for client in clients:
            assert deploy(client, "hello", "hello").status_code == 201
            # Delayed: the task waits in a timer, so only the dead letter can end it.
            r = submit_event(client, "hello", {}, headers={"X-Delay-Seconds": "600"})
            assert r.status_code == 202, r.text
            task_ids.append(r.headers["x-task-id"])
        for client, task_id in zip(clients, task_ids, strict=True):
            headers = message_headers(
                tenant=client.tenant_id,  # type: ignore[attr-defined]
                function="hello", task_id=task_id, request_id=secrets.token_hex(8),
                created_at=datetime.now(UTC), attempt=1, task_mode=True,
            )
            asyncio.run(dead_letter(vhost.url, headers))
        stranger = message_headers(
            tenant="t-of-no-cluster", function="hello", task_id="x", request_id="r",
            created_at=datetime.now(UTC), attempt=1, task_mode=True,
        )
        asyncio.run(dead_letter(vhost.url, stranger))

        for client, task_id in zip(clients, task_ids, strict=True):
            task = wait_task(client, task_id, timeout=20)
            assert task["status"] == "Failed", task
            assert task["error"]["errorType"] == "Fnhost.PoisonMessage", task
        for platform in clusters:
            name = topology.dead_letter_queue(cluster_id(platform))
            deadline = 50
            while ready(vhost.url, name) and deadline:
                deadline -= 1
                asyncio.run(asyncio.sleep(0.1))
            assert ready(vhost.url, name) == 0, f"{name} kept a dead letter"
    finally:
        for client in clients:
            client.close()
