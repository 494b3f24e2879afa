"""Builds the gateway's Starlette app; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.auth import AuthMiddleware
from gateway.body import UnreadBodyMiddleware
from gateway.errors import EXCEPTION_HANDLERS
from gateway.routes import batch, functions, health, invoke, tasks, tenants
from gateway.state import Services
from runtime.settings import Settings


def create_app(settings: Settings) -> Starlette:
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        app.state.services = services
        try:
            yield
        finally:
            await services.stop()

    return Starlette(
        routes=[
            *health.routes, *tenants.routes, *functions.routes, *invoke.routes, *batch.routes,
            *tasks.routes,
        ],
        middleware=[
            Middleware(
                UnreadBodyMiddleware,
                max_bytes=settings.discard_body_max_bytes,
                timeout_s=settings.discard_body_timeout_s,
            ),
            Middleware(AuthMiddleware, services=services),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
