"""Function CRUD: PUT (upload a bundle), GET, PATCH (config), DELETE."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.body import read_limited
from gateway.state import Services
from runtime import constants as c
from runtime.bundles import Bundle, BundleLimits, inspect_bundle
from runtime.errors import BadRequest, FnhostError, InvalidConfig
from runtime.models import CONFIG_KEYS, FunctionConfig, WebhookDestination, check_name, merge_config
from runtime.store.functions import FunctionRecord
from runtime.store.tenants import Tenant
from runtime.webhook_policy import WebhookPolicy

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
MULTIPART_SLACK = 1 << 20


class UnsupportedMediaType(FnhostError):
    status = 415
    code = "unsupported_media_type"


def _limits(services: Services) -> BundleLimits:
    s = services.settings
    return BundleLimits(s.bundle_max_bytes, s.bundle_max_unpacked_bytes, s.bundle_max_entries)


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidConfig(f"{what} is not valid JSON", field=what) from None
    if not isinstance(value, dict):
        raise InvalidConfig(f"{what} must be a JSON object", field=what)
    return value


async def _read_upload(request: Request, services: Services) -> tuple[bytes, dict[str, Any] | None]:
    """The zip bytes and the config override from a zip or multipart body."""
    limit = services.settings.bundle_max_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ZIP_TYPES:
        return await read_limited(request, limit, "bundle"), None
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "send the bundle as application/zip, or multipart/form-data with parts "
            "'code' (zip) and 'config' (JSON)"
        )
    await read_limited(request, limit + MULTIPART_SLACK, "upload")
    async with request.form(max_files=2, max_fields=4, max_part_size=1 << 20) as form:
        code = form.get("code")
        if code is None:
            raise BadRequest("multipart upload needs a 'code' part with the zip", field="code")
        data = await code.read() if isinstance(code, UploadFile) else code.encode()
        config = form.get("config")
        override = None
        if config is not None:
            raw = await config.read() if isinstance(config, UploadFile) else config
            override = _json_object(raw, "config")
    return data, override


async def _inspect(data: bytes, services: Services, override: dict[str, Any] | None) -> Bundle:
    limits = _limits(services)
    if len(data) < (1 << 20):
        return inspect_bundle(data, limits, override)
    return await asyncio.to_thread(inspect_bundle, data, limits, override)


def check_webhooks(config: FunctionConfig, policy: WebhookPolicy) -> None:
    """A function's webhook destinations must carry no credentials and must not spell an
    address the policy refuses (a name is judged when it is connected to)."""
    for key in ("on_success", "on_failure"):
        destination = getattr(config.async_, key)
        if isinstance(destination, WebhookDestination):
            problem = policy.url_problem(destination.url)
            if problem is not None:
                field = f"async.{key}.url"
                raise InvalidConfig(f"invalid config value for {field}: {problem.message}", field=field)


async def announce(services: Services, record: FunctionRecord | None, tenant: str, name: str) -> None:
    """Drop cached copies here at once, and everywhere else through the control bus."""
    services.cache.invalidate(tenant, name)
    if record is not None:
        services.cache.put(record)
    await services.control.publish_or_later(
        c.CTL_FUNCTION, tenant=tenant, name=name,
        sha256=record.sha256 if record is not None else None,
        revision=record.revision if record is not None else None,
    )


async def put_function(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    name = check_name(request.path_params["name"], "function name")
    data, override = await _read_upload(request, services)
    bundle = await _inspect(data, services, override)
    existing = await services.functions.get(tenant.id, name)
    if existing is not None:
        # New code keeps the function's configuration except what the upload names.
        named = {k: v for k, v in bundle.manifest.items() if k in CONFIG_KEYS}
        config = merge_config(merge_config(existing.config, named), override or {})
        if config != bundle.config:
            bundle = await _inspect(data, services, config.dump())
    check_webhooks(bundle.config, services.webhook_policy)
    await services.quotas.check_upload(
        tenant.id, name, existing, bundle.config, sha256=bundle.sha256, version=bundle.version,
        size=bundle.size,
    )
    await services.functions.save_bundle(tenant.id, bundle.sha256, data)
    record, created = await services.functions.put(
        tenant.id, name, bundle.config, version=bundle.version, sha256=bundle.sha256,
        pickle=bundle.pickle, bundle_size=bundle.size, manifest=bundle.manifest,
    )
    await announce(services, record, tenant.id, name)
    return JSONResponse(record.describe(), status_code=201 if created else 200)


async def list_functions(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    records = await services.functions.list(tenant.id)
    return JSONResponse({"functions": [r.describe() for r in records]})


async def get_function(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    record = await services.functions.require(tenant.id, request.path_params["name"])
    return JSONResponse(record.describe())


async def patch_function(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    record = await services.functions.require(tenant.id, request.path_params["name"])
    patch = _json_object(await read_limited(request, 64 * 1024, "config"), "config")
    config = merge_config(record.config, patch)
    check_webhooks(config, services.webhook_policy)
    if config.handler != record.config.handler:
        # The new handler must exist in the current bundle, as at upload.
        data = await services.functions.load_bundle(tenant.id, record.sha256)
        await _inspect(data, services, config.dump())
    await services.quotas.check_config(tenant.id, record.name, record, config)
    record = await services.functions.update_config(record, config)
    await announce(services, record, tenant.id, record.name)
    return JSONResponse(record.describe())


async def delete_function(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    name = request.path_params["name"]
    await services.functions.require(tenant.id, name)
    await services.functions.delete(tenant.id, name)
    await announce(services, None, tenant.id, name)
    # Its queued tasks will never run: they become Invalid now (the scheduler also
    # marks any it dequeues later).
    await services.tasks.mark_function_tasks(
        tenant.id, name, frozenset({"Enqueued", "Retrying", "Processed"}), "Invalid"
    )
    return Response(status_code=204)


routes = [
    Route("/v1/functions", list_functions, methods=["GET"]),
    Route("/v1/functions/{name}", put_function, methods=["PUT"]),
    Route("/v1/functions/{name}", get_function, methods=["GET"]),
    Route("/v1/functions/{name}", patch_function, methods=["PATCH"]),
    Route("/v1/functions/{name}", delete_function, methods=["DELETE"]),
]
