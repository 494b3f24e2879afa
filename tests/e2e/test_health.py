"""Liveness, readiness, metrics, and refusing to start with a bad setting."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_KEY, ROOT, MongoServer, Platform, Vhost, deploy, free_port

READY_CHECKS = ("rabbitmq", "mongodb", "scheduler", "docker")


def readyz(platform: Platform) -> httpx.Response:
    return httpx.get(f"{platform.url}/readyz", timeout=10)


def wait_readyz(platform: Platform, status: int, within: float) -> dict[str, Any]:
    """Poll /readyz until it answers `status`; returns that answer's body."""
    deadline = time.monotonic() + within
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        last = readyz(platform)
        if last.status_code == status:
            body: dict[str, Any] = last.json()
            return body
        time.sleep(0.1)
    raise AssertionError(
        f"/readyz did not answer {status} within {within} s; last: "
        f"{last.status_code if last else None} {last.text if last else ''}\n{platform.tail()}"
    )


def started(platform: Platform, **kwargs: Any) -> Platform:
    try:
        return platform.start(**kwargs)
    except Exception:
        print(platform.tail())
        platform.stop()
        raise


@pytest.fixture(scope="module")
def vhost() -> Iterator[Vhost]:
    """A vhost of its own, so no other platform's scheduler counts as live here."""
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture
def no_scheduler(mongo: MongoServer, vhost: Vhost) -> Iterator[Platform]:
    p = started(Platform(mongo.url, amqp_url=vhost.url), scheduler=False)
    yield p
    p.stop()


@pytest.fixture
def own_platform(mongo: MongoServer, vhost: Vhost) -> Iterator[Platform]:
    """A platform whose scheduler a test may stop."""
    p = started(Platform(mongo.url, amqp_url=vhost.url, stem_cells=0))
    yield p
    p.stop()


def test_healthz(platform: Platform) -> None:
    r = httpx.get(f"{platform.url}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}


def test_readyz_reports_every_dependency_ok(platform: Platform) -> None:
    r = readyz(platform)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    for check in READY_CHECKS:
        assert body["checks"][check] == "ok", body


def test_health_routes_need_no_key(platform: Platform) -> None:
    # /metrics is not among them: it names tenants (tests/hostile/test_operator_data.py).
    for path in ("/healthz", "/readyz"):
        r = httpx.get(f"{platform.url}{path}", headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert r.status_code == 200, (path, r.text)


def test_readyz_without_a_scheduler_is_503(no_scheduler: Platform) -> None:
    assert httpx.get(f"{no_scheduler.url}/healthz", timeout=10).status_code == 200
    # Several heartbeat periods: no scheduler shows up, it stays 503.
    deadline = time.monotonic() + 2.0
    while True:
        r = readyz(no_scheduler)
        assert r.status_code == 503, r.text
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    body = r.json()
    assert body["ready"] is False
    checks = body["checks"]
    assert set(READY_CHECKS) <= set(checks), body
    assert checks["rabbitmq"] == "ok", body
    assert checks["mongodb"] == "ok", body
    assert checks["scheduler"] == "down", body
    assert checks["docker"] == "unknown", body


def test_readyz_follows_the_scheduler_going_and_coming_back(own_platform: Platform) -> None:
    wait_readyz(own_platform, 200, 5)

    own_platform.stop_role("scheduler")  # SIGTERM: an orderly stop
    body = wait_readyz(own_platform, 503, 5)
    assert body["checks"]["scheduler"] == "down", body

    own_platform.start_role("scheduler")
    wait_readyz(own_platform, 200, 60)

    own_platform.stop_role("scheduler", signal.SIGKILL)  # no goodbye: the heartbeat lapses
    body = wait_readyz(own_platform, 503, 10)
    assert body["checks"]["scheduler"] == "down", body

    own_platform.start_role("scheduler")  # same scheduler id: it cleans up what the killed one left
    wait_readyz(own_platform, 200, 60)


def test_metrics_is_prometheus_text_with_invocation_counts(platform: Platform, tenant: httpx.Client) -> None:
    assert deploy(tenant, "metered", "hello").status_code == 201
    r = tenant.post("/v1/functions/metered/invocations", json={"name": "m"})
    assert r.status_code == 200, r.text
    r = tenant.post("/v1/functions/metered/invocations", json={}, headers={"X-Invocation-Type": "DryRun"})
    assert r.status_code == 204, r.text

    r = httpx.get(f"{platform.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                  timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    text = r.text
    assert "# TYPE fnhost_invocations_total counter" in text
    for kind in ("RequestResponse", "DryRun"):
        samples = re.findall(
            rf'^fnhost_invocations_total\{{[^}}]*type="{kind}"[^}}]*\}} ([0-9.e+]+)$', text, re.M
        )
        assert samples and sum(float(s) for s in samples) >= 1, (kind, text)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FNHOST_STEM_CELLS", "x"),
        ("FNHOST_STEM_CELLS", "-1"),
        ("FNHOST_BIND", "nowhere"),
        ("FNHOST_AMQP_URL", "http://127.0.0.1:5672/"),
    ],
)
def test_gateway_with_an_invalid_setting_exits_naming_it(variable: str, value: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "FNHOST_BIND": f"127.0.0.1:{free_port()}",
        "FNHOST_ADMIN_KEY": "unused",
        "FNHOST_MONGO_URL": "mongodb://127.0.0.1:1",
        variable: value,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "gateway"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the gateway did not exit with {variable}={value!r}") from None
    assert proc.returncode != 0
    message = err.decode(errors="replace") + out.decode(errors="replace")
    assert variable in message, message
    assert "Traceback" not in message, message
