"""Bursts seen by a gateway: a function whose submissions to its tenant's queue come
faster than a scheduler can hold them gets a dedicated queue before a backlog exists.

A scheduler promotes a function once it holds up its tenant's queue (see
runtime/scheduler/flow.py), but by then the function's messages fill what the
consumer holds of that queue, and the tenant's other functions wait behind them
until they are forwarded. A gateway sees the burst first, as it accepts it: when one
function's submissions within `window_s` reach `threshold` (the share of the
consumer's prefetch that a scheduler would promote it for), the gateway promotes
it itself, and its next submissions go to its own queue.

Pure: no I/O, and time comes from an injected clock, so it is tested on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# After a promotion, the same function is not reported again for this long: its
# submissions go to its own queue from then on, and a late one is no new burst.
QUIET_AFTER_S = 30.0
# Functions remembered as promoted at most (the oldest are forgotten past this).
MAX_REMEMBERED = 10_000


class BurstDetector:
    def __init__(
        self, threshold: int, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or window_s <= 0:
            raise ValueError("threshold >= 1 and window_s > 0 expected")
        self._threshold = threshold
        self._window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._counts: dict[tuple[str, str], int] = {}
        self._reported: dict[tuple[str, str], float] = {}

    def note(self, tenant: str, function: str) -> bool:
        """One submission of `function` went to its tenant's queue: True when it makes
        a burst (once per burst)."""
        now = self._clock()
        if now - self._window_start >= self._window_s:
            # Fixed windows: one counter per function that submitted in this one.
            self._counts.clear()
            self._window_start = now
        key = (tenant, function)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count < self._threshold:
            return False
        reported = self._reported.get(key)
        if reported is not None and now - reported < QUIET_AFTER_S:
            return False
        self._reported.pop(key, None)
        self._reported[key] = now  # newest last: the dict's order is the reports' age
        if len(self._reported) > MAX_REMEMBERED:
            for old in list(self._reported)[: len(self._reported) - MAX_REMEMBERED]:
                del self._reported[old]
        return True
