"""POST /v1/functions/{name}/invocations/batch: many async tasks in one request.

The single Event invocation's path (gateway/routes/invoke.py), for up to
FNHOST_BATCH_MAX_TASKS tasks at once: the same checks of the request (key,
function, invocation type, size), the same rules for each task's id and delay
(gateway/task_input.py), flow control per task, then one submission of the
admitted tasks (runtime/tasks/submit.py `submit_many`: one bulk write of their
records, one confirm round for their messages). The answer is 200 with one result
per task, in order: 202 with its ids once it is durable, or its own error (400,
409, 429 with `retry_after_s`, 503), which leaves the other tasks as they are.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import task_input
from gateway.body import read_limited
from gateway.routes.invoke import (
    ASYNC,
    admit,
    invocation_type,
    log_tail,
    not_accepted,
    note_accepted,
)
from gateway.state import Services
from runtime import constants as c
from runtime.errors import BadRequest, FnhostError, NotFound, QuotaExceeded, Throttled, Unavailable
from runtime.store.tenants import Tenant
from runtime.tasks.submit import Accepted, Submission

# Headers of a single submission that a batch says per task, in its body.
PER_TASK_HEADERS = ((c.HTTP_TASK_ID, "X-Task-Id", "task_id"), (c.HTTP_DELAY, "X-Delay-Seconds", "delay_s"))


def check_headers(request: Request) -> None:
    """A batch is asynchronous; a header meant for one task or for a sync call is a 400,
    not silently ignored."""
    typed = c.HTTP_INVOCATION_TYPE in request.headers or c.HTTP_FC_INVOCATION_TYPE in request.headers
    if typed and invocation_type(request) != ASYNC:
        raise BadRequest("a batch is asynchronous: X-Invocation-Type must be Event (or absent)",
                         field="X-Invocation-Type")
    if log_tail(request):
        raise BadRequest("X-Log-Type: Tail applies to synchronous invocations only",
                         field="X-Log-Type")
    for header, shown, instead in PER_TASK_HEADERS:
        if header in request.headers:
            raise BadRequest(f"{shown} does not apply to a batch: give each task's {instead} "
                             "in the body", field=shown)


def result(outcome: Accepted | FnhostError) -> dict[str, Any]:
    """One task's entry of the answer."""
    if isinstance(outcome, Accepted):
        return {"task_id": outcome.task_id, "request_id": outcome.request_id, "status": 202}
    error = outcome.to_json()["error"]
    assert isinstance(error, dict)
    if isinstance(outcome, Throttled | Unavailable):
        error["retry_after_s"] = outcome.retry_after_s
    elif isinstance(outcome, QuotaExceeded) and outcome.retry_after_s is not None:
        error["retry_after_s"] = outcome.retry_after_s
    return {"status": outcome.status, "error": error}


async def submit_batch(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant: Tenant = request.scope["tenant"]
    name = request.path_params["name"]
    check_headers(request)
    record = await services.cache.get(tenant.id, name)
    if record is None:
        raise NotFound(f"function {name!r} not found")
    settings = services.settings
    body = await read_limited(request, settings.async_payload_limit, "batch")
    entries = task_input.parse_batch(body, settings.batch_max_tasks)
    outcomes: list[Accepted | FnhostError | None] = []
    admitted: list[Submission] = []
    where: list[int] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, FnhostError):
            outcomes.append(entry)
            continue
        try:
            await admit(services, record, len(entry.payload))
        except (Throttled, QuotaExceeded) as exc:
            outcomes.append(exc)
            continue
        outcomes.append(None)
        admitted.append(Submission(
            record=record, payload=entry.payload, content_type=task_input.BATCH_CONTENT_TYPE,
            task_id=entry.task_id, delay_s=entry.delay_s,
        ))
        where.append(i)
    try:
        answers = await services.submitter.submit_many(admitted)
    except BaseException:
        for sub in admitted:
            not_accepted(services, record, len(sub.payload))
        raise
    for i, sub, outcome in zip(where, admitted, answers, strict=True):
        outcomes[i] = outcome
        if isinstance(outcome, Accepted):
            note_accepted(services, record, outcome, len(sub.payload))
        else:
            not_accepted(services, record, len(sub.payload))
    results = [result(o) for o in outcomes if o is not None]
    assert len(results) == len(entries), "every task answered"
    return Response(orjson.dumps({"results": results}), 200, media_type="application/json")


routes = [Route("/v1/functions/{name}/invocations/batch", submit_batch, methods=["POST"])]
