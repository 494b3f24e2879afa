"""The per-destination circuit: which records skip their inline attempt, and for how long."""

from __future__ import annotations

from runtime.circuit import DestinationCircuits

HOOK = "t1 webhook http://hooks.example/a"
OTHER = "t1 webhook http://hooks.example/b"


def circuits(open_s: float = 10.0, slow_s: float = 1.0, probes: int = 4, limit: int = 100
             ) -> DestinationCircuits:
    return DestinationCircuits(open_s, slow_s=slow_s, probes=probes, limit=limit)


def test_an_unknown_destination_is_tried_inline() -> None:
    assert circuits().skip_reason(HOOK, 100.0) is None


def test_a_failure_sends_the_next_records_to_the_outbox_for_open_s() -> None:
    c = circuits(open_s=10.0)
    c.failed(HOOK, 100.0, "no answer within 2 s")
    reason = c.skip_reason(HOOK, 100.5)
    assert reason is not None
    assert "no answer within 2 s" in reason and "0.5 s before" in reason
    assert c.skip_reason(HOOK, 109.9) is not None
    assert c.skip_reason(HOOK, 110.0) is None  # open_s over: tried inline again
    assert c.skip_reason(OTHER, 100.5) is None  # other destinations are not concerned


def test_a_new_failure_keeps_it_open() -> None:
    c = circuits(open_s=10.0)
    c.failed(HOOK, 100.0, "HTTP 503")
    c.failed(HOOK, 108.0, "HTTP 503")  # say, an outbox attempt
    assert c.skip_reason(HOOK, 115.0) is not None
    assert c.skip_reason(HOOK, 118.0) is None


def test_a_success_closes_it_at_once() -> None:
    c = circuits(open_s=10.0)
    c.failed(HOOK, 100.0, "HTTP 500")
    c.succeeded(HOOK, 100.1)  # the outbox got through
    assert c.skip_reason(HOOK, 100.1) is None


def test_an_attempt_waiting_slow_s_sends_the_others_to_the_outbox() -> None:
    c = circuits(slow_s=1.0)
    c.started(HOOK, 100.0)
    assert c.skip_reason(HOOK, 100.5) is None  # a normal answer time: others try too
    c.started(HOOK, 100.5)
    reason = c.skip_reason(HOOK, 101.0)  # the oldest has waited 1 s
    assert reason is not None and "waiting for 1.0 s" in reason
    c.ended(HOOK, 100.0)
    assert c.skip_reason(HOOK, 101.0) is None  # the one left has waited 0.5 s
    c.ended(HOOK, 100.5)
    assert c.skip_reason(HOOK, 200.0) is None


def test_an_attempt_in_flight_survives_a_success_of_another() -> None:
    c = circuits(slow_s=1.0)
    c.started(HOOK, 100.0)
    c.succeeded(HOOK, 100.1)
    assert c.skip_reason(HOOK, 101.5) is not None  # still waiting: not forgotten
    c.ended(HOOK, 100.0)
    assert c.skip_reason(HOOK, 101.5) is None


def test_a_burst_to_an_unproven_destination_sends_probes_only() -> None:
    c = circuits(open_s=10.0, slow_s=1.0, probes=2)
    c.started(HOOK, 100.0)
    assert c.skip_reason(HOOK, 100.0) is None
    c.started(HOOK, 100.0)
    reason = c.skip_reason(HOOK, 100.01)  # a third record of the burst, before any answer
    assert reason is not None and "2 attempts to it are waiting" in reason
    assert c.skip_reason(OTHER, 100.01) is None
    c.ended(HOOK, 100.0)
    assert c.skip_reason(HOOK, 100.02) is None  # a probe is free again


def test_a_destination_that_answered_takes_bursts_inline() -> None:
    c = circuits(open_s=10.0, slow_s=1.0, probes=2)
    c.succeeded(HOOK, 100.0)
    for _ in range(5):
        c.started(HOOK, 100.5)
    assert c.skip_reason(HOOK, 100.6) is None  # answered recently: no cap on a burst
    assert c.skip_reason(HOOK, 110.2) is not None  # that was open_s ago (and they are slow)
    c2 = circuits(open_s=10.0, slow_s=100.0, probes=2)
    c2.succeeded(HOOK, 100.0)
    for _ in range(2):
        c2.started(HOOK, 110.1)
    reason = c2.skip_reason(HOOK, 110.2)
    assert reason is not None and "none answered yet" in reason
    c2.failed(HOOK, 110.3, "HTTP 502")
    c2.succeeded(HOOK, 111.0)
    assert c2.skip_reason(HOOK, 111.1) is None


def test_it_is_bounded_and_forgets_the_least_recently_used() -> None:
    c = circuits(limit=3)
    for i in range(5):
        c.failed(f"d{i}", 100.0, "HTTP 500")
    assert len(c) == 3
    assert c.skip_reason("d0", 100.1) is None  # forgotten: costs one inline attempt, no more
    assert c.skip_reason("d4", 100.1) is not None
    c.ended("d0", 100.0)  # ending an attempt of a forgotten destination is harmless
