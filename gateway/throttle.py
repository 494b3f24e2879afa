"""Flow control on the invoke path: a function's `max_rate` (sync and async
invocations) and back-pressure on async submissions (runtime/flow/). Each refusal
is a 429 with Retry-After, counted in `fnhost_throttled_total` by tenant and reason.

A function without max_rate costs nothing here: no look-up, no round trip. One
with it costs a MongoDB round trip only when this gateway's lease of its tokens is
spent (runtime/flow/rate.py). Back-pressure costs a few dictionary look-ups: the
queue depths it acts on are read in the background (runtime/broker/backlog.py). The
rules are runtime/tasks/admission.py's, which function destinations meet too.
"""

from __future__ import annotations

from gateway.metrics import INVOCATIONS, THROTTLED
from runtime.errors import Throttled
from runtime.flow.backpressure import Backpressure
from runtime.store.functions import FunctionRecord
from runtime.tasks.admission import RateLimiter, backlog_refusal, queue_of, rate_refusal

__all__ = ["BACKLOG", "RATE", "RateLimiter", "check_backlog", "check_rate", "queue_of"]

BACKLOG, RATE = "backlog", "rate"


def _refused(record: FunctionRecord, kind: str, reason: str, refusal: Throttled) -> Throttled:
    THROTTLED.labels(record.tenant, reason).inc()
    INVOCATIONS.labels(kind, "throttled").inc()
    return refusal


async def check_rate(limiter: RateLimiter, record: FunctionRecord, kind: str) -> None:
    """Raise Throttled when the function is over its max_rate (none: nothing to do)."""
    if record.config.max_rate is None:
        return
    refusal = await rate_refusal(limiter, record)
    if refusal is not None:
        raise _refused(record, kind, RATE, refusal)


def check_backlog(backpressure: Backpressure, record: FunctionRecord, kind: str) -> None:
    """Raise Throttled when back-pressure refuses this async submission."""
    refusal = backlog_refusal(backpressure, record)
    if refusal is not None:
        raise _refused(record, kind, BACKLOG, refusal)
