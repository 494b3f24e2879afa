"""A gateway's view of bursts: which submissions make one, once per burst."""

from __future__ import annotations

import pytest

from runtime.flow.burst import QUIET_AFTER_S, BurstDetector
from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


def test_a_burst_is_reported_once_at_the_threshold(clock: Clock) -> None:
    bursts = BurstDetector(threshold=5, window_s=1.0, clock=clock)
    seen = [bursts.note("t", "f") for _ in range(12)]
    assert seen == [False] * 4 + [True] + [False] * 7


def test_submissions_spread_over_windows_are_no_burst(clock: Clock) -> None:
    bursts = BurstDetector(threshold=5, window_s=1.0, clock=clock)
    for _ in range(10):
        assert not any(bursts.note("t", "f") for _ in range(4))
        clock.now += 1.0


def test_functions_and_tenants_count_apart(clock: Clock) -> None:
    bursts = BurstDetector(threshold=3, window_s=1.0, clock=clock)
    for _ in range(2):
        assert not bursts.note("t", "f")
        assert not bursts.note("t", "g")
        assert not bursts.note("u", "f")
    assert bursts.note("t", "g")
    assert bursts.note("t", "f")
    assert bursts.note("u", "f")


def test_a_function_is_reported_again_only_after_a_quiet_period(clock: Clock) -> None:
    bursts = BurstDetector(threshold=2, window_s=1.0, clock=clock)
    assert [bursts.note("t", "f") for _ in range(2)] == [False, True]
    clock.now += 1.0
    assert [bursts.note("t", "f") for _ in range(3)] == [False, False, False]
    clock.now += QUIET_AFTER_S
    assert [bursts.note("t", "f") for _ in range(2)] == [False, True]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BurstDetector(threshold=0)
    with pytest.raises(ValueError):
        BurstDetector(threshold=3, window_s=0)
