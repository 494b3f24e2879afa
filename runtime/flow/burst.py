"""Bursts seen by a gateway: a function whose submissions to its tenant's queue come
faster than a scheduler can hold them gets a dedicated queue before a backlog exists.

A scheduler promotes a function once it holds up its tenant's queue (see
runtime/scheduler/flow.py), but by then the function's messages fill what the
consumer holds of that queue, and the tenant's other functions wait behind them
until they are forwarded. A gateway sees the burst first, as it accepts it: when one
function's submissions within `window_s` reach `threshold` (the share of the
consumer's prefetch that a scheduler would promote it for) while another function
of its tenant submitted within `active_s` (else nobody waits behind it, and a move
would only cost its messages a forward), the gateway promotes it itself, and its
next submissions go to its own queue.

Pure: no I/O, and time comes from an injected clock, so it is tested on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# After a promotion, the same function is not reported again for this long: its
# submissions go to its own queue from then on, and a late one is no new burst.
QUIET_AFTER_S = 30.0
# Functions remembered (as promoted, or as having submitted lately) at most; the
# oldest are forgotten past this.
MAX_REMEMBERED = 10_000
# Another function of the tenant counts as active for this long after it submitted
# (as a scheduler counts one, runtime/scheduler/flow.py).
ACTIVE_S = 30.0


class BurstDetector:
    def __init__(
        self, threshold: int, window_s: float = 1.0, active_s: float = ACTIVE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or window_s <= 0 or active_s <= 0:
            raise ValueError("threshold >= 1, window_s > 0 and active_s > 0 expected")
        self._threshold = threshold
        self._window_s = window_s
        self._active_s = active_s
        self._clock = clock
        self._rates: dict[tuple[str, str], _Rate] = {}  # the least recent submitter first
        self._reported: dict[tuple[str, str], float] = {}
        # Per tenant, its functions' last submissions, newest last.
        self._last: dict[str, dict[str, float]] = {}

    def note(self, tenant: str, function: str) -> bool:
        """One submission of `function` went to its tenant's queue: True when it makes
        a burst (once per burst)."""
        now = self._clock()
        key = (tenant, function)
        self._seen(tenant, function, now)
        rate = self._rates.pop(key, None) or _Rate(now)
        self._rates[key] = rate
        if len(self._rates) > MAX_REMEMBERED:
            del self._rates[next(iter(self._rates))]
        if rate.add(now, self._window_s) < self._threshold:
            return False
        reported = self._reported.get(key)
        if reported is not None and now - reported < QUIET_AFTER_S:
            return False
        if not self._others_active(tenant, function, now):
            return False
        _remember(self._reported, key, now)
        return True

    def _seen(self, tenant: str, function: str, now: float) -> None:
        functions = self._last.pop(tenant, None) or {}
        self._last[tenant] = functions  # the tenant that submitted last, last
        _remember(functions, function, now)
        while functions and now - next(iter(functions.values())) >= self._active_s:
            del functions[next(iter(functions))]  # the oldest first: gone quiet
        if len(self._last) > MAX_REMEMBERED:
            del self._last[next(iter(self._last))]

    def _others_active(self, tenant: str, function: str, now: float) -> bool:
        return any(
            f != function and now - at < self._active_s
            for f, at in self._last.get(tenant, {}).items()
        )


class _Rate:
    """Submissions within the last window, estimated from this window's count and the
    previous one's (a sliding window in two counters: a burst that straddles two
    fixed windows is still seen whole)."""

    __slots__ = ("count", "previous", "start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.count = 0
        self.previous = 0

    def add(self, now: float, window_s: float) -> float:
        elapsed = now - self.start
        if elapsed >= window_s:
            self.previous = self.count if elapsed < 2 * window_s else 0
            self.count = 0
            self.start += window_s * int(elapsed // window_s)
            elapsed = now - self.start
        self.count += 1
        return self.count + self.previous * (1 - elapsed / window_s)


def _remember(entries: dict[Any, float], key: Any, now: float) -> None:
    """Set `key` to `now` as the newest entry (the dict's order is the entries' age),
    forgetting the oldest past MAX_REMEMBERED."""
    entries.pop(key, None)
    entries[key] = now
    if len(entries) > MAX_REMEMBERED:
        for old in list(entries)[: len(entries) - MAX_REMEMBERED]:
            del entries[old]
