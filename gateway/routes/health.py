"""Liveness, readiness and metrics.

`/healthz` and `/readyz` are open: they say only each dependency's state (`ok`,
`down`, `unknown`), never an error's text, which goes to the log. `/metrics` names
tenants and functions: it needs the admin key or FNHOST_METRICS_TOKEN
(gateway/auth.py).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import metrics
from gateway.state import Services

log = logging.getLogger(__name__)
OK, DOWN, UNKNOWN = "ok", "down", "unknown"
# How long readiness waits for MongoDB's answer to a ping.
MONGO_PING_S = 2.0


class Problems:
    """Why a dependency is down, logged once per change (probes poll /readyz often)."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def note(self, dependency: str, detail: str | None) -> None:
        if detail is None:
            if self._last.pop(dependency, None) is not None:
                log.info("readiness: %s is ok again", dependency)
            return
        if self._last.get(dependency) != detail:
            self._last[dependency] = detail
            log.warning("readiness: %s is down: %s", dependency, detail)


PROBLEMS = Problems()


async def healthz(_request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> JSONResponse:
    """200 only when RabbitMQ, MongoDB, the Docker engine and a scheduler are ready."""
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    connection = services.connection
    # A robust connection that is reconnecting is not closed, but not connected either.
    up = connection is not None and not connection.is_closed and connection.connected.is_set()
    checks["rabbitmq"] = OK if up else DOWN
    PROBLEMS.note("rabbitmq", None if up else "not connected")
    try:
        await asyncio.wait_for(services.mongo.ping(), MONGO_PING_S)
        checks["mongodb"] = OK
        PROBLEMS.note("mongodb", None)
    except Exception as exc:
        checks["mongodb"] = DOWN
        PROBLEMS.note("mongodb", f"{type(exc).__name__}: {exc!s:.300}")
    live = services.membership.live()
    checks["scheduler"] = OK if live else DOWN
    PROBLEMS.note("scheduler", None if live else "no scheduler heartbeat")
    if not live:
        checks["docker"] = UNKNOWN  # no scheduler to ask
    elif any(m.info.get("docker") for m in live):
        checks["docker"] = OK
        PROBLEMS.note("docker", None)
    else:
        # Each scheduler says why it cannot start containers (engine away, starts
        # failing): the engine's own words, for the log only.
        problems = sorted({str(m.info.get("docker_problem") or "") for m in live} - {""})
        checks["docker"] = DOWN
        PROBLEMS.note("docker", f"no scheduler can start containers ({'; '.join(problems)[:500]})")
    ready = all(v == OK for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
