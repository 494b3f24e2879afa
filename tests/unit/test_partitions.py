"""Owner counts of queues with a sustained backlog (runtime/scheduler/partitions.py)."""

from __future__ import annotations

from runtime.scheduler.partitions import ANNOUNCE_S, Partitions
from tests.clock import Clock


def make(clock: Clock) -> Partitions:
    return Partitions(base=2, max_owners=4, backlog=100, after_s=5.0, clock=clock)


def test_grows_one_owner_per_period_of_backlog_up_to_the_max() -> None:
    clock = Clock(0.0)
    p = make(clock)
    assert p.observe("t", 500) is None  # a backlog starts being watched
    clock.now = 4.9
    assert p.observe("t", 500) is None  # not yet sustained
    clock.now = 5.0
    assert p.observe("t", 500) == 3
    assert p.owners("t") == 3
    clock.now = 7.0
    assert p.observe("t", 500) is None
    clock.now = 10.0
    assert p.observe("t", 500) == 4
    clock.now = 15.0
    assert p.observe("t", 500) == 4  # at the max: only its periodic repeat
    assert p.owners("t") == 4


def test_a_dip_below_the_backlog_restarts_the_period() -> None:
    clock = Clock(0.0)
    p = make(clock)
    p.observe("t", 500)
    clock.now = 4.0
    assert p.observe("t", 50) is None
    clock.now = 6.0
    assert p.observe("t", 500) is None
    assert p.owners("t") == 2


def test_back_to_the_default_once_empty_for_a_period() -> None:
    clock = Clock(0.0)
    p = make(clock)
    p.observe("t", 500)
    clock.now = 5.0
    assert p.observe("t", 500) == 3
    clock.now = 6.0
    assert p.observe("t", 10) is None  # draining, not empty
    clock.now = 7.0
    assert p.observe("t", 0) is None
    clock.now = 11.9
    p.observe("t", 0)
    assert p.owners("t") == 3
    clock.now = 12.0
    assert p.observe("t", 0) == 2
    assert p.owners("t") == 2


def test_grown_counts_are_soft_state() -> None:
    clock = Clock(0.0)
    p = make(clock)
    p.hear("t", 3)
    p.hear("u", 99)  # bounded by the max
    assert p.owners("t") == 3 and p.owners("u") == 4
    p.hear("t", 1)  # never below the default
    assert p.owners("t") == 2
    clock.now = 3 * ANNOUNCE_S + 0.1
    assert p.owners("u") == 2  # not repeated: back to the default
    assert p.owners("other") == 2
