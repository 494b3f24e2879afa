"""Tenants (admin key): create one with its API key, show one with its usage against
its quotas, change its quotas; their API keys (admin key, or the tenant's own key); a
tenant's own usage (GET /v1/usage, its own key).

`POST /v1/tenants/{id}/keys` issues a key besides the tenant's others: the old ones
keep working until revoked, so that clients roll over to the new one without
downtime. `DELETE /v1/tenants/{id}/keys/{key_id}` revokes one on every gateway
(within a second: a control event; FNHOST_KEY_REFRESH_S while the broker is down).
`GET /v1/tenants/{id}/keys` lists key ids, prefixes and creation times, never a key.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.body import read_limited
from gateway.state import Services
from runtime import constants as c
from runtime import quotas as q
from runtime.errors import BadRequest, Unavailable
from runtime.models import check_name
from runtime.store.tenants import Tenant, hash_key, key_id


async def create_tenant(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    raw = await read_limited(request, 64 * 1024, "request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest('body must be JSON: {"name": "..."}') from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise BadRequest('body must be {"name": "..."}', field="name")
    name = check_name(body["name"], "name")
    tenant, api_key = await services.tenants.create(name)
    try:
        await services.publisher.ensure_tenant_queue(tenant.id)
        await services.control.publish(c.CTL_TENANT, tenant=tenant.id)
        await _announce(services, tenant, hash_key(api_key))
    except Unavailable:
        # Without its queue and the schedulers told, the tenant could not run tasks:
        # take it back, so that the same name can be created again once the broker is up.
        await services.tenants.delete(tenant.id)
        raise
    return JSONResponse(
        {"id": tenant.id, "name": tenant.name, "api_key": api_key, "key_id": key_id(hash_key(api_key))},
        201,
    )


async def _announce(services: Services, tenant: Tenant, digest: str) -> None:
    """A new key: known here at once, on the other gateways by the control event (sent
    before the key is handed out, so that it works there too by the time it is used)."""
    await services.control.publish(c.CTL_KEY, digest=digest, tenant=tenant.id, name=tenant.name)
    services.keys.add(digest, tenant)


async def issue_key(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant = await services.tenants.get(request.path_params["tenant"])
    api_key, info = await services.tenants.issue_key(tenant.id)
    try:
        await _announce(services, tenant, hash_key(api_key))
    except Unavailable:
        await services.tenants.revoke_key(tenant.id, info.id)  # not handed out: take it back
        raise
    return JSONResponse({**info.to_json(), "api_key": api_key}, 201)


async def list_keys(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant = await services.tenants.get(request.path_params["tenant"])
    keys = await services.tenants.keys(tenant.id)
    return JSONResponse({"keys": [k.to_json() for k in keys]})


async def revoke_key(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant_id = request.path_params["tenant"]
    digest = await services.tenants.revoke_key(tenant_id, request.path_params["key_id"])
    services.keys.revoke(digest)
    # Revoked in the database already: if the broker cannot take the event now, it is
    # sent when it can, and the other gateways' reload drops the key meanwhile.
    await services.control.publish_or_later(c.CTL_KEY, digest=digest, tenant=tenant_id, revoked=True)
    return Response(status_code=204)


async def get_tenant(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant, overrides = await services.tenants.get_with_quotas(request.path_params["tenant_id"])
    report = await services.quotas.report(tenant.id)
    return JSONResponse({"id": tenant.id, "name": tenant.name, **report, "overrides": overrides})


async def patch_tenant(request: Request) -> JSONResponse:
    """`{"quotas": {"functions": 10, "queued_tasks": null}}`: set quotas of one tenant
    (null: back to the default). Gateways apply them within FNHOST_QUOTA_REFRESH_S."""
    services: Services = request.app.state.services
    raw = await read_limited(request, 64 * 1024, "request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest('body must be JSON: {"quotas": {...}}') from None
    if not isinstance(body, dict) or set(body) != {"quotas"}:
        raise BadRequest('body must be {"quotas": {"<quota>": <number or null>, ...}}', field="quotas")
    changes = q.parse_overrides(body["quotas"])
    tenant = await services.tenants.get(request.path_params["tenant_id"])
    overrides = await services.tenants.set_quotas(tenant.id, changes)
    report = await services.quotas.report(tenant.id)
    services.quotas.overridden(tenant.id, report["quotas"])
    return JSONResponse({"id": tenant.id, "name": tenant.name, **report, "overrides": overrides})


async def own_usage(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    return JSONResponse({"id": tenant.id, **await services.quotas.report(tenant.id)})


routes = [
    Route("/v1/tenants", create_tenant, methods=["POST"]),
    Route("/v1/tenants/{tenant}/keys", issue_key, methods=["POST"]),
    Route("/v1/tenants/{tenant}/keys", list_keys, methods=["GET"]),
    Route("/v1/tenants/{tenant}/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/v1/tenants/{tenant_id}", get_tenant, methods=["GET"]),
    Route("/v1/tenants/{tenant_id}", patch_tenant, methods=["PATCH"]),
    Route("/v1/usage", own_usage, methods=["GET"]),
]
