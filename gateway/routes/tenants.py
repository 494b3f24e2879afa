"""POST /v1/tenants (admin key): create a tenant and its API key."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.body import read_limited
from gateway.state import Services
from runtime import constants as c
from runtime.errors import BadRequest, Unavailable
from runtime.models import check_name


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


routes = [Route("/v1/tenants", create_tenant, methods=["POST"])]
