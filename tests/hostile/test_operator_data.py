"""Operators' data is not open to anyone: /metrics (it names tenants and functions)
needs the admin key or FNHOST_METRICS_TOKEN; /healthz and /readyz stay open and say
only each dependency's state, never a dependency's error text."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from runtime import constants as c
from runtime.broker import topology
from runtime.broker.control import CONTROL_KEY, ControlBus
from runtime.settings import load_settings
from tests.harness import ADMIN_KEY, MongoServer, Platform, Vhost, assert_error, own_platform

METRICS_TOKEN = "scrape-" + secrets.token_hex(16)
STATES = {"ok", "down", "unknown"}


@pytest.fixture(scope="module")
def scraped(mongo: MongoServer) -> Iterator[Platform]:
    """A platform whose operator set FNHOST_METRICS_TOKEN for their Prometheus."""
    with own_platform(mongo.url, metrics_token=METRICS_TOKEN) as p:
        yield p


def get_metrics(platform: Platform, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{platform.url}/metrics", headers=headers, timeout=10)


def test_metrics_without_credentials_is_401_and_names_no_tenant(
    scraped: Platform,
) -> None:
    with scraped.new_tenant() as tenant:
        r = get_metrics(scraped, None)
        assert_error(r, 401, "unauthorized")
        assert tenant.tenant_id not in r.text  # type: ignore[attr-defined]
        assert "fnhost_" not in r.text


def test_metrics_refuses_a_wrong_token_and_a_tenant_key(scraped: Platform) -> None:
    with scraped.new_tenant() as tenant:
        tenant_key = tenant.headers["Authorization"].split(" ", 1)[1]
        for token in ("wrong", METRICS_TOKEN[:-1], METRICS_TOKEN + "x", tenant_key, "Basic-ish"):
            r = get_metrics(scraped, token)
            assert r.status_code in (401, 403), (token, r.status_code, r.text[:200])
            assert_error(r, r.status_code)
            assert "fnhost_" not in r.text


def test_metrics_with_the_token_or_the_admin_key(scraped: Platform) -> None:
    for token in (METRICS_TOKEN, ADMIN_KEY):
        r = get_metrics(scraped, token)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain"), r.headers
        assert "# TYPE fnhost_invocations_total counter" in r.text
        # The cluster's series, labelled by scheduler, from its heartbeats.
        assert f'scheduler="{scraped.scheduler_id}"' in r.text


def test_health_routes_stay_open(scraped: Platform) -> None:
    assert httpx.get(f"{scraped.url}/healthz", timeout=10).json() == {"status": "ok"}
    r = httpx.get(f"{scraped.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "ready": True,
        "checks": {"rabbitmq": "ok", "mongodb": "ok", "scheduler": "ok", "docker": "ok"},
    }


# -- /readyz says states, not the Docker engine's words -------------------------------

ENGINE_SECRET = "engine says: permission denied on /var/run/docker.sock (uid 4242, " + secrets.token_hex(6)


@pytest.fixture
def gateway_alone(mongo: MongoServer) -> Iterator[Platform]:
    """A gateway with no scheduler of its own, on a vhost of its own."""
    vhost = Vhost().create()
    p = Platform(mongo.url, amqp_url=vhost.url)
    try:
        p.start(scheduler=False)
        yield p
    finally:
        p.stop()
        vhost.delete()


async def beat_without_docker(platform: Platform, seconds: float) -> None:
    """Heartbeats of a scheduler that cannot start containers, saying why in the
    engine's words, as a real one does (runtime/scheduler/service.py)."""
    settings = load_settings(
        amqp_url=platform.env["FNHOST_AMQP_URL"], admin_key=ADMIN_KEY,
        cluster_secret=platform.env["FNHOST_CLUSTER_SECRET"],
    )
    connection = await topology.connect(settings.amqp_url)
    control = ControlBus(connection, settings.cluster_id, settings.cluster_key(CONTROL_KEY))
    await control.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await control.publish(
                c.CTL_HEARTBEAT, scheduler="fake-" + platform.scheduler_id, address=None,
                docker=False, docker_problem=ENGINE_SECRET, started=time.time(), pool={}, flow={},
            )
            await asyncio.sleep(0.2)
    finally:
        await control.close()
        await connection.close()


def test_readyz_does_not_repeat_the_engines_error(gateway_alone: Platform) -> None:
    seen: list[httpx.Response] = []

    async def scenario() -> None:
        beats = asyncio.create_task(beat_without_docker(gateway_alone, 4.0))
        try:
            await asyncio.sleep(1.5)  # a few heartbeats in
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(5):
                    seen.append(await client.get(f"{gateway_alone.url}/readyz"))
                    await asyncio.sleep(0.1)
        finally:
            await beats

    asyncio.run(scenario())
    for r in seen:
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["checks"]["scheduler"] == "ok", body  # the heartbeats were heard
        assert body["checks"]["docker"] == "down", body
        assert set(body["checks"].values()) <= STATES, body
        assert "docker.sock" not in r.text and "permission" not in r.text, r.text
    # The detail is for the operator: in the gateway's log.
    assert ENGINE_SECRET in gateway_alone.logs["gateway"].read_text(errors="replace")
