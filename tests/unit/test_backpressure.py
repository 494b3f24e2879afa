"""Back-pressure decisions: thresholds, fair shares, the age and drain estimates, Retry-After,
failing open without readings. Time and randomness are injected."""

from __future__ import annotations

import math
import random

import pytest

from runtime.flow.backpressure import (
    MAX_HELD,
    RETRY_AFTER_MAX_S,
    WATCH_S,
    Backpressure,
    Producer,
)
from tests.clock import Clock

F: Producer = ("tf", "flood")
G: Producer = ("tf", "other")
Q: Producer = ("tq", "quiet")
QF, QQ = "fnhost.t.tf", "fnhost.t.tq"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def policy(clock: Clock, max_messages: int = 100, max_age_s: float = 3600.0, sample: float = 1.0,
           seed: int = 7) -> Backpressure:
    return Backpressure(max_messages, max_age_s, 0.5, sample=sample, clock=clock,
                        rng=random.Random(seed).random)


def submit(bp: Backpressure, producer: Producer, queue: str, n: int) -> int:
    """`n` submissions; how many were refused."""
    return sum(bp.check(producer, queue) is not None for _ in range(n))


def read(bp: Backpressure, clock: Clock, depths: dict[str, int], dt: float = 0.5) -> None:
    clock.now += dt
    for queue, depth in depths.items():
        bp.observe(queue, depth)
    bp.refresh()


def test_never_refuses_without_a_reading(clock: Clock) -> None:
    # A tenant just created: its queue has no depth reading yet.
    bp = policy(clock)
    assert submit(bp, F, QF, 5000) == 0
    bp.refresh()
    assert submit(bp, F, QF, 1000) == 0
    assert bp.watched() == [QF]


