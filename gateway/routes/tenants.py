"""Tenants: create one with its API key, show one with its usage against its quotas,
change its quotas (admin key); a tenant's own usage (GET /v1/usage, its own key)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.body import read_limited
from gateway.state import Services
from runtime import constants as c
from runtime import quotas as q
from runtime.errors import BadRequest, Unavailable
from runtime.models import check_name
from runtime.store.tenants import Tenant


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
    except Unavailable:
        # Without its queue and the schedulers told, the tenant could not run tasks:
        # take it back, so that the same name can be created again once the broker is up.
        await services.tenants.delete(tenant.id)
        raise
    return JSONResponse({"id": tenant.id, "name": tenant.name, "api_key": api_key}, 201)


async def get_tenant(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant, overrides = await services.tenants.get(request.path_params["tenant_id"])
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
    tenant, _ = await services.tenants.get(request.path_params["tenant_id"])
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
    Route("/v1/tenants/{tenant_id}", get_tenant, methods=["GET"]),
    Route("/v1/tenants/{tenant_id}", patch_tenant, methods=["PATCH"]),
    Route("/v1/usage", own_usage, methods=["GET"]),
]
