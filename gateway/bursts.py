"""Promotes a function to a dedicated queue as soon as this gateway sees a burst of its
submissions to its tenant's queue (runtime/flow/burst.py), off the request path."""

from __future__ import annotations

import asyncio
import logging

from pymongo.errors import PyMongoError

from gateway.metrics import BURST_PROMOTIONS
from runtime.broker.publisher import BROKER_ERRORS
from runtime.broker.routing import Router
from runtime.errors import FnhostError
from runtime.flow.burst import BurstDetector
from runtime.settings import Settings

log = logging.getLogger(__name__)
# Promotions in flight at once; a burst of bursts waits for none of them.
MAX_PENDING = 100


def burst_threshold(settings: Settings) -> int:
    """The submissions within a second that make a burst: FNHOST_PROMOTE_BURST, or by
    default the share of a scheduler's prefetch of the tenant's queue at which the
    scheduler would promote the function itself (FNHOST_PROMOTE_SHARE of
    FNHOST_ASYNC_PREFETCH), so that the gateway acts on the same rule, only sooner."""
    if settings.promote_burst:
        return settings.promote_burst
    return max(settings.promote_inflight, int(settings.promote_share * settings.async_prefetch))


class BurstPromoter:
    def __init__(self, router: Router, detector: BurstDetector) -> None:
        self._router = router
        self._detector = detector
        self._pending: set[asyncio.Task[None]] = set()

    def note(self, tenant: str, function: str) -> None:
        """A submission of `function` was published to its tenant's queue."""
        if function and self._detector.note(tenant, function) and len(self._pending) < MAX_PENDING:
            task = asyncio.ensure_future(self._promote(tenant, function))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _promote(self, tenant: str, function: str) -> None:
        try:
            await self._router.promote(tenant, function, "a burst of submissions seen by a gateway")
            BURST_PROMOTIONS.inc()
        except (FnhostError, PyMongoError, *BROKER_ERRORS) as exc:
            # The scheduler's own signals still promote it once it holds up the queue.
            log.warning("could not promote %s/%s: %s", tenant, function, exc)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
