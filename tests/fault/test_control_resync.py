"""A scheduler cut off from RabbitMQ misses the control events broadcast meanwhile
(a tenant created, a function changed); once its connection is restored it reloads
what they would have told it, so it consumes the new tenant's queue.

The cut is real: the scheduler connects as a RabbitMQ user of its own, whose
connections are closed and refused while the gateway's go on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fault.faults import BrokerUser
from tests.harness import MongoServer, Platform, Vhost, deploy, submit_event, wait_port, wait_task


@pytest.fixture
def split_platform(mongo: MongoServer) -> Iterator[tuple[Platform, BrokerUser]]:
    """A platform on its own vhost whose scheduler uses a broker user of its own."""
    vhost = Vhost().create()
    user = BrokerUser(vhost.name).create()
    platform = Platform(mongo.url, amqp_url=vhost.url)
    try:
        platform.env["FNHOST_AMQP_URL"] = user.url(vhost.url)
        platform.start_role("scheduler")
        platform.env["FNHOST_AMQP_URL"] = vhost.url
        wait_port(platform.port, 30, platform.start_role("gateway"))
        platform.wait_ready(60)
        yield platform, user
    finally:
        platform.stop()
        user.delete()
        vhost.delete()


def test_a_tenant_created_while_a_scheduler_is_cut_off_is_consumed_after(
    split_platform: tuple[Platform, BrokerUser],
) -> None:
    platform, user = split_platform
    before = platform.new_tenant()
    client = platform.new_tenant()
    try:
        assert deploy(before, "hello", "hello").status_code == 201
        task_id = submit_event(before, "hello", {}).headers["x-task-id"]
        assert wait_task(before, task_id)["status"] == "Succeeded"
        with user.cut_off():
            # The gateway is still connected: the tenant is created, announced on the
            # control bus (the scheduler does not hear it), and takes a task.
            after = platform.new_tenant()
            client.close()
            client = after
            assert deploy(client, "hello", "hello").status_code == 201
            r = submit_event(client, "hello", {"name": "missed"})
            assert r.status_code == 202, r.text
        # The scheduler is back on the broker: the tenant it knew is served again ...
        known = submit_event(before, "hello", {}).headers["x-task-id"]
        assert wait_task(before, known, timeout=30)["status"] == "Succeeded"
        # ... and so is the one it was not told about.
        task = wait_task(client, r.headers["x-task-id"], timeout=30)
        assert task["status"] == "Succeeded", platform.tail()
    finally:
        before.close()
        client.close()