def test_never_refuses_under_the_threshold(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    read(bp, clock, {QF: 100})  # at the threshold, not over it
    assert bp.probability(F) == 0
    assert submit(bp, F, QF, 2000) == 0


def test_a_producer_alone_is_refused_one_minus_one_over_pressure_squared(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    read(bp, clock, {QF: 200})  # pressure 2
    assert bp.probability(F) == pytest.approx(0.75)
    refused = submit(bp, F, QF, 4000)
    assert 0.72 < refused / 4000 < 0.78
    read(bp, clock, {QF: 150})  # pressure 1.5
    assert bp.probability(F) == pytest.approx(1 - 1 / 1.5**2)


def test_refusal_grows_with_the_backlog(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    odds = []
    for depth in (110, 150, 300, 1000):
        read(bp, clock, {QF: depth})
        odds.append(bp.probability(F))
    assert odds == sorted(odds) and odds[0] > 0 and odds[-1] > 0.98


def test_a_light_producer_in_a_flooded_queue_is_not_refused(clock: Clock) -> None:
    # Same tenant queue: one function floods, another submits 1 % as often.
    bp = policy(clock)
    for _ in range(20):
        submit(bp, F, QF, 99)
        submit(bp, G, QF, 1)
    read(bp, clock, {QF: 500})  # five times the threshold
    assert bp.probability(F) > 0.9
    assert bp.probability(G) == 0
    assert submit(bp, G, QF, 200) == 0
    assert submit(bp, F, QF, 1000) > 900


def test_a_tenant_with_a_small_share_is_not_refused_beside_a_flood(clock: Clock) -> None:
    # Both queues are over the threshold; the quiet tenant's is a small share of the backlog.
    bp = policy(clock)
    submit(bp, F, QF, 500)
    submit(bp, Q, QQ, 20)
    read(bp, clock, {QF: 2000, QQ: 150})
    assert bp.probability(F) > 0.99
    assert bp.probability(Q) == 0
    assert submit(bp, Q, QQ, 500) == 0
    # Alone, the same backlog of the quiet tenant would be refused in part.
    alone = policy(clock)
    submit(alone, Q, QQ, 20)
    read(alone, clock, {QQ: 150})
    assert alone.probability(Q) == pytest.approx(1 - 1 / 1.5**2)


def test_equal_producers_are_refused_alike(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    submit(bp, Q, QQ, 100)
    read(bp, clock, {QF: 300, QQ: 300})
    assert bp.probability(F) == pytest.approx(bp.probability(Q))
    assert bp.probability(F) == pytest.approx(1 - 1 / 9)  # as if each were alone


def test_sample_and_hold_keeps_heavy_producers_and_few_light_ones(clock: Clock) -> None:
    bp = policy(clock, sample=0.125)
    for i in range(2000):  # 2,000 producers submitting once each
        bp.check(("tl", f"f{i}"), "fnhost.t.tl")
    light = bp.held
    assert 150 < light < 350  # about one in eight
    submit(bp, F, QF, 50)
    assert bp.held == light + 1  # the heavy producer is held within a few submissions
    read(bp, clock, {QF: 400, "fnhost.t.tl": 0})
    assert bp.probability(F) > 0.9


def test_the_table_of_held_producers_is_bounded(clock: Clock) -> None:
    bp = policy(clock)
    for i in range(MAX_HELD + 50):
        bp.check(("tl", f"f{i}"), "fnhost.t.tl")
    assert bp.held == MAX_HELD


def test_held_counts_decay_so_an_old_flood_is_forgotten(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 200)
    read(bp, clock, {QF: 300})
    assert bp.probability(F) > 0
    read(bp, clock, {QF: 300}, dt=60)  # a minute without submissions: 12 half-lives
    assert bp.held == 0
    assert bp.probability(F) == 0


def test_age_without_drain_is_the_time_since_the_queue_was_seen_empty(clock: Clock) -> None:
    # Nothing consumes (the scheduler is down): few messages, but they wait ever longer.
    bp = policy(clock, max_messages=10_000, max_age_s=10.0)
    submit(bp, F, QF, 5)
    read(bp, clock, {QF: 0})
    empty_at = clock.now
    submit(bp, F, QF, 5)
    read(bp, clock, {QF: 5})
    gauge = bp.gauge(QF)
    assert gauge is not None and gauge.drain_per_s is None
    assert gauge.age_s(clock.now) == pytest.approx(clock.now - empty_at)
    assert bp.probability(F) == 0
    for _ in range(40):
        bp.check(F, QF)
        read(bp, clock, {QF: 5})
    assert gauge.age_s(clock.now) > 10
    assert bp.probability(F) > 0
    refusal = next(r for r in (bp.check(F, QF) for _ in range(100)) if r is not None)
    assert refusal.retry_after_s == RETRY_AFTER_MAX_S  # nothing drains it


def test_drain_rate_counts_this_gateways_arrivals(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 1)
    read(bp, clock, {QF: 1000})
    for _ in range(50):
        bp.enqueued(QF)
    read(bp, clock, {QF: 950}, dt=1.0)  # 50 in, 100 out in one second
    gauge = bp.gauge(QF)
    assert gauge is not None and gauge.drain_per_s == pytest.approx(100)
    # The age is the smaller of the two estimates: here the time since the queue was
    # first watched (1.5 s), not depth / drain (9.5 s).
    assert gauge.age_s(clock.now) == pytest.approx(1.5)
    read(bp, clock, {QF: 900}, dt=1.0)  # 50 out: the average moves towards it
    assert gauge.drain_per_s == pytest.approx(0.3 * 50 + 0.7 * 100)
    clock.now += 100
    assert gauge.age_s(clock.now) == pytest.approx(900 / gauge.drain_per_s)


def test_an_empty_queue_does_not_lower_the_drain_rate(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 1)
    read(bp, clock, {QF: 200})
    read(bp, clock, {QF: 100}, dt=1.0)
    gauge = bp.gauge(QF)
    assert gauge is not None and gauge.drain_per_s == pytest.approx(100)
    read(bp, clock, {QF: 0}, dt=1.0)
    rate = gauge.drain_per_s
    for _ in range(5):
        read(bp, clock, {QF: 0}, dt=1.0)  # idle: says nothing of its capacity
    assert gauge.drain_per_s == rate


def test_retry_after_is_the_time_to_get_back_under_the_threshold(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 200)
    read(bp, clock, {QF: 1000})
    read(bp, clock, {QF: 900}, dt=1.0)  # draining at 100/s: 8 s to get down to 100
    refusals = [r for r in (bp.check(F, QF) for _ in range(50)) if r is not None]
    assert refusals and {r.retry_after_s for r in refusals} == {8}
    assert refusals[0].depth == 900 and refusals[0].queue == QF
    read(bp, clock, {QF: 100_000}, dt=0.5)  # far behind: bounded
    refusal = next(r for r in (bp.check(F, QF) for _ in range(50)) if r is not None)
    assert refusal.retry_after_s == RETRY_AFTER_MAX_S
    read(bp, clock, {QF: 101}, dt=0.001)  # nearly there: at least a second
    gauge = bp.gauge(QF)
    assert gauge is not None and gauge.retry_after_s(clock.now, 100, 3600) == 1


def test_stale_readings_refuse_nothing(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    read(bp, clock, {QF: 1000})
    assert bp.probability(F) > 0.9
    clock.now += 10  # the poller stopped (broker unreachable): no refresh came
    assert submit(bp, F, QF, 500) == 0
    bp.refresh()  # a refresh without a new reading does not bring it back
    assert bp.probability(F) == 0


def test_a_producer_moved_to_its_own_queue_is_judged_there(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 100)
    read(bp, clock, {QF: 1000})
    assert bp.probability(F) > 0.9
    own = "fnhost.f.tf.flood"
    assert submit(bp, F, own, 100) == 0  # promoted: the tenant queue's backlog is not its own
    read(bp, clock, {QF: 1000, own: 0})
    assert bp.probability(F) == 0


def test_idle_queues_are_no_longer_read(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 1)
    submit(bp, Q, QQ, 1)
    clock.now += WATCH_S / 2
    submit(bp, Q, QQ, 1)
    clock.now += WATCH_S / 2 + 1
    bp.refresh()
    assert bp.watched() == [QQ]


def test_bad_arguments() -> None:
    for args in ((0, 10.0, 0.5), (10, 0.0, 0.5), (10, 10.0, 0.0)):
        with pytest.raises(ValueError):
            Backpressure(*args)
    with pytest.raises(ValueError):
        Backpressure(10, 10.0, 0.5, sample=0)


# -- the expected wait: a flood from a standing start, bursts ---------------------------

WAIT_S, BURST = 5.0, 600  # the defaults of FNHOST_BACKLOG_WAIT_S and FNHOST_BACKLOG_BURST


def waiting(clock: Clock, max_wait_s: float | None = WAIT_S, burst: int = BURST) -> Backpressure:
    """Today's default thresholds on depth and age, with or without the expected wait."""
    return Backpressure(5000, 300.0, 0.5, max_wait_s=max_wait_s, burst=burst, clock=clock,
                        rng=random.Random(11).random)


class Function:
    """A queue and the consumers draining it at `drain_per_s` while messages wait."""

    def __init__(self, queue: str, drain_per_s: float) -> None:
        self.queue, self.drain_per_s, self.depth = queue, drain_per_s, 0.0

    def run(self, dt: float) -> None:
        self.depth = max(0.0, self.depth - self.drain_per_s * dt)


def simulate(bp: Backpressure, clock: Clock, offers: dict[Producer, tuple[Function, float]],
             seconds: float, burst: int | None = None) -> dict[Producer, list[tuple[float, bool]]]:
    """Producers submitting at their rate (the first `burst` submissions each, when given),
    readings every 0.5 s; each producer's answers as (seconds since the start, refused)."""
    start, dt, next_read = clock.now, 0.01, clock.now + 0.5
    answers: dict[Producer, list[tuple[float, bool]]] = {p: [] for p in offers}
    owed = dict.fromkeys(offers, 0.0)
    functions = {id(fn): fn for fn, _ in offers.values()}
    while clock.now - start < seconds:
        for producer, (fn, rate) in offers.items():
            owed[producer] += rate * dt
            while owed[producer] >= 1 and (burst is None or len(answers[producer]) < burst):
                owed[producer] -= 1
                refused = bp.check(producer, fn.queue) is not None
                answers[producer].append((clock.now - start, refused))
                if not refused:
                    fn.depth += 1
                    bp.enqueued(fn.queue)
        for fn in functions.values():
            fn.run(dt)
        clock.now += dt
        if clock.now >= next_read:
            next_read += 0.5
            for fn in functions.values():
                bp.observe(fn.queue, int(fn.depth))
            bp.refresh()
    return answers


def first_refusal(answers: list[tuple[float, bool]]) -> float | None:
    return next((at for at, refused in answers if refused), None)


def test_a_flood_from_a_standing_start_is_refused_within_two_seconds(clock: Clock) -> None:
    # 480 submissions a second into a function that runs 80 a second, on an empty queue
    # nothing has been read from before: under 5,000 messages and 300 s for a minute.
    flood = {F: (Function(QF, 80.0), 480.0)}
    answers = simulate(waiting(clock), clock, flood, 12.0)[F]
    first = first_refusal(answers)
    assert first is not None and first <= 2.0, first
    late = [refused for at, refused in answers if at > 4.0]
    assert sum(late) / len(late) > 0.6  # settling near sqrt(6) times the expected wait
    # The thresholds on depth and age alone refuse nothing of it in those 12 s.
    other = Clock()
    absolute = simulate(waiting(other, max_wait_s=None), other, {F: (Function(QF, 80.0), 480.0)}, 12.0)
    assert first_refusal(absolute[F]) is None


def test_a_quiet_producer_beside_the_flood_is_not_refused(clock: Clock) -> None:
    offers = {F: (Function(QF, 80.0), 480.0), Q: (Function(QQ, 80.0), 10.0)}
    answers = simulate(waiting(clock), clock, offers, 12.0)
    assert first_refusal(answers[F]) is not None
    assert len(answers[Q]) > 100 and first_refusal(answers[Q]) is None


def test_an_ordinary_burst_is_not_refused(clock: Clock) -> None:
    # 500 tasks into a function that drains 100 a second, submitted within half a second.
    burst = simulate(waiting(clock), clock, {F: (Function(QF, 100.0), 1000.0)}, 10.0, burst=500)[F]
    assert len(burst) == 500 and first_refusal(burst) is None
    # However long the function takes to work it off: 600 tasks at 20 a second (30 s).
    slow_clock = Clock()
    slow = simulate(waiting(slow_clock), slow_clock, {F: (Function(QF, 20.0), 400.0)}, 10.0,
                    burst=BURST)[F]
    assert len(slow) == BURST and first_refusal(slow) is None
    # Past the burst, the same producer is told.
    more_clock = Clock()
    more = simulate(waiting(more_clock), more_clock, {F: (Function(QF, 20.0), 400.0)}, 10.0,
                    burst=2 * BURST)[F]
    assert first_refusal(more) is not None


def test_the_expected_wait_is_depth_over_the_drain_rate(clock: Clock) -> None:
    bp = policy(clock)
    submit(bp, F, QF, 1)
    read(bp, clock, {QF: 10})
    gauge = bp.gauge(QF)
    assert gauge is not None and gauge.wait_s() is None  # no drain rate yet: not used
    read(bp, clock, {QF: 0}, dt=1.0)
    assert gauge.drain_per_s == pytest.approx(10) and gauge.wait_s() == 0
    for _ in range(400):
        bp.enqueued(QF)
    read(bp, clock, {QF: 400}, dt=1.0)
    assert gauge.wait_s() == pytest.approx(40)


def test_a_burst_counts_from_when_the_queue_was_last_seen_empty(clock: Clock) -> None:
    bp = Backpressure(5000, 300.0, 0.5, max_wait_s=WAIT_S, burst=100, sample=1.0, clock=clock,
                      rng=random.Random(3).random)
    gauge_of = bp.gauge
    for depth in (60, 20):  # 60 in, 40 out in a second: a drain rate of 40 a second
        for _ in range(60 if depth == 60 else 0):
            bp.check(F, QF)
            bp.enqueued(QF)
        read(bp, clock, {QF: depth}, dt=1.0)
    gauge = gauge_of(QF)
    assert gauge is not None and gauge.drain_per_s == pytest.approx(40)
    read(bp, clock, {QF: 0}, dt=1.0)  # worked off: the next burst counts from here
    assert gauge.since_empty == 0
    for _ in range(100):
        bp.check(F, QF)
        bp.enqueued(QF)
    read(bp, clock, {QF: 100}, dt=0.5)  # 2.5 s of work waiting, a burst of 100: not judged
    for _ in range(400):
        bp.check(F, QF)
        bp.enqueued(QF)
    read(bp, clock, {QF: 480}, dt=0.5)  # 500 since empty, 12 s of work: past 5 s
    assert gauge.since_empty == 500
    wait = gauge.wait_s()
    assert wait is not None and wait > WAIT_S
    assert bp.probability(F) == pytest.approx(1 - (WAIT_S / wait) ** 2)
    refusal = next(r for r in (bp.check(F, QF) for _ in range(100)) if r is not None)
    # Retry-After: the time to work the backlog down to 5 s of work.
    assert refusal.retry_after_s == math.ceil(wait - WAIT_S)
    assert refusal.wait_s == pytest.approx(wait)


def test_bad_wait_arguments() -> None:
    with pytest.raises(ValueError):
        Backpressure(10, 10.0, 0.5, max_wait_s=0)
    with pytest.raises(ValueError):
        Backpressure(10, 10.0, 0.5, burst=-1)
