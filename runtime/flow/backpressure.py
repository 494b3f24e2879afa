"""Back-pressure on async submissions: which to refuse (429) while a queue's backlog
is past its threshold, and for how long (Retry-After).

Signals. The gateway reads the depth (ready messages) of each queue it submitted
to lately, every poll, off the request path (`observe`, then `refresh`); it tells
this object of each async submission before recording it (`check`) and of each
message it put in a queue (`enqueued`). Per queue, a tenant's or a function's own:

- the drain rate: how fast the depth falls, net of the messages this gateway
  added (an EWMA over the readings that found messages waiting);
- the age of the oldest waiting message, which RabbitMQ does not report cheaply,
  estimated as the smaller of the time since the queue was last seen empty (FIFO:
  nothing waiting now is older) and depth / drain rate. Messages this gateway did
  not send (other gateways, retry timers) are not counted as arrivals, so the
  drain rate errs low and the second estimate high; the first one caps it;
- the expected wait of a message submitted now: depth / drain rate, the seconds of
  its consumers' work already waiting ahead of it; it counts once this gateway has
  put more than `burst` messages in the queue since it was last seen empty;
- pressure = max(depth / max_messages, age / max_age_s, wait / max_wait_s): past 1,
  the queue is over its threshold.

Why the expected wait. The other two thresholds are absolute, and a flood from a
standing start stays under them for a long time: 5,000 messages are a minute of
work for a function that runs 80 tasks a second, and no message is old yet in a
queue that was empty a few seconds ago. The expected wait measures the backlog by
its function's capacity, so a producer several times faster than its function is
past `max_wait_s` as soon as two readings with messages waiting give a drain rate.
So is a burst, at first: a burst and a flood look alike until the burst ends. What
tells them apart is that the burst ends, so a queue first takes `burst` messages
(counted from when it was last seen empty) on which the wait is not judged, however
long its function takes to work them off; a flood goes past that many within a
second or two and is then judged by its wait. The allowance also covers the first
seconds of a function, when its consumers are still starting containers and the
drain rate they show is lower than the one to come. While no drain rate is known
(a queue just created, or nothing drained yet) the wait is not used: the absolute
thresholds remain the backstop, as they are for a queue that nothing drains (its
age grows).

Who is refused: fair dropping, as AFD does for packets. Producers are functions;
their recent submissions (refused ones included) are counted with Sample-and-Hold
(Estan and Varghese): a producer not yet in the table enters it with probability
`sample` per submission, and from then on every submission counts, so heavy
producers are held within a few submissions and the table stays small whatever
the number of light ones. A producer's share of the total backlog is its queue's
share of the depth of every queue watched, times its share of its queue's recent
submissions. Each submission to a queue over its threshold is refused with
probability

    max(0, 1 - fair / share),   fair = 1 / (n * pressure ** 2)

where n is the effective number of producers (the inverse Simpson index of the
shares). A producer alone in the backlog is refused 1 - 1 / pressure ** 2 of the
time (44 % at 1.5 times its threshold, 75 % at twice), so a flood at r times the
drain rate settles near sqrt(r) times the threshold; producers sharing a backlog
evenly are refused alike; one with a small share is not refused until the
pressure is high (a 1 % share beside one heavy producer: about 10 times the
threshold).

Never refused: a submission to a queue without a recent reading (a tenant just
created, a broker the poller cannot reach): back-pressure fails open.

Retry-After: the time the queue needs to get back under its thresholds at its
drain rate, 1-60 s (60 while nothing drains it).

Pure: time and randomness are injected; no I/O.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

Producer = tuple[str, str]  # (tenant, function)

RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60
# How steeply refusals grow with the pressure (see the module docstring).
STEEPNESS = 2.0
# Weight of the newest reading in the drain rate's moving average.
DRAIN_ALPHA = 0.3
# A reading older than this many polls (and than STALE_MIN_S) is not acted on.
STALE_POLLS = 4
STALE_MIN_S = 2.0
# A queue nobody submitted to for this long is no longer read.
WATCH_S = 60.0
# Bounds: queues read, producers held. Past them, new ones are not refused.
MAX_QUEUES = 2000
MAX_HELD = 10_000
# A held producer whose decayed count falls under this leaves the table.
MIN_HELD_COUNT = 0.5


@dataclass(frozen=True)
class Refusal:
    """A submission to refuse, with what the 429 says."""

    retry_after_s: int
    queue: str
    depth: int
    age_s: float
    probability: float
    wait_s: float | None = None  # the expected wait, when a drain rate is known


class QueueGauge:
    """One queue's readings: depth, drain rate, estimated age of the oldest message."""

    __slots__ = ("arrivals", "depth", "drain_per_s", "empty_at", "offered", "read_at", "since_empty",
                 "submitted_at")

    def __init__(self, now: float) -> None:
        self.depth = 0
        self.read_at: float | None = None
        # Never seen empty yet: counted from when it was first submitted to here.
        self.empty_at = now
        self.drain_per_s: float | None = None
        self.arrivals = 0  # messages this gateway enqueued since the last reading
        self.since_empty = 0  # ... and since the queue was last seen empty (the burst so far)
        self.offered = 0.0  # recent submissions to it (decayed), the shares' denominator
        self.submitted_at = now

    def read(self, depth: int, now: float) -> None:
        if self.read_at is not None and self.depth > 0 and now > self.read_at:
            # Only while messages waited: an empty queue's drain says nothing of its capacity.
            drained = max(0, self.depth + self.arrivals - depth)
            rate = drained / (now - self.read_at)
            previous = self.drain_per_s
            self.drain_per_s = rate if previous is None else DRAIN_ALPHA * rate + (1 - DRAIN_ALPHA) * previous
        self.since_empty += self.arrivals
        self.arrivals = 0
        self.depth = depth
        self.read_at = now
        if depth == 0:
            self.empty_at = now
            self.since_empty = 0

    def fresh(self, now: float, stale_s: float) -> bool:
        return self.read_at is not None and now - self.read_at <= stale_s

    def age_s(self, now: float) -> float:
        if self.depth == 0:
            return 0.0
        since_empty = now - self.empty_at
        if self.drain_per_s:
            return min(since_empty, self.depth / self.drain_per_s)
        return since_empty

    def wait_s(self) -> float | None:
        """The expected wait of a message submitted now: None while no drain rate is known."""
        if not self.drain_per_s:
            return None
        return self.depth / self.drain_per_s

    def judged_wait_s(self, burst: int) -> float | None:
        """The expected wait, once more than `burst` messages came since the queue was empty."""
        return self.wait_s() if self.since_empty > burst else None

    def pressure(self, now: float, max_messages: int, max_age_s: float,
                 max_wait_s: float | None = None, burst: int = 0) -> float:
        pressure = max(self.depth / max_messages, self.age_s(now) / max_age_s)
        wait = self.judged_wait_s(burst)
        if max_wait_s is not None and wait is not None:
            pressure = max(pressure, wait / max_wait_s)
        return pressure

    def retry_after_s(self, now: float, max_messages: int, max_age_s: float,
                      max_wait_s: float | None = None, burst: int = 0) -> int:
        """Seconds until it is back under its thresholds at its drain rate, bounded."""
        if not self.drain_per_s:
            return RETRY_AFTER_MAX_S
        wait = max((self.depth - max_messages) / self.drain_per_s, self.age_s(now) - max_age_s)
        judged = self.judged_wait_s(burst)
        if max_wait_s is not None and judged is not None:
            wait = max(wait, judged - max_wait_s)
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(wait)))


