"""A gateway's view of bursts: which submissions make one, once per burst."""

from __future__ import annotations

import pytest

from runtime.flow.burst import QUIET_AFTER_S, BurstDetector
from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


def detector(clock: Clock, threshold: int) -> BurstDetector:
    """A detector for tenant t, whose function `other` has just submitted."""
    bursts = BurstDetector(threshold=threshold, window_s=1.0, active_s=30.0, clock=clock)
    bursts.note("t", "other")
    return bursts


def test_a_burst_is_reported_once_at_the_threshold(clock: Clock) -> None:
    bursts = detector(clock, 5)
    seen = [bursts.note("t", "f") for _ in range(12)]
    assert seen == [False] * 4 + [True] + [False] * 7


def test_a_burst_with_nobody_behind_it_is_not_reported(clock: Clock) -> None:
    bursts = BurstDetector(threshold=3, window_s=1.0, active_s=30.0, clock=clock)
    assert not any(bursts.note("t", "f") for _ in range(10))
    bursts.note("u", "g")  # another tenant's function waits in another queue
    assert not bursts.note("t", "f")
    bursts.note("t", "g")  # the tenant's other function arrives: f's burst holds it up
    assert bursts.note("t", "f")


def test_another_function_counts_as_active_for_a_while(clock: Clock) -> None:
    bursts = detector(clock, 2)
    clock.now += 29.0
    assert [bursts.note("t", "f") for _ in range(2)] == [False, True]
    bursts = detector(clock, 2)
    clock.now += 30.0
    assert [bursts.note("t", "f") for _ in range(2)] == [False, False]


def test_submissions_spread_over_windows_are_no_burst(clock: Clock) -> None:
    bursts = detector(clock, 5)
    for _ in range(40):  # 3 a second, evenly (the estimate is within one of the count)
        assert not bursts.note("t", "f")
        clock.now += 1 / 3


def test_a_burst_across_two_windows_is_seen_whole(clock: Clock) -> None:
    bursts = detector(clock, 10)
    assert not bursts.note("t", "f")  # its window starts here
    clock.now += 0.9
    assert not any(bursts.note("t", "f") for _ in range(5))  # late in that window: 6
    clock.now += 0.2  # early in the next: 0.9 of the previous window's 6 still counts
    assert [bursts.note("t", "f") for _ in range(6)] == [False] * 4 + [True, False]


def test_functions_and_tenants_count_apart(clock: Clock) -> None:
    bursts = detector(clock, 3)
    bursts.note("u", "other")
    for _ in range(2):
        assert not bursts.note("t", "f")
        assert not bursts.note("t", "g")
        assert not bursts.note("u", "f")
    assert bursts.note("t", "g")
    assert bursts.note("t", "f")
    assert bursts.note("u", "f")


def test_a_function_is_reported_again_only_after_a_quiet_period(clock: Clock) -> None:
    bursts = detector(clock, 2)
    assert [bursts.note("t", "f") for _ in range(2)] == [False, True]
    clock.now += 1.0
    assert [bursts.note("t", "f") for _ in range(3)] == [False, False, False]
    clock.now += QUIET_AFTER_S
    bursts.note("t", "other")
    assert [bursts.note("t", "f") for _ in range(2)] == [False, True]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BurstDetector(threshold=0)
    with pytest.raises(ValueError):
        BurstDetector(threshold=3, window_s=0)
    with pytest.raises(ValueError):
        BurstDetector(threshold=3, active_s=0)
