"""The scheduler's end of the sync path: answers invocations from the direct hop."""

from __future__ import annotations

import base64
import logging
from typing import Any

from runtime import constants as c
from runtime.cache import FunctionCache
from runtime.errors import FnhostError, NotFound, Throttled, Unavailable
from runtime.scheduler.invoker import Invocation, Invoker, Outcome

log = logging.getLogger(__name__)


def reply_header(outcome: Outcome, log_tail: bool) -> dict[str, Any]:
    header: dict[str, Any] = {
        "status": outcome.status,
        "content_type": outcome.content_type,
        "start": outcome.start.value,
        "container": outcome.container,
        "init_ms": round(outcome.init_ms, 3),
        "run_ms": round(outcome.run_ms, 3),
    }
    if log_tail:
        header["log_tail"] = base64.b64encode(outcome.logs[-c.LOG_TAIL_BYTES :]).decode()
    return header


def error_reply(exc: FnhostError) -> tuple[dict[str, Any], bytes]:
    header: dict[str, Any] = {"status": "error", "error_status": exc.status}
    if isinstance(exc, Throttled | Unavailable):
        header["retry_after"] = exc.retry_after_s
    return header, exc.to_json_bytes()


class SyncHandler:
    """Resolves the function (cache, refetched when the gateway saw a newer revision) and runs it."""

    def __init__(self, cache: FunctionCache, invoker: Invoker, limit: int) -> None:
        self._cache = cache
        self._invoker = invoker
        self._limit = limit
        self._inflight = 0

    async def __call__(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        if self._inflight >= self._limit:
            return error_reply(Throttled(f"this scheduler is running {self._limit} sync invocations"))
        self._inflight += 1
        try:
            return await self._run(header, body)
        except FnhostError as exc:
            return error_reply(exc)
        except Exception as exc:
            log.exception("sync invocation failed")
            return error_reply(FnhostError(f"scheduler error: {type(exc).__name__}"))
        finally:
            self._inflight -= 1

    async def _run(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        tenant = str(header[c.H_TENANT])
        name = str(header[c.H_FUNCTION])
        record = await self._cache.get(tenant, name, int(header.get(c.H_REVISION) or 0))
        if record is None:
            raise NotFound(f"function {name!r} not found")
        invocation = Invocation(
            request_id=str(header.get(c.H_REQUEST_ID, "")),
            payload=body,
            content_type=str(header.get("content_type") or "application/octet-stream"),
        )
        outcome = await self._invoker.invoke(record, invocation)
        reply = reply_header(outcome, bool(header.get(c.H_LOG_TAIL)))
        reply["version"] = record.version
        return reply, outcome.body
