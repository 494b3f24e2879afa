"""Function CRUD: PUT (upload a bundle), GET, PATCH (config), DELETE."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.body import SPOOL_MEMORY_BYTES, read_limited
from gateway.state import Services
from gateway.uploads import json_object, received_upload
from runtime import constants as c
from runtime.bundles import Bundle, BundleLimits, inspect_bundle
from runtime.errors import InvalidConfig
from runtime.models import CONFIG_KEYS, FunctionConfig, WebhookDestination, check_name, merge_config
from runtime.store.functions import FunctionRecord
from runtime.store.tenants import Tenant
from runtime.webhook_policy import WebhookPolicy

log = logging.getLogger(__name__)


def _limits(services: Services) -> BundleLimits:
    s = services.settings
    return BundleLimits(s.bundle_max_bytes, s.bundle_max_unpacked_bytes, s.bundle_max_entries)


async def _inspect(code: IO[bytes], services: Services, override: dict[str, Any] | None) -> Bundle:
    """Inspect a spooled bundle, off the event loop (it reads and hashes the file)."""
    return await asyncio.to_thread(inspect_bundle, code, _limits(services), override)


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
    async with services.uploads.hold(tenant.id), received_upload(request, services.settings) as upload:
        bundle = await _inspect(upload.code, services, upload.override)
        existing = await services.functions.get(tenant.id, name)
        if existing is not None:
            # New code keeps the function's configuration except what the upload names.
            named = {k: v for k, v in bundle.manifest.items() if k in CONFIG_KEYS}
            config = merge_config(merge_config(existing.config, named), upload.override or {})
            if config != bundle.config:
                bundle = await _inspect(upload.code, services, config.dump())
        check_webhooks(bundle.config, services.webhook_policy)
        await services.quotas.check_upload(
            tenant.id, name, existing, bundle.config, sha256=bundle.sha256, version=bundle.version,
            size=bundle.size,
        )
        await services.bundles.save(tenant.id, bundle.sha256, upload.code)
    record, created = await services.functions.put(
        tenant.id, name, bundle.config, version=bundle.version, sha256=bundle.sha256,
        pickle=bundle.pickle, bundle_size=bundle.size, manifest=bundle.manifest,
    )
    await announce(services, record, tenant.id, name)
    await _collect(
        services.bundles.prune(
            tenant.id, name, record.version, services.settings.bundle_versions_kept
        )
    )
    return JSONResponse(record.describe(), status_code=201 if created else 200)


async def _collect(collection: Awaitable[int]) -> None:
    """Run a collection of bundles; a failure leaves them to the scheduler's sweep."""
    try:
        await collection
    except Exception:
        log.exception("collecting bundles failed; the periodic sweep will")


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
    patch = json_object(await read_limited(request, 64 * 1024, "config"), "config")
    config = merge_config(record.config, patch)
    check_webhooks(config, services.webhook_policy)
    if config.handler != record.config.handler:
        # The new handler must exist in the current bundle, as at upload.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as code:
            await services.bundles.load(tenant.id, record.sha256, code)
            await _inspect(code, services, config.dump())
    await services.quotas.check_config(tenant.id, record.name, record, config)
    record = await services.functions.update_config(record, config)
    await announce(services, record, tenant.id, record.name)
    return JSONResponse(record.describe())


async def delete_function(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    name = request.path_params["name"]
    record = await services.functions.require(tenant.id, name)
    await services.functions.delete(tenant.id, name)
    await announce(services, None, tenant.id, name)
    # Its queued tasks will never run: they become Invalid now (the scheduler also
    # marks any it dequeues later).
    await services.tasks.mark_function_tasks(
        tenant.id, name, frozenset({"Enqueued", "Retrying", "Processed"}), "Invalid"
    )
    await _collect(services.bundles.forget_function(tenant.id, name, record.sha256))
    return Response(status_code=204)


routes = [
    Route("/v1/functions", list_functions, methods=["GET"]),
    Route("/v1/functions/{name}", put_function, methods=["PUT"]),
    Route("/v1/functions/{name}", get_function, methods=["GET"]),
    Route("/v1/functions/{name}", patch_function, methods=["PATCH"]),
    Route("/v1/functions/{name}", delete_function, methods=["DELETE"]),
]
