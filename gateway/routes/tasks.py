"""The task API: read, filter, logs, stop, retry; pause/resume and batch delete by function."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.state import Services
from runtime import constants as c
from runtime.errors import BadRequest, Conflict, NotFound
from runtime.models import merge_config
from runtime.store.mongo import Doc
from runtime.store.tasks import describe
from runtime.store.tenants import Tenant
from runtime.tasks import status as st
from runtime.tasks.submit import message_headers

MAX_LIMIT = 500
LOG_HEADERS = dict(c.FUNCTION_OUTPUT_HEADERS)
# Times a query may name: tasks are never older, and the listing's arithmetic stays in range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _services(request: Request) -> tuple[Services, Tenant]:
    return request.app.state.services, request.scope["tenant"]


async def _task(request: Request) -> tuple[Services, Tenant, Doc]:
    services, tenant = _services(request)
    doc = await services.tasks.find(
        tenant.id, request.path_params["task_id"], request.query_params.get("function")
    )
    if doc is None:
        raise NotFound(f"task {request.path_params['task_id']!r} not found")
    return services, tenant, doc


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if value.replace(".", "", 1).isdigit():
            parsed = datetime.fromtimestamp(float(value), UTC)
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        # OverflowError, OSError: epoch seconds past what a date can hold.
        raise BadRequest(f"{name} must be an ISO 8601 time or epoch seconds", field=name) from None
    return _bounded(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), name)


def _bounded(at: datetime, name: str) -> datetime:
    """A time the task listing can compute with (windows below it, a millisecond above)."""
    if not EARLIEST <= at <= LATEST:
        raise BadRequest(
            f"{name} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}", field=name
        )
    return at


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(value.encode()))
        at = datetime.fromtimestamp(raw[0] / 1_000_000, UTC)
        key = raw[1]
    except Exception:
        raise BadRequest("invalid cursor", field="cursor") from None
    if not isinstance(key, str) or not EARLIEST <= at <= LATEST:
        raise BadRequest("invalid cursor", field="cursor")
    return at, key


def _next_cursor(doc: Doc) -> str:
    at: datetime = doc["created_at"]
    micros = int(at.timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(orjson.dumps([micros, doc["_id"]])).decode()


async def get_task(request: Request) -> JSONResponse:
    _, _, doc = await _task(request)
    return JSONResponse(describe(doc, with_payload=True))


async def list_tasks(request: Request) -> JSONResponse:
    services, tenant = _services(request)
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in st.ALL:
        raise BadRequest(f"unknown status {status!r}: one of {', '.join(st.ALL)}", field="status")
    raw_limit = q.get("limit", "50")
    limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4 else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1-{MAX_LIMIT}", field="limit")
    docs = await services.tasks.list(
        tenant.id,
        function=q.get("function") or None,
        status=status,
        since=_time(q.get("since"), "since"),
        until=_time(q.get("until"), "until"),
        prefix=q.get("prefix") or None,
        limit=limit,
        cursor=_cursor(q.get("cursor")),
    )
    next_cursor = _next_cursor(docs[-1]) if len(docs) == limit else None
    return JSONResponse({"tasks": [describe(d) for d in docs], "next_cursor": next_cursor})


async def task_logs(request: Request) -> Response:
    _, _, doc = await _task(request)
    logs = bytes(doc.get("logs") or b"")
    # What the function printed: served as function output is.
    return Response(logs, media_type="text/plain; charset=utf-8", headers=LOG_HEADERS)


async def stop_task(request: Request) -> JSONResponse:
    """A queued task never runs; a running one has its container killed."""
    services, _, doc = await _task(request)
    key = doc["_id"]
    if doc["status"] in st.WAITING:
        updated = await services.tasks.transition(key, st.STOPPED, when=st.WAITING)
        if updated is not None:
            # A delayed or retrying task waits in a timer: fire it now, so a scheduler
            # sees it Stopped, delivers the Stopped record and drops the message.
            await services.timers.fire_now(key)
            # A scheduler may have taken it from the queue a moment ago (its Running
            # is written after FNHOST_RUNNING_WRITE_DELAY_S): that one stops it too.
            await services.control.publish_or_later(c.CTL_STOP_TASK, key=key)
            return JSONResponse(describe(updated))
        doc = await services.tasks.get(key) or doc
    if doc["status"] in (st.PROCESSED, st.RUNNING):
        updated = await services.tasks.transition(
            key, st.STOPPING, when=frozenset({st.PROCESSED, st.RUNNING})
        )
        if updated is not None:
            await services.control.publish_or_later(c.CTL_STOP_TASK, key=key)
            return JSONResponse(describe(updated), status_code=202)
        doc = await services.tasks.get(key) or doc
    if doc["status"] in (st.STOPPING, st.STOPPED):
        return JSONResponse(describe(doc), status_code=200)
    raise Conflict(
        f"task {doc['task_id']!r} is {doc['status']}: only a queued or running task can be stopped"
    )


async def retry_task(request: Request) -> JSONResponse:
    """Run a Failed, Stopped or Expired task again with its saved payload."""
    services, tenant, doc = await _task(request)
    if doc["status"] not in st.REDRIVABLE:
        raise Conflict(
            f"task {doc['task_id']!r} is {doc['status']}: "
            "only Failed, Stopped or Expired tasks can be retried"
        )
    record = await services.cache.get(tenant.id, doc["function"])
    if record is None:
        raise NotFound(f"function {doc['function']!r} not found")
    # Queued again: it counts against the tenant's queued tasks (its record's bytes
    # are counted already).
    await services.quotas.admit_task(record, 0)
    try:
        updated = await _redrive(services, tenant.id, doc)
    except BaseException:
        services.quotas.release(record, 0)
        raise
    services.quotas.accepted(record, None, 0)
    return JSONResponse(describe(updated), status_code=202)


async def _redrive(services: Services, tenant: str, doc: Doc) -> Doc:
    """Enqueue a finished task again: its record, then its message."""
    now = datetime.now(UTC)
    # Created anew, so kept for the retention period from now (as a new task would be).
    expire_at = now + timedelta(seconds=services.settings.task_retention_s)
    updated = await services.tasks.transition(
        doc["_id"], st.ENQUEUED, when=st.REDRIVABLE,
        fields={"created_at": now, "expire_at": expire_at, "due_at": None,
                "destination": None, "error": None},
    )
    if updated is None:
        raise Conflict(f"task {doc['task_id']!r} changed meanwhile; try again")
    headers = message_headers(
        tenant=tenant, function=doc["function"], task_id=doc["task_id"],
        request_id=doc.get("request_id") or "", created_at=now, attempt=1, task_mode=True,
        chain_depth=int(doc.get("chain_depth") or 0),
    )
    try:
        await services.publisher.publish(
            tenant, headers, bytes(doc.get("payload") or b""), doc.get("content_type")
        )
    except Exception:
        # Not queued: the task is as it was (the caller may retry it again), never
        # Enqueued without a message.
        await services.tasks.undo_redrive(doc)
        raise
    return updated


async def _set_paused(request: Request, paused: bool) -> JSONResponse:
    from gateway.routes.functions import announce

    services, tenant = _services(request)
    record = await services.functions.require(tenant.id, request.path_params["name"])
    record = await services.functions.update_config(record, merge_config(record.config, {"paused": paused}))
    await announce(services, record, tenant.id, record.name)
    released = 0
    if not paused:
        released = await services.timers.release_parked(tenant.id, record.name)
    body: dict[str, Any] = {**record.describe(), "released": released}
    return JSONResponse(body)


async def pause(request: Request) -> JSONResponse:
    return await _set_paused(request, True)


async def resume(request: Request) -> JSONResponse:
    return await _set_paused(request, False)


async def delete_tasks(request: Request) -> JSONResponse:
    """Delete a function's queued tasks in bulk (status=Enqueued): they never run."""
    services, tenant = _services(request)
    name = request.path_params["name"]
    await services.functions.require(tenant.id, name)
    status = request.query_params.get("status")
    if status != st.ENQUEUED:
        raise BadRequest("only queued tasks can be deleted in bulk: use ?status=Enqueued", field="status")
    deleted = await services.tasks.delete_function_tasks(tenant.id, name, frozenset({st.ENQUEUED}))
    return JSONResponse({"deleted": deleted, "status": status})


routes = [
    Route("/v1/tasks", list_tasks, methods=["GET"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/logs", task_logs, methods=["GET"]),
    Route("/v1/tasks/{task_id}/stop", stop_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/retry", retry_task, methods=["POST"]),
    Route("/v1/functions/{name}/pause", pause, methods=["POST"]),
    Route("/v1/functions/{name}/resume", resume, methods=["POST"]),
    Route("/v1/functions/{name}/tasks", delete_tasks, methods=["DELETE"]),
]


