"""POST /v1/functions/{name}/invocations: sync (RequestResponse), async (Event), DryRun.

The path is linear: resolve the function from the cache, bound the payload,
apply flow control (gateway/throttle.py), pick the scheduler that owns the
tenant, send it over the direct hop, answer. No MongoDB round trip on a warm
path (a function with a max_rate: one when this gateway's lease of its tokens
is spent; a tenant's first async submission here: the reading of its quota
usage, runtime/tasks/quotas.py). Back-pressure and quotas apply to async submissions
only: a sync invocation never waits behind, nor is refused for, the async backlog.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import task_input
from gateway.body import read_limited
from gateway.metrics import INVOCATIONS, INVOKE_SECONDS
from gateway.state import Services
from gateway.throttle import check_backlog, check_rate, queue_of
from runtime import constants as c
from runtime.errors import BadRequest, NotFound, Unavailable
from runtime.store.functions import FunctionRecord
from runtime.store.tenants import Tenant
from runtime.tasks.submit import Accepted, Submission

SYNC, ASYNC, DRY_RUN = "RequestResponse", "Event", "DryRun"
TYPES = {"requestresponse": SYNC, "event": ASYNC, "dryrun": DRY_RUN, "sync": SYNC, "async": ASYNC}
FUNCTION_OUTPUT = dict(c.FUNCTION_OUTPUT_HEADERS)
# Time allowed on top of the function's timeout for queueing and a cold start.
SYNC_MARGIN_S = 30.0


def invocation_type(request: Request) -> str:
    raw = request.headers.get(c.HTTP_INVOCATION_TYPE) or request.headers.get(
        c.HTTP_FC_INVOCATION_TYPE
    )
    if raw is None:
        return SYNC
    kind = TYPES.get(raw.strip().lower())
    if kind is None:
        raise BadRequest(
            f"unknown X-Invocation-Type {raw[:40]!r}: use RequestResponse, Event or DryRun",
            field="X-Invocation-Type",
        )
    return kind


def log_tail(request: Request) -> bool:
    raw = request.headers.get(c.HTTP_LOG_TYPE)
    if raw is None or raw.lower() == "none":
        return False
    if raw.lower() != "tail":
        raise BadRequest("X-Log-Type must be Tail or None", field="X-Log-Type")
    return True


async def invoke(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    name = request.path_params["name"]
    kind = invocation_type(request)
    tail = log_tail(request)
    record = await services.cache.get(tenant.id, name)
    if record is None:
        raise NotFound(f"function {name!r} not found")
    settings = services.settings
    limit = settings.async_payload_limit if kind == ASYNC else settings.sync_payload_limit
    payload = await read_limited(request, limit)
    request_id = str(uuid.uuid4())
    if kind == DRY_RUN:
        INVOCATIONS.labels(DRY_RUN, "ok").inc()
        return Response(status_code=204, headers={c.HTTP_REQUEST_ID: request_id})
    if kind == ASYNC:
        return await _submit(services, request, record, payload, request_id)
    for header_, shown in ((c.HTTP_TASK_ID, "X-Task-Id"), (c.HTTP_DELAY, "X-Delay-Seconds")):
        if header_ in request.headers:
            raise BadRequest(f"{shown} applies to Event (asynchronous) invocations only", field=shown)
    await check_rate(services.rate_limiter, record, SYNC)
    owner = services.membership.owner(tenant.id)
    address = services.membership.address(owner) if owner is not None else None
    if address is None:
        raise Unavailable("no scheduler is available", retry_after_s=2)
    header = {
        c.H_TENANT: tenant.id,
        c.H_FUNCTION: name,
        c.H_REVISION: record.revision,
        c.H_REQUEST_ID: request_id,
        "content_type": request.headers.get("content-type"),
    }
    if tail:
        header[c.H_LOG_TAIL] = True
    started = time.perf_counter()
    meta, body = await services.hop.call(
        address, header, payload, timeout=record.config.timeout_s + SYNC_MARGIN_S
    )
    INVOKE_SECONDS.observe(time.perf_counter() - started)
    status = str(meta.get("status"))
    INVOCATIONS.labels(SYNC, status).inc()
    if status == "error":
        # Its message may quote the function (an import error): the same guard.
        headers = {**FUNCTION_OUTPUT, c.HTTP_REQUEST_ID: request_id}
        if "retry_after" in meta:
            headers["Retry-After"] = str(meta["retry_after"])
        return Response(body, int(meta.get("error_status", 500)), headers, "application/json")
    out = {
        **FUNCTION_OUTPUT,
        c.HTTP_REQUEST_ID: request_id,
        c.HTTP_START: str(meta.get("start")),
        c.HTTP_CONTAINER: str(meta.get("container")),
        c.HTTP_VERSION: str(meta.get("version")),
        c.HTTP_TIMINGS: f"init;dur={meta.get('init_ms', 0)}, run;dur={meta.get('run_ms', 0)}",
    }
    if status == "function_error":
        out[c.HTTP_FUNCTION_ERROR] = "Unhandled"
    elif status == "timeout":
        out[c.HTTP_FUNCTION_ERROR] = "Timeout"
    if tail:
        out[c.HTTP_LOG_RESULT] = str(meta.get("log_tail", ""))
    return Response(body, 200, headers=out, media_type=str(meta.get("content_type")))


async def admit(services: Services, record: FunctionRecord, payload_bytes: int) -> None:
    """Flow control and quotas of one async submission (a single one, or one task of a
    batch): Throttled when back-pressure or the function's max_rate refuses it,
    QuotaExceeded over the tenant's queued tasks or task-record bytes. An admitted
    submission that is not accepted after all is given back with `not_accepted`."""
    # Back-pressure first: it costs no round trip, and a refused submission then
    # takes no token of the function's max_rate. The quota view is in memory too.
    check_backlog(services.backpressure, record, ASYNC)
    await services.quotas.admit_task(record, payload_bytes)
    try:
        await check_rate(services.rate_limiter, record, ASYNC)
    except BaseException:
        services.quotas.release(record, payload_bytes)
        raise


def not_accepted(services: Services, record: FunctionRecord, payload_bytes: int) -> None:
    """An admitted submission that was refused or failed: it counts no more."""
    services.quotas.release(record, payload_bytes)


def note_accepted(services: Services, record: FunctionRecord, accepted: Accepted, payload_bytes: int) -> None:
    """What back-pressure, the quotas and the metrics learn of an accepted async submission."""
    if accepted.due_at is None:  # a delayed task waits in a timer, not in the queue
        services.backpressure.enqueued(queue_of(record))
    services.quotas.accepted(record, datetime.now(UTC), payload_bytes)
    INVOCATIONS.labels(ASYNC, "accepted").inc()


async def _submit(
    services: Services, request: Request, record: FunctionRecord, payload: bytes, request_id: str
) -> Response:
    """202 only once the task is durable (broker confirm, or its timer stored)."""
    task_id = task_input.task_id(request.headers.get(c.HTTP_TASK_ID), "X-Task-Id")
    delay_s = task_input.delay_header(request.headers.get(c.HTTP_DELAY), "X-Delay-Seconds")
    await admit(services, record, len(payload))
    try:
        accepted = await services.submitter.submit(
            Submission(
                record=record,
                payload=payload,
                content_type=request.headers.get("content-type"),
                task_id=task_id,
                delay_s=delay_s,
                request_id=request_id,
            )
        )
    except BaseException:
        not_accepted(services, record, len(payload))
        raise
    note_accepted(services, record, accepted, len(payload))
    body = {"task_id": accepted.task_id, "request_id": accepted.request_id, "status": "Enqueued"}
    return Response(
        orjson.dumps(body),
        202,
        headers={
            c.HTTP_REQUEST_ID: accepted.request_id,
            "X-Task-Id": accepted.task_id,
            "Location": f"/v1/tasks/{accepted.task_id}",
        },
        media_type="application/json",
    )


routes = [Route("/v1/functions/{name}/invocations", invoke, methods=["POST"])]
