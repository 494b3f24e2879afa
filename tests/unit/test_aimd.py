"""The dispatch window: additive growth, multiplicative cuts on a double threshold, bounds."""

from __future__ import annotations

import pytest

from runtime.flow.aimd import DispatchWindow
from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def window(clock: Clock, ceiling: int = 20, **kwargs: float) -> DispatchWindow:
    return DispatchWindow(ceiling, clock=clock, **kwargs)  # type: ignore[arg-type]


def cut_to(w: DispatchWindow, clock: Clock, limit: int) -> None:
    """Errors (a second apart, each period a fresh one) until the window is at `limit`."""
    while w.limit > limit:
        for _ in range(3):
            w.on_capacity_error()
        clock.now += 10
    assert w.limit == limit


def test_starts_at_the_ceiling(clock: Clock) -> None:
    w = window(clock, 20)
    assert w.limit == 20 and w.ceiling == 20 and w.floor == 1


def test_grows_by_one_per_window_of_successes_while_work_waits(clock: Clock) -> None:
    w = window(clock, 20)
    cut_to(w, clock, 5)
    for _ in range(5):
        w.on_success(waiting=True)
    assert w.limit == 6
    for _ in range(5):
        w.on_success(waiting=True)
    assert w.limit == 6  # 5 more successes are less than a window of 6
    w.on_success(waiting=True)
    assert w.limit == 7


def test_growth_follows_the_increase(clock: Clock) -> None:
    w = window(clock, 20, increase=2.0)
    cut_to(w, clock, 5)
    for _ in range(3):
        w.on_success(waiting=True)
    assert w.limit == 6  # 3 x 2/5: with an increase of 1 this takes 5 successes


def test_no_growth_while_nothing_waits(clock: Clock) -> None:
    w = window(clock, 20)
    cut_to(w, clock, 5)
    for _ in range(100):
        w.on_success(waiting=False)
    assert w.limit == 5


def test_growth_stops_at_the_ceiling(clock: Clock) -> None:
    w = window(clock, 8)
    cut_to(w, clock, 4)
    for _ in range(1000):
        w.on_success(waiting=True)
    assert w.limit == 8


def test_a_cut_needs_the_error_count(clock: Clock) -> None:
    w = window(clock, 20, error_count=3, error_rate=0.2)
    w.on_capacity_error()
    w.on_capacity_error()
    assert w.limit == 20  # a rate of 100 %, but only two errors
    w.on_capacity_error()
    assert w.limit == 10
    assert w.decreases == 1


def test_a_cut_needs_the_error_rate(clock: Clock) -> None:
    w = window(clock, 20, error_count=3, error_rate=0.2)
    for _ in range(40):
        w.on_success(waiting=False)
    for _ in range(9):
        w.on_capacity_error()
    assert w.limit == 20  # nine errors, but 9 / 49 < 20 %
    w.on_capacity_error()
    assert w.limit == 10  # 10 / 50 = 20 %


def test_old_successes_leave_the_period(clock: Clock) -> None:
    w = window(clock, 20, error_count=3, error_rate=0.2, period_s=5.0)
    for _ in range(100):
        w.on_success(waiting=False)
    clock.now += 6  # the successes are older than the period
    for _ in range(3):
        w.on_capacity_error()
    assert w.limit == 10


def test_old_errors_leave_the_period(clock: Clock) -> None:
    w = window(clock, 20, error_count=3, period_s=5.0)
    w.on_capacity_error()
    w.on_capacity_error()
    clock.now += 6
    w.on_capacity_error()
    w.on_capacity_error()
    assert w.limit == 20  # never three errors within 5 s
    w.on_capacity_error()
    assert w.limit == 10


def test_the_period_restarts_after_a_cut(clock: Clock) -> None:
    w = window(clock, 20, error_count=3)
    for _ in range(3):
        w.on_capacity_error()
    assert w.limit == 10
    # The same burst goes on: two more errors are not a second cut ...
    w.on_capacity_error()
    w.on_capacity_error()
    assert w.limit == 10
    # ... the third after the cut is.
    w.on_capacity_error()
    assert w.limit == 5
    assert w.decreases == 2


def test_cuts_stop_at_the_floor(clock: Clock) -> None:
    w = window(clock, 20, floor=3)
    for _ in range(30):
        w.on_capacity_error()
    assert w.limit == 3
    w2 = window(clock, 20)
    for _ in range(60):
        w2.on_capacity_error()
    assert w2.limit == 1


def test_decrease_factor(clock: Clock) -> None:
    w = window(clock, 20, decrease=0.75)
    for _ in range(3):
        w.on_capacity_error()
    assert w.limit == 15


def test_set_ceiling_below_the_limit_lowers_it(clock: Clock) -> None:
    w = window(clock, 20)
    w.set_ceiling(6)
    assert w.limit == 6 and w.ceiling == 6
    cut_to(w, clock, 3)
    w.set_ceiling(2)
    assert w.limit == 2


def test_set_ceiling_above_follows_an_uncut_window(clock: Clock) -> None:
    w = window(clock, 20)
    w.set_ceiling(50)
    assert w.limit == 50


def test_set_ceiling_above_keeps_a_cut_window_where_it_is(clock: Clock) -> None:
    w = window(clock, 20)
    cut_to(w, clock, 10)
    w.set_ceiling(50)
    assert w.limit == 10
    for _ in range(10):
        w.on_success(waiting=True)
    assert w.limit == 11


def test_a_floor_above_the_ceiling_yields_to_it(clock: Clock) -> None:
    w = window(clock, 2, floor=4)
    assert w.limit == 2 and w.floor == 2
    for _ in range(10):
        w.on_capacity_error()
    assert w.limit == 2
    w.set_ceiling(8)
    assert w.limit == 8
    cut_to(w, clock, 4)
    for _ in range(3):
        w.on_capacity_error()
    assert w.limit == 4  # the floor holds again


def test_the_floor_rises_with_the_ceiling_after_a_lowering(clock: Clock) -> None:
    w = window(clock, 10, floor=2)
    w.set_ceiling(1)
    assert w.limit == 1
    w.set_ceiling(10)
    assert w.limit == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ceiling": 0},
        {"floor": 0},
        {"increase": 0.0},
        {"decrease": 1.0},
        {"decrease": 0.0},
        {"error_rate": 1.0},
        {"error_count": 0},
        {"period_s": 0.0},
    ],
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    ceiling = int(kwargs.pop("ceiling", 10))
    with pytest.raises(ValueError):
        DispatchWindow(ceiling, **kwargs)  # type: ignore[arg-type]


def test_set_ceiling_refuses_zero(clock: Clock) -> None:
    with pytest.raises(ValueError):
        window(clock).set_ceiling(0)
