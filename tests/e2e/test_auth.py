"""API keys, the admin key, tenant creation and tenant isolation."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.harness import ADMIN_KEY, Platform, assert_error, deploy, function_zip, returns

MANIFEST = {"handler": "main.handler", "memory_mb": 128, "timeout_s": 10}


def anonymous(platform: Platform, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.Client(base_url=platform.url, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/functions"),
        ("GET", "/v1/functions/hello"),
        ("PUT", "/v1/functions/hello"),
        ("PATCH", "/v1/functions/hello"),
        ("DELETE", "/v1/functions/hello"),
        ("POST", "/v1/functions/hello/invocations"),
        ("POST", "/v1/tenants"),
    ],
)
def test_no_authorization_is_401(platform: Platform, method: str, path: str) -> None:
    with anonymous(platform) as client:
        assert_error(client.request(method, path), 401, "unauthorized")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer fnk_nobody_" + secrets.token_urlsafe(32), "Bearer", "Basic dXNlcjpwYXNz", "fnk_no_scheme"],
)
def test_bad_key_is_401(platform: Platform, authorization: str) -> None:
    with httpx.Client(base_url=platform.url, headers={"Authorization": authorization}, timeout=30) as client:
        assert_error(client.get("/v1/functions"), 401, "unauthorized")
        assert_error(client.post("/v1/functions/hello/invocations", json={}), 401, "unauthorized")


def test_tenant_key_cannot_create_tenants(platform: Platform, tenant: httpx.Client) -> None:
    name = "t-" + secrets.token_hex(4)
    assert_error(tenant.post("/v1/tenants", json={"name": name}), 403, "forbidden")
    # Nothing was created: the admin can still create that name.
    with platform.admin() as admin:
        assert admin.post("/v1/tenants", json={"name": name}).status_code == 201


def test_admin_creates_a_tenant_whose_key_works(platform: Platform) -> None:
    name = "acme-" + secrets.token_hex(4)
    with platform.admin() as admin:
        r = admin.post("/v1/tenants", json={"name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name
    assert isinstance(body["id"], str) and body["id"]
    assert isinstance(body["api_key"], str) and len(body["api_key"]) >= 32
    with anonymous(platform, body["api_key"]) as client:
        r = client.get("/v1/functions")
        assert r.status_code == 200, r.text
        assert r.json() == {"functions": []}


def test_duplicate_tenant_name_is_409(platform: Platform) -> None:
    name = "dup-" + secrets.token_hex(4)
    with platform.admin() as admin:
        first = admin.post("/v1/tenants", json={"name": name})
        assert first.status_code == 201, first.text
        assert_error(admin.post("/v1/tenants", json={"name": name}), 409, "conflict")
    # The first tenant's key still works.
    with anonymous(platform, first.json()["api_key"]) as client:
        assert client.get("/v1/functions").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"name": "bad name!"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "-dash-first"},
        {"name": 42},
        {"title": "no name"},
        ["acme"],
    ],
)
def test_invalid_tenant_name_is_400(platform: Platform, body: object) -> None:
    with platform.admin() as admin:
        assert_error(admin.post("/v1/tenants", json=body), 400)


def test_tenant_body_that_is_not_json_is_400(platform: Platform) -> None:
    with platform.admin() as admin:
        r = admin.post("/v1/tenants", content=b"name=acme", headers={"Content-Type": "application/json"})
        assert_error(r, 400)


def test_admin_key_is_not_a_tenant_key(platform: Platform) -> None:
    with anonymous(platform, ADMIN_KEY) as client:
        assert_error(client.get("/v1/functions"), 401, "unauthorized")


def test_tenants_cannot_see_or_touch_each_other_functions(platform: Platform) -> None:
    a = platform.new_tenant()
    b = platform.new_tenant()
    try:
        created = deploy(a, "shared-name", function_zip(returns({"owner": "a"}), MANIFEST))
        assert created.status_code == 201, created.text
        assert a.post("/v1/functions/shared-name/invocations", json={}).json() == {"owner": "a"}

        assert b.get("/v1/functions").json() == {"functions": []}
        assert_error(b.get("/v1/functions/shared-name"), 404, "not_found")
        assert_error(b.patch("/v1/functions/shared-name", json={"memory_mb": 512}), 404, "not_found")
        assert_error(b.delete("/v1/functions/shared-name"), 404, "not_found")
        assert_error(b.post("/v1/functions/shared-name/invocations", json={}), 404, "not_found")

        # A's function is untouched and still works.
        r = a.get("/v1/functions/shared-name")
        assert r.status_code == 200, r.text
        assert r.json() == created.json()
        r = a.post("/v1/functions/shared-name/invocations", json={})
        assert r.status_code == 200, r.text
        assert r.json() == {"owner": "a"}

        # B may use the same name for its own function; each tenant runs its own.
        r = deploy(b, "shared-name", function_zip(returns({"owner": "b"}), {**MANIFEST, "memory_mb": 192}))
        assert r.status_code == 201, r.text
        assert b.post("/v1/functions/shared-name/invocations", json={}).json() == {"owner": "b"}
        assert a.post("/v1/functions/shared-name/invocations", json={}).json() == {"owner": "a"}
        assert a.get("/v1/functions/shared-name").json()["config"]["memory_mb"] == 128
        assert b.get("/v1/functions/shared-name").json()["config"]["memory_mb"] == 192

        # B deleting its own function leaves A's in place.
        assert b.delete("/v1/functions/shared-name").status_code == 204
        assert_error(b.get("/v1/functions/shared-name"), 404, "not_found")
        assert a.post("/v1/functions/shared-name/invocations", json={}).json() == {"owner": "a"}
    finally:
        a.close()
        b.close()
