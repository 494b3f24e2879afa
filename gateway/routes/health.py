"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import metrics
from gateway.state import Services


async def healthz(_request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> JSONResponse:
    """200 only when RabbitMQ, MongoDB, the Docker engine and a scheduler are ready."""
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    connection = services.connection
    # A robust connection that is reconnecting is not closed, but not connected either.
    up = connection is not None and not connection.is_closed and connection.connected.is_set()
    checks["rabbitmq"] = "ok" if up else "down"
    try:
        await asyncio.wait_for(services.mongo.ping(), 2.0)
        checks["mongodb"] = "ok"
    except Exception as exc:
        checks["mongodb"] = f"down: {type(exc).__name__}"
    live = services.membership.live()
    checks["scheduler"] = f"ok ({len(live)} live)" if live else "down: no scheduler heartbeat"
    if not live:
        checks["docker"] = "unknown: no scheduler to ask"
    elif any(m.info.get("docker") for m in live):
        checks["docker"] = "ok"
    else:
        # Each scheduler says why it cannot start containers (engine away, starts failing).
        problems = sorted({str(m.info.get("docker_problem") or "") for m in live} - {""})
        detail = f" ({'; '.join(problems)})"[:500] if problems else ""
        checks["docker"] = f"down: no scheduler can start containers{detail}"
    ready = all(v.startswith("ok") for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
