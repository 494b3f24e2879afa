"""More consumers for a queue with a sustained backlog.

A queue (a tenant's, or a function's dedicated one) is consumed by
`queue_owners` schedulers. While its backlog stays above `backlog` messages
for `after_s`, its first owner (the best by rendezvous hash, so exactly one
scheduler decides) adds one more owner, up to `max_owners`, and again after
each further `after_s` of backlog; once the queue has been empty for `after_s`
it goes back to `queue_owners`. Rendezvous hashing keeps the first owners when
the set grows, so growing only adds consumers and shrinking only removes the
added ones.

The owner counts are soft state: the deciding scheduler broadcasts a grown
count again every `ANNOUNCE_S`, and a count not heard of for three times that
falls back to the default. A scheduler that starts, or that missed broadcasts,
learns the counts within seconds; a decider that dies takes its decisions with
it, and the next one starts from what it heard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ANNOUNCE_S = 5.0


@dataclass
class _Watch:
    backlog_since: float | None = None
    empty_since: float | None = None


class Partitions:
    def __init__(
        self, base: int, max_owners: int, backlog: int, after_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.base = base
        self.max_owners = max(base, max_owners)
        self._backlog = backlog
        self._after_s = after_s
        self._clock = clock
        self._heard: dict[str, tuple[int, float]] = {}  # key -> (owners, when heard)
        self._watch: dict[str, _Watch] = {}
        self._announced: dict[str, float] = {}

    def owners(self, key: str) -> int:
        heard = self._heard.get(key)
        if heard is None or self._clock() - heard[1] > 3 * ANNOUNCE_S:
            return self.base
        return heard[0]

    def hear(self, key: str, owners: int) -> None:
        owners = max(self.base, min(self.max_owners, owners))
        if owners == self.base:
            self._heard.pop(key, None)
        else:
            self._heard[key] = (owners, self._clock())

    def observe(self, key: str, depth: int) -> int | None:
        """The decider saw `depth` messages waiting: the owner count to announce now, if
        any (a change, or a grown count due for its repeat)."""
        now = self._clock()
        watch = self._watch.setdefault(key, _Watch())
        current = self.owners(key)
        if depth >= self._backlog:
            watch.empty_since = None
            if watch.backlog_since is None:
                watch.backlog_since = now
            elif now - watch.backlog_since >= self._after_s and current < self.max_owners:
                watch.backlog_since = now  # the next one after another period of backlog
                return self._announce(key, current + 1, now)
        else:
            watch.backlog_since = None
            if depth == 0:
                if watch.empty_since is None:
                    watch.empty_since = now
                elif now - watch.empty_since >= self._after_s and current > self.base:
                    self._watch.pop(key, None)
                    return self._announce(key, self.base, now)
            else:
                watch.empty_since = None
        if current > self.base and now - self._announced.get(key, 0.0) >= ANNOUNCE_S:
            return self._announce(key, current, now)
        return None

    def forget(self, key: str) -> None:
        """No longer watched here (not the decider any more, or idle)."""
        self._watch.pop(key, None)

    def _announce(self, key: str, owners: int, now: float) -> int:
        self._announced[key] = now
        if owners == self.base:
            self._announced.pop(key, None)
        self.hear(key, owners)
        return owners
