"""Prometheus metrics of the gateway process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

INVOCATIONS = Counter(
    "fnhost_invocations_total", "Invocations answered by the gateway", ["type", "outcome"]
)
# 429s of the gateway's flow control: reason `backlog` (back-pressure on async
# submissions) or `rate` (a function's max_rate).
THROTTLED = Counter(
    "fnhost_throttled_total", "Invocations refused with 429 by flow control", ["tenant", "reason"]
)
BURST_PROMOTIONS = Counter(
    "fnhost_burst_promotions_total",
    "Functions this gateway promoted to a dedicated queue on a burst of their submissions",
)
AUTH_REFUSED = Counter(
    "fnhost_auth_refused_total", "Requests refused with 401 for an unknown or revoked API key"
)
AUTH_HELD = Counter(
    "fnhost_auth_held_total",
    "401s held back because their source sent too many unknown keys (gateway/auth_failures.py)",
)
KEY_LOOKUPS = Counter(
    "fnhost_key_lookups_total",
    "Database lookups of API keys this gateway does not hold in memory (see gateway/keys.py)",
)
INVOKE_SECONDS = Histogram(
    "fnhost_sync_invoke_seconds",
    "Time from sending a sync invocation to the scheduler to its reply",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


async def metrics(_request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
