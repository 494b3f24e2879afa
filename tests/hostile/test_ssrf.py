"""Server-side request forgery through webhook destinations, end to end (issue 13).

A tenant sets `on_success`/`on_failure` to an address inside the operator's
network. The test platforms allow 127.0.0.1/32 (their receivers); every other
loopback address stands for the network behind the scheduler: 127.0.0.2 and
[::1]. Only loopback traffic is sent: private, link-local and public addresses
are covered by the pure policy tests (tests/hostile/test_webhook_policy.py).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    Vhost,
    Webhook,
    assert_error,
    deploy,
    submit_event,
    wait_port,
    wait_task,
)

SECRET = "s3cr3t-" + secrets.token_hex(4)

# 127.0.0.2 and ::1 spelled every way a URL can: none may become a destination.
REFUSED_HOSTS = [
    "127.0.0.2", "0x7f000002", "017700000002", "2130706434", "127.2", "0x7f.0.0.2", "127.0.0.2.",
    "[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "[::1]", "[0:0:0:0:0:0:0:1]", "0.0.0.0", "[::]",
]


def hook_config(url: str, key: str = "on_success") -> dict[str, Any]:
    return {"async": {"max_retry_attempts": 0, key: {"type": "webhook", "url": url}}}


@pytest.fixture
def receiver() -> Iterator[Webhook]:
    """A receiver on 127.0.0.2: outside the allowed network."""
    with Webhook(host="127.0.0.2") as hook:
        yield hook


# -- refused when the destination is set ------------------------------------------------


@pytest.mark.parametrize("host", REFUSED_HOSTS)
@pytest.mark.parametrize("key", ["on_success", "on_failure"])
def test_a_refused_address_is_refused_at_upload(tenant: httpx.Client, receiver: Webhook, host: str,
                                                key: str) -> None:
    url = f"http://{host}:{receiver.port}/api/definitions"
    r = deploy(tenant, "hello", "hello", hook_config(url, key))
    error = assert_error(r, 400, "invalid_config", f"async.{key}.url")
    assert "FNHOST_WEBHOOK_ALLOWED_NETWORKS" in error["message"] or "write it as" in error["message"]
    assert tenant.get("/v1/functions/hello").status_code == 404  # nothing was stored


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_refused_address_is_refused_by_patch(tenant: httpx.Client, webhook: Webhook,
                                               receiver: Webhook, host: str) -> None:
    assert deploy(tenant, "hello", "hello", hook_config(webhook.url)).status_code == 201
    url = f"http://{host}:{receiver.port}/hook"
    r = tenant.patch("/v1/functions/hello", json={"async": {"on_success": {"type": "webhook", "url": url}}})
    assert_error(r, 400, "invalid_config", "async.on_success.url")
    config = tenant.get("/v1/functions/hello").json()["config"]
    assert config["async"]["on_success"]["url"] == webhook.url  # unchanged


def test_credentials_in_the_url_are_refused_and_never_shown(
    platform: Platform, tenant: httpx.Client, webhook: Webhook
) -> None:
    url = webhook.url.replace("http://", f"http://admin:{SECRET}@")
    r = deploy(tenant, "hello", "hello", hook_config(url))
    error = assert_error(r, 400, "invalid_config", "async.on_success.url")
    assert "credentials" in error["message"] and SECRET not in r.text
    assert deploy(tenant, "hello", "hello", hook_config(webhook.url)).status_code == 201
    r = tenant.patch("/v1/functions/hello", json={"async": {"on_failure": {"type": "webhook", "url": url}}})
    assert_error(r, 400, "invalid_config", "async.on_failure.url")
    assert SECRET not in r.text
    assert tenant.get("/v1/functions/hello").json()["config"]["async"].get("on_failure") is None
    for log in platform.logs.values():
        assert SECRET not in log.read_text(errors="replace")


def test_the_allowed_network_is_still_reached(tenant: httpx.Client, webhook: Webhook) -> None:
    assert deploy(tenant, "hello", "hello", hook_config(webhook.url)).status_code == 201
    r = submit_event(tenant, "hello", {"name": "x"})
    assert r.status_code == 202, r.text
    task = wait_task(tenant, r.headers["x-task-id"], until=lambda t: t.get("destination"))
    assert task["destination"]["status"] == "delivered", task
    assert len(webhook.wait(1)) == 1


# -- refused when connecting: a destination stored before the policy narrowed --------------


@pytest.fixture(scope="module")
def narrowed(mongo: MongoServer) -> Iterator[Platform]:
    """A platform whose gateway still accepts all of loopback as webhooks while its
    scheduler allows 127.0.0.1/32 only: destinations stored before the operator
    narrowed FNHOST_WEBHOOK_ALLOWED_NETWORKS (or before the policy existed)."""
    vhost = Vhost().create()
    p = Platform(mongo.url, amqp_url=vhost.url)
    try:
        p.start_role("scheduler")
        gateway = p.start_role("gateway", webhook_allowed_networks="127.0.0.0/8,::1/128")
        wait_port(p.port, 30, gateway)
        p.wait_ready()
        yield p
    except Exception:
        print(p.tail())
        raise
    finally:
        p.stop()
        vhost.delete()


@pytest.mark.parametrize(("listen", "host"), [
    ("127.0.0.2", "127.0.0.2"),
    ("127.0.0.2", "[::ffff:127.0.0.2]"),
    ("::1", "[::1]"),
])
def test_a_stored_refused_destination_is_recorded_as_refused(narrowed: Platform, listen: str,
                                                             host: str) -> None:
    with Webhook(host=listen) as inside, narrowed.new_tenant() as tenant:
        url = f"http://{host}:{inside.port}/api/definitions"
        r = deploy(tenant, "hello", "hello", hook_config(url))
        assert r.status_code == 201, r.text  # this gateway accepts it
        r = submit_event(tenant, "hello", {"name": "x"})
        assert r.status_code == 202, r.text
        task = wait_task(tenant, r.headers["x-task-id"], until=lambda t: t.get("destination"))
        assert task["status"] == "Succeeded", task
        destination = task["destination"]
        assert {k: destination[k] for k in ("type", "status", "attempts", "error")} == {
            "type": "webhook", "status": "refused", "attempts": 1, "error": "address not allowed",
        }, destination
        assert inside.posts == []


def test_a_refused_port_and_a_closed_one_look_the_same(narrowed: Platform) -> None:
    """No port scanning: whether something listens at a refused address does not show."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        closed = sock.getsockname()[1]
    with Webhook(host="127.0.0.2") as listening, narrowed.new_tenant() as tenant:
        shown = []
        for port in (listening.port, closed):
            url = f"http://127.0.0.2:{port}/"
            assert deploy(tenant, "hello", "hello", hook_config(url)).status_code in (200, 201)
            r = submit_event(tenant, "hello", {"name": "x"})
            assert r.status_code == 202, r.text
            task = wait_task(tenant, r.headers["x-task-id"], until=lambda t: t.get("destination"))
            shown.append({k: task["destination"][k] for k in ("status", "attempts", "error")})
        assert listening.posts == []
    assert shown[0] == shown[1] == {"status": "refused", "attempts": 1, "error": "address not allowed"}
