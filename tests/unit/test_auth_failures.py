"""Failed authentications per source (gateway/auth_failures.py), on a fake clock."""

from __future__ import annotations

from gateway.auth_failures import FailedAuth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_source_past_its_failures_a_second_is_held_and_others_are_not() -> None:
    clock = Clock()
    failures = FailedAuth(per_s=3, hold_s=1.0, clock=clock)
    assert [failures.note("10.0.0.1") for _ in range(5)] == [0, 0, 0, 1.0, 1.0]
    assert failures.note("10.0.0.2") == 0  # another source has its own count
    clock.now += 1.0  # a new second: the count starts over
    assert [failures.note("10.0.0.1") for _ in range(4)] == [0, 0, 0, 1.0]


def test_holds_are_bounded_and_can_be_turned_off() -> None:
    clock = Clock()
    failures = FailedAuth(per_s=1, hold_s=1.0, max_held=2, clock=clock)
    failures.note("a")
    assert failures.note("a") == 1.0
    failures.held = 2  # two answers waiting already
    assert failures.note("a") == 0
    off = FailedAuth(per_s=1, hold_s=0, clock=clock)
    assert [off.note("a") for _ in range(10)] == [0] * 10