class _Held:
    __slots__ = ("count", "queue")

    def __init__(self, queue: str, count: float) -> None:
        self.queue = queue
        self.count = count


@dataclass(frozen=True)
class _Decision:
    """A producer's refusal odds until the next refresh (or `until`, if none comes)."""

    queue: str
    probability: float
    retry_after_s: int
    depth: int
    age_s: float
    wait_s: float | None
    until: float


class Backpressure:
    """Decides which async submissions get 429 from the queues' backlog (see module)."""

    def __init__(
        self,
        max_messages: int,
        max_age_s: float,
        poll_s: float,
        *,
        max_wait_s: float | None = None,
        burst: int = 0,
        sample: float = 0.125,
        half_life_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_messages < 1 or max_age_s <= 0 or poll_s <= 0:
            raise ValueError("max_messages >= 1, max_age_s > 0 and poll_s > 0 expected")
        if max_wait_s is not None and max_wait_s <= 0:
            raise ValueError("max_wait_s > 0 (or None: no threshold on the expected wait) expected")
        if burst < 0:
            raise ValueError("burst >= 0 expected")
        if not 0 < sample <= 1 or half_life_s <= 0:
            raise ValueError("sample in (0, 1] and half_life_s > 0 expected")
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.max_wait_s = max_wait_s
        self.burst = burst
        self._stale_s = max(STALE_MIN_S, STALE_POLLS * poll_s)
        self._sample = sample
        self._half_life_s = half_life_s
        self._clock = clock
        self._rng = rng
        self._gauges: dict[str, QueueGauge] = {}
        self._held: dict[Producer, _Held] = {}
        self._decisions: dict[Producer, _Decision] = {}
        self._decayed_at = clock()

    # -- the request path: dictionary look-ups and one random draw -------------------

    def check(self, producer: Producer, queue: str) -> Refusal | None:
        """Called for every async submission, before anything is written."""
        now = self._clock()
        gauge = self._gauges.get(queue)
        if gauge is None and len(self._gauges) < MAX_QUEUES:
            gauge = self._gauges[queue] = QueueGauge(now)
        if gauge is not None:
            gauge.submitted_at = now
            gauge.offered += 1
        self._hold(producer, queue)
        decision = self._decisions.get(producer)
        if decision is None or decision.queue != queue or now > decision.until:
            return None
        if self._rng() >= decision.probability:
            return None
        return Refusal(decision.retry_after_s, queue, decision.depth, decision.age_s,
                       decision.probability, decision.wait_s)

    def enqueued(self, queue: str) -> None:
        """A submission went into `queue` (not a delayed one, which waits in a timer)."""
        gauge = self._gauges.get(queue)
        if gauge is not None:
            gauge.arrivals += 1

    def _hold(self, producer: Producer, queue: str) -> None:
        held = self._held.get(producer)
        if held is not None:
            held.count += 1
            held.queue = queue  # a function promoted to a queue of its own moves with it
        elif len(self._held) < MAX_HELD and self._rng() < self._sample:
            # Entered now: about 1/sample submissions went by unseen before.
            self._held[producer] = _Held(queue, 1 / self._sample)

    # -- the poller's side ---------------------------------------------------------------

    def watched(self) -> list[str]:
        """The queues to read: those submitted to in the last WATCH_S."""
        return list(self._gauges)

    def observe(self, queue: str, depth: int) -> None:
        gauge = self._gauges.get(queue)
        if gauge is not None:
            gauge.read(depth, self._clock())

    def refresh(self) -> None:
        """After a round of readings: decay the counts, forget idle queues, and work out
        each held producer's odds of refusal."""
        now = self._clock()
        self._decay(now)
        for queue in [q for q, g in self._gauges.items() if now - g.submitted_at > WATCH_S]:
            del self._gauges[queue]
        fresh = {q: g for q, g in self._gauges.items() if g.fresh(now, self._stale_s)}
        total = sum(g.depth for g in fresh.values())
        shares: dict[Producer, float] = {}
        if total > 0:
            for producer, held in self._held.items():
                gauge = fresh.get(held.queue)
                if gauge is not None and gauge.depth > 0 and gauge.offered > 0:
                    shares[producer] = gauge.depth / total * min(1.0, held.count / gauge.offered)
        self._decisions = self._decide(shares, fresh, now)

    def _decide(self, shares: dict[Producer, float], fresh: dict[str, QueueGauge],
                now: float) -> dict[Producer, _Decision]:
        squares = sum(s * s for s in shares.values())
        if squares == 0:
            return {}
        n = sum(shares.values()) ** 2 / squares  # effective number of producers
        decisions = {}
        for producer, share in shares.items():
            queue = self._held[producer].queue
            gauge = fresh[queue]
            thresholds = (self.max_messages, self.max_age_s, self.max_wait_s, self.burst)
            pressure = gauge.pressure(now, *thresholds)
            if pressure <= 1:
                continue
            probability = 1 - 1 / (n * pressure**STEEPNESS * share)
            if probability > 0:
                decisions[producer] = _Decision(
                    queue, probability, gauge.retry_after_s(now, *thresholds), gauge.depth,
                    gauge.age_s(now), gauge.wait_s(), now + self._stale_s,
                )
        return decisions

    def _decay(self, now: float) -> None:
        factor = 0.5 ** ((now - self._decayed_at) / self._half_life_s)
        self._decayed_at = now
        for gauge in self._gauges.values():
            gauge.offered *= factor
        for producer in list(self._held):
            held = self._held[producer]
            held.count *= factor
            if held.count < MIN_HELD_COUNT:
                del self._held[producer]

    # -- for metrics and tests ------------------------------------------------------------

    def gauge(self, queue: str) -> QueueGauge | None:
        return self._gauges.get(queue)

    def probability(self, producer: Producer) -> float:
        """The producer's current odds of refusal (0 when not over any threshold)."""
        decision = self._decisions.get(producer)
        return 0.0 if decision is None else decision.probability

    @property
    def held(self) -> int:
        return len(self._held)
