"""API keys under attack: a flood of made-up keys costs the database nothing, keys
are issued and revoked (a tenant for itself too), and a revoked key is refused on
every gateway within a second."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import ADMIN_KEY, Platform, assert_error

REVOKED_WITHIN_S = 1.0


def as_key(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def new_tenant(platform: Platform) -> tuple[str, str, str]:
    """A fresh tenant: (id, api key, key id)."""
    with platform.admin() as admin:
        r = admin.post("/v1/tenants", json={"name": "keys-" + secrets.token_hex(4)})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["id"], body["api_key"], body["key_id"]


def metric(platform: Platform, url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


def works(url: str, key: str) -> bool:
    with as_key(url, key) as client:
        status = client.get("/v1/functions").status_code
    assert status in (200, 401), status
    return status == 200


def refused_within(urls: list[str], key: str, limit_s: float) -> list[float]:
    """Seconds until each gateway refused `key`, polled from the moment of the call."""
    started = time.monotonic()
    took: list[float] = []
    for url in urls:
        while works(url, key):
            assert time.monotonic() - started < limit_s, f"{url} still takes the revoked key"
            time.sleep(0.01)
        took.append(time.monotonic() - started)
    return took


@pytest.fixture
def gateways(platform: Platform, second_gateway: str) -> Iterator[list[str]]:
    yield [platform.url, second_gateway]


def test_a_tenant_rotates_its_key_on_two_gateways_without_downtime(
    platform: Platform, gateways: list[str]
) -> None:
    tenant, old, old_id = new_tenant(platform)
    first, second = gateways
    with as_key(first, old) as client:
        r = client.post(f"/v1/tenants/{tenant}/keys")
    assert r.status_code == 201, r.text
    issued = r.json()
    new = issued["api_key"]
    assert set(issued) == {"id", "api_key", "prefix", "created_at"} and new != old
    assert new.startswith(issued["prefix"]) and len(issued["prefix"]) < len(new) // 2
    # At once on both gateways (the second heard it on the control bus), and the old
    # key keeps working until it is revoked.
    for url in gateways:
        assert works(url, new) and works(url, old)
    with as_key(second, new) as client:
        listed = client.get(f"/v1/tenants/{tenant}/keys")
    assert listed.status_code == 200, listed.text
    assert [k["id"] for k in listed.json()["keys"]] == [old_id, issued["id"]]
    assert old not in listed.text and new not in listed.text
    assert all(set(k) == {"id", "prefix", "created_at"} for k in listed.json()["keys"])
    # Revoked on the second gateway with the new key: refused on both within a second.
    with as_key(second, new) as client:
        assert client.delete(f"/v1/tenants/{tenant}/keys/{old_id}").status_code == 204
    took = refused_within([first, second], old, REVOKED_WITHIN_S)
    print(f"revoked key refused after {[round(t * 1000, 1) for t in took]} ms")
    for url in gateways:
        assert works(url, new)
        with as_key(url, old) as client:
            assert_error(client.post(f"/v1/tenants/{tenant}/keys"), 401, "unauthorized")


def test_the_admin_issues_and_revokes_and_a_revoked_key_stays_revoked(
    platform: Platform, gateways: list[str]
) -> None:
    tenant, key, key_id = new_tenant(platform)
    first, second = gateways
    with as_key(second, ADMIN_KEY) as admin:
        r = admin.post(f"/v1/tenants/{tenant}/keys")
        assert r.status_code == 201, r.text
        spare = r.json()["api_key"]
        assert admin.delete(f"/v1/tenants/{tenant}/keys/{key_id}").status_code == 204
        # A second revocation of the same key: it is gone.
        assert_error(admin.delete(f"/v1/tenants/{tenant}/keys/{key_id}"), 404, "not_found")
    refused_within([first, second], key, REVOKED_WITHIN_S)
    assert works(first, spare) and works(second, spare)
    time.sleep(1.1)  # past the once-a-second lookup of keys naming a known tenant
    assert not works(first, key) and not works(second, key)


def test_a_tenant_manages_its_own_keys_only(platform: Platform) -> None:
    mine, my_key, _ = new_tenant(platform)
    theirs, their_key, their_key_id = new_tenant(platform)
    with as_key(platform.url, my_key) as me:
        for method, path in [("POST", f"/v1/tenants/{theirs}/keys"),
                             ("GET", f"/v1/tenants/{theirs}/keys"),
                             ("DELETE", f"/v1/tenants/{theirs}/keys/{their_key_id}")]:
            assert_error(me.request(method, path), 403, "forbidden")
        # Nor any other admin route, nor the keys of a tenant that does not exist.
        assert_error(me.post("/v1/tenants", json={"name": "x" + secrets.token_hex(4)}), 403, "forbidden")
        assert_error(me.post("/v1/tenants/tnothere0000/keys"), 403, "forbidden")
        assert_error(me.delete(f"/v1/tenants/{mine}/keys/{their_key_id}"), 404, "not_found")
    assert works(platform.url, their_key)
    with platform.admin() as admin:
        assert_error(admin.post("/v1/tenants/tnothere0000/keys"), 404, "not_found")
        assert [k["id"] for k in admin.get(f"/v1/tenants/{theirs}/keys").json()["keys"]] == [their_key_id]


def test_keys_of_a_tenant_are_bounded(platform: Platform) -> None:
    tenant, key, _ = new_tenant(platform)
    with as_key(platform.url, key) as client:
        issued = [client.post(f"/v1/tenants/{tenant}/keys") for _ in range(9)]
        assert [r.status_code for r in issued] == [201] * 9
        assert_error(client.post(f"/v1/tenants/{tenant}/keys"), 409, "conflict")
        assert client.delete(f"/v1/tenants/{tenant}/keys/{issued[0].json()['id']}").status_code == 204
        assert client.post(f"/v1/tenants/{tenant}/keys").status_code == 201


def test_a_flood_of_made_up_keys_costs_no_database_lookup_and_is_held_back(platform: Platform) -> None:
    tenant, key, _ = new_tenant(platform)
    before = {name: metric(platform, platform.url, name) for name in
              ("fnhost_key_lookups_total", "fnhost_auth_refused_total", "fnhost_auth_held_total")}
    sent = 0
    lock = threading.Lock()
    stop = threading.Event()

    def flood(prefix: str) -> None:
        nonlocal sent
        with httpx.Client(base_url=platform.url, timeout=30) as client:
            while not stop.is_set():
                made_up = prefix + secrets.token_urlsafe(32)
                r = client.get("/v1/functions", headers={"Authorization": f"Bearer {made_up}"})
                assert r.status_code == 401
                with lock:
                    sent += 1

    # Keys naming no tenant, and keys naming a real one, from 8 connections for 3 s.
    threads = [threading.Thread(target=flood, args=(p,)) for p in ["fnk_", f"fnk_{tenant}_"] * 4]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        # Meanwhile the tenant's own key, from the same address, is answered at once.
        started = time.monotonic()
        assert works(platform.url, key)
        assert time.monotonic() - started < 0.5
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = {name: metric(platform, platform.url, name) - value for name, value in before.items()}
    assert after["fnhost_auth_refused_total"] >= sent > 0
    # Held back: past 20 a second, each connection gets one answer a second.
    assert after["fnhost_auth_held_total"] >= 8, after
    assert sent <= 3 * (20 + 8) + 8, sent
    # No lookup for keys naming no tenant; for those naming one, once a second at most.
    assert after["fnhost_key_lookups_total"] <= 3 + 1, after
