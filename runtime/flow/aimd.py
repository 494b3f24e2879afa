"""The dispatch window of one function: how many of its invocations start at once.

AIMD, as TCP's congestion window: while work waits and runs end fine, the window
grows by `increase` per window's worth of successes; when capacity errors (no
container, an engine error or slow start, memory pressure, a timeout or an
out-of-memory kill) reach both `error_count` and a share of `error_rate` of the
runs over the last `period_s`, it is cut by `decrease` (to no less than `floor`).
Both thresholds, because a rate alone cuts on one error of two runs and a count
alone cuts a busy function for errors that are a tiny share of its runs.

The window starts at its ceiling (the function's max_concurrency, or the host's
capacity): a first burst must reach full concurrency at once, not ramp up to it;
the window only sits below the ceiling after errors put it there.

Pure: no I/O, and time comes from an injected clock, so it is tested on its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# The recent period is kept as this many buckets: the error rate slides with
# time, in bounded memory whatever the throughput.
BUCKETS = 5


class _Bucket:
    __slots__ = ("errors", "start", "successes")

    def __init__(self, start: float) -> None:
        self.start = start
        self.successes = 0
        self.errors = 0


class DispatchWindow:
    """Invocations of one function the scheduler may start concurrently (`limit`)."""

    def __init__(
        self,
        ceiling: int,
        *,
        floor: int = 1,
        increase: float = 1.0,
        decrease: float = 0.5,
        error_rate: float = 0.2,
        error_count: int = 3,
        period_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling < 1 or floor < 1:
            raise ValueError("the ceiling and the floor must be at least 1")
        if increase <= 0 or not 0 < decrease < 1:
            raise ValueError("increase must be above 0 and decrease between 0 and 1")
        if not 0 <= error_rate < 1 or error_count < 1 or period_s <= 0:
            raise ValueError("error_rate in [0, 1), error_count >= 1 and period_s > 0 expected")
        self._ceiling = ceiling
        self._floor = floor
        self._increase = increase
        self._decrease = decrease
        self._error_rate = error_rate
        self._error_count = error_count
        self._period_s = period_s
        self._bucket_s = period_s / BUCKETS
        self._clock = clock
        self._window = float(ceiling)  # fractional: additive growth adds under 1 per success
        self._buckets: deque[_Bucket] = deque()
        self.decreases = 0  # cuts so far, for metrics

    @property
    def limit(self) -> int:
        # The epsilon keeps a window's worth of fractional increments (1/n, n times)
        # from summing to just under the next whole number.
        return max(min(int(self._window + 1e-9), self._ceiling), self.floor)

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def floor(self) -> int:
        """The configured floor, or the ceiling when that is lower."""
        return min(self._floor, self._ceiling)

    def set_ceiling(self, ceiling: int) -> None:
        """max_concurrency or the host's capacity changed. A window at its old ceiling
        follows the new one (nothing held it back); one cut by errors keeps its place
        below and grows back as usual."""
        if ceiling < 1:
            raise ValueError("the ceiling must be at least 1")
        if self._window >= self._ceiling:
            self._window = float(ceiling)
        self._ceiling = ceiling
        self._window = max(min(self._window, ceiling), float(self.floor))

    def on_success(self, waiting: bool) -> None:
        """A run ended fine; the window grows only while work waits for it (an idle
        window that grew would promise capacity nobody has tried)."""
        self._bucket().successes += 1
        if waiting and self._window < self._ceiling:
            self._window = min(self._window + self._increase / self.limit, float(self._ceiling))

    def on_capacity_error(self) -> None:
        """No container could be had, the engine failed or was slow, the host ran out of
        memory, or the run timed out or was killed for memory."""
        self._bucket().errors += 1
        successes, errors = self._counts()
        if errors >= self._error_count and errors / (errors + successes) >= self._error_rate:
            self._window = max(self._window * self._decrease, float(self.floor))
            self.decreases += 1
            # One burst of errors is one cut: the period counts from zero again.
            self._buckets.clear()

    def _bucket(self) -> _Bucket:
        """The bucket for now, after dropping the ones older than the period."""
        now = self._clock()
        while self._buckets and now - self._buckets[0].start >= self._period_s:
            self._buckets.popleft()
        if not self._buckets or now - self._buckets[-1].start >= self._bucket_s:
            self._buckets.append(_Bucket(now))
        return self._buckets[-1]

    def _counts(self) -> tuple[int, int]:
        return sum(b.successes for b in self._buckets), sum(b.errors for b in self._buckets)

    def __repr__(self) -> str:
        successes, errors = self._counts()
        return (
            f"DispatchWindow(limit={self.limit}, ceiling={self._ceiling}, floor={self.floor}, "
            f"recent successes={successes}, errors={errors})"
        )
