"""Per-tenant quotas: their names, defaults, the admin's overrides and the checks.

Pure functions; the gateway reads usage (runtime/store/usage.py, runtime/tasks/quotas.py)
and calls them where a request would add to it. Over a quota the answer is
QuotaExceeded naming it: 413 when the request alone would take the tenant past
it (a bundle's bytes), 429 when a count is used up (it frees itself in time, or
when the tenant deletes something).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.errors import BadRequest, QuotaExceeded
from runtime.models import FunctionConfig, QueueDestination
from runtime.settings import Settings

FUNCTIONS = "functions"
BUNDLE_BYTES = "bundle_bytes"
VERSIONS = "versions"
QUEUED_TASKS = "queued_tasks"
TASK_RECORD_BYTES = "task_record_bytes"
QUEUE_DESTINATIONS = "queue_destinations"
NAMES = (FUNCTIONS, BUNDLE_BYTES, VERSIONS, QUEUED_TASKS, TASK_RECORD_BYTES, QUEUE_DESTINATIONS)
# A quota override is at most this (about 9e18: it fits a BSON int64).
MAX_QUOTA = (1 << 63) - 1
# Retry-After of a 429 for a count that frees itself as tasks run or records expire.
QUEUED_RETRY_AFTER_S = 5
RECORD_BYTES_RETRY_AFTER_S = 60

Quotas = dict[str, int]


def defaults(settings: Settings) -> Quotas:
    """Every tenant's quotas unless the admin overrides them (FNHOST_QUOTA_*)."""
    return {name: int(getattr(settings, f"quota_{name}")) for name in NAMES}


def effective(default: Mapping[str, int], overrides: Mapping[str, Any] | None) -> Quotas:
    """The defaults with a tenant's overrides on top (unknown names ignored)."""
    out = dict(default)
    for name, value in (overrides or {}).items():
        if name in out and isinstance(value, int):
            out[name] = value
    return out


def parse_overrides(body: Any) -> dict[str, int | None]:
    """`{"functions": 10, "queued_tasks": null, ...}` from the admin: a whole number
    from 0 sets a quota, null goes back to the default. 400 for anything else."""
    if not isinstance(body, dict) or not body:
        raise BadRequest(f"quotas must be a non-empty object with keys from {', '.join(NAMES)}",
                         field="quotas")
    out: dict[str, int | None] = {}
    for name, value in body.items():
        if name not in NAMES:
            raise BadRequest(f"unknown quota {name!r}: use {', '.join(NAMES)}", field=f"quotas.{name}")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA
        ):
            raise BadRequest(f"quota {name!r} must be a whole number from 0, or null for the "
                             "default", field=f"quotas.{name}")
        out[name] = value
    return out


def queue_destinations(config: FunctionConfig) -> set[str]:
    """The queue destinations a function's config names."""
    found = (config.async_.on_success, config.async_.on_failure)
    return {d.name for d in found if isinstance(d, QueueDestination)}


def check_count(quota: str, used: int, adding: int, limit: int) -> None:
    """A count quota: 429 when `used + adding` would pass `limit`."""
    if adding > 0 and used + adding > limit:
        raise QuotaExceeded(
            f"quota {quota!r} exceeded: {used} used of {limit}", quota=quota, status=429,
            retry_after_s=_retry_after(quota),
        )


def check_bytes(quota: str, used: int, adding: int, limit: int) -> None:
    """A bytes quota that a request's own size would pass: 413."""
    if adding > 0 and used + adding > limit:
        raise QuotaExceeded(
            f"quota {quota!r} exceeded: {used} + {adding} bytes would pass {limit}", quota=quota,
            status=413,
        )


def check_destinations(others: set[str], current: set[str], wanted: set[str], limit: int) -> None:
    """Queue destinations: 429 when a function's config would name ones that neither it
    (`current`) nor the tenant's other functions (`others`) name yet, past the quota.
    A config that adds no name is never refused, even with the quota lowered below use."""
    added = wanted - others - current
    total = len(others | wanted)
    if added and total > limit:
        shown = ", ".join(sorted(added)[:5])
        raise QuotaExceeded(
            f"quota {QUEUE_DESTINATIONS!r} exceeded: the tenant's functions would name {total} "
            f"queue destinations, over {limit} (new: {shown})", quota=QUEUE_DESTINATIONS,
        )


def _retry_after(quota: str) -> int | None:
    if quota == QUEUED_TASKS:
        return QUEUED_RETRY_AFTER_S
    if quota == TASK_RECORD_BYTES:
        return RECORD_BYTES_RETRY_AFTER_S
    return None  # functions, versions: only the tenant's own deletes free them
