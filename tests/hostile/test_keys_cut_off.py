"""A gateway cut off from RabbitMQ misses a key's revocation event: the key is dropped
there by the periodic reload while it is still cut off, and by the reload on
reconnection (resync) as soon as it is back.

The cut is real: each second gateway connects as a RabbitMQ user of its own, whose
connections are closed and refused while the first gateway's go on.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fault.faults import BrokerUser
from tests.harness import MongoServer, Platform, Vhost, eventually, free_port, wait_port


@pytest.fixture
def cut_platform(mongo: MongoServer) -> Iterator[tuple[Platform, Vhost]]:
    vhost = Vhost().create()
    platform = Platform(mongo.url, amqp_url=vhost.url)
    try:
        platform.start(scheduler=False)
        yield platform, vhost
    finally:
        platform.stop()
        vhost.delete()


def gateway_as(platform: Platform, user: BrokerUser, vhost: Vhost, name: str, refresh_s: float) -> str:
    """Another gateway, connected to the broker as `user`, reloading keys every `refresh_s`."""
    port = free_port()
    proc = platform.start_role("gateway", name, bind=f"127.0.0.1:{port}",
                               amqp_url=user.url(vhost.url), key_refresh_s=refresh_s)
    wait_port(port, 30, proc)
    return f"http://127.0.0.1:{port}"


def works(url: str, key: str) -> bool:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        status = client.get("/v1/functions").status_code
    assert status in (200, 401), status
    return status == 200


def test_a_revocation_missed_while_cut_off_takes_effect_by_reload_and_on_reconnection(
    cut_platform: tuple[Platform, Vhost],
) -> None:
    platform, vhost = cut_platform
    users = [BrokerUser(vhost.name).create() for _ in range(2)]
    try:
        # One gateway that reloads every 2 s, one that leaves it to the reconnection.
        reloading = gateway_as(platform, users[0], vhost, "gateway-reloading", 2)
        resyncing = gateway_as(platform, users[1], vhost, "gateway-resyncing", 3600)
        with platform.admin() as admin:
            r = admin.post("/v1/tenants", json={"name": "cut-" + secrets.token_hex(4)})
            assert r.status_code == 201, r.text
            tenant, key, key_id = r.json()["id"], r.json()["api_key"], r.json()["key_id"]
            eventually(lambda: works(reloading, key) and works(resyncing, key), 5, "the new key works")
            with users[0].cut_off(), users[1].cut_off():
                assert admin.delete(f"/v1/tenants/{tenant}/keys/{key_id}").status_code == 204
                assert not works(platform.url, key)
                # The event did not reach the cut-off gateways: the key still works there,
                # until the reload drops it where it runs every 2 s.
                assert works(resyncing, key)
                started = time.monotonic()
                eventually(lambda: not works(reloading, key), 10, "the reload drops the key")
                print(f"dropped by the reload after {time.monotonic() - started:.1f} s")
                assert works(resyncing, key)
            # Back on the broker: the reconnection reloads the keys.
            eventually(lambda: not works(resyncing, key), 30, "the resync drops the key")
    finally:
        for user in users:
            user.delete()
