"""The quick start, end to end: create a tenant, deploy hello, invoke it cold then warm."""

from __future__ import annotations

import httpx

from tests.harness import Platform, deploy


def test_quick_start(platform: Platform, tenant: httpx.Client) -> None:
    r = deploy(tenant, "hello", "hello")
    assert r.status_code == 201, r.text
    first = tenant.post("/v1/functions/hello/invocations", json={"name": "Ada"})
    assert first.status_code == 200, first.text
    assert first.json() == {"message": "hello, Ada"}
    assert first.headers["x-fnhost-start"] in ("stem", "cold")
    assert first.headers["x-request-id"]
    second = tenant.post("/v1/functions/hello/invocations", json={"name": "Bo"})
    assert second.json() == {"message": "hello, Bo"}
    assert second.headers["x-fnhost-start"] == "warm"
    assert second.headers["x-fnhost-container"] == first.headers["x-fnhost-container"]
