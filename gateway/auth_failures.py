"""Failed authentications per source address: a flood of made-up keys is slowed down.

A source past `per_s` failures within a second has each further failure answered
only after `hold_s` (a tarpit): a client that waits for its answers (any HTTP
client on keep-alive connections) then sends at most one made-up key per
connection per `hold_s`, and the gateway's loop is left to the other tenants.
Valid keys are never held, whatever their source. At most `max_held` answers
wait at once; past that they go at once, so holding costs bounded memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Sources tracked at once; past it the counts start over (a bound, not a policy).
MAX_SOURCES = 100_000
MAX_HELD = 1024
WINDOW_S = 1.0


class FailedAuth:
    def __init__(self, per_s: int, hold_s: float, max_held: int = MAX_HELD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_s = per_s
        self._hold_s = hold_s
        self._max_held = max_held
        self._clock = clock
        self._sources: dict[str, tuple[float, int]] = {}  # source -> (window start, failures)
        self.held = 0  # answers waiting now (the caller counts them in and out)

    def note(self, source: str) -> float:
        """Count a failed authentication of `source`: how long to hold its answer (0: none)."""
        now = self._clock()
        start, failures = self._sources.get(source, (now, 0))
        if now - start >= WINDOW_S:
            start, failures = now, 0
        elif source not in self._sources and len(self._sources) >= MAX_SOURCES:
            self._sources.clear()
        self._sources[source] = (start, failures + 1)
        if failures < self._per_s or self._hold_s == 0 or self.held >= self._max_held:
            return 0.0
        return self._hold_s
