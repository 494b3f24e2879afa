"""Per-function dispatch on a scheduler (runtime/scheduler/flow.py): slots within the
window, waiting, and the signals that set a function's messages aside."""

from __future__ import annotations

import asyncio

import pytest

from runtime.flow.aimd import DispatchWindow
from runtime.scheduler.flow import (
    INFLIGHT_SHARE,
    OLDEST_WAIT,
    RUN_TIME_SHARE,
    WAITING,
    WINDOW_SHARE,
    Flow,
    Thresholds,
)
from tests.clock import Clock


def make(clock: Clock | None = None, **thresholds: float) -> Flow:
    clock = clock or Clock()
    return Flow(Thresholds(**thresholds), lambda ceiling: DispatchWindow(ceiling, clock=clock), clock)  # type: ignore[arg-type]


async def test_slots_up_to_the_window_then_wait_in_order() -> None:
    flow = make(wait_s=10)
    assert [await flow.admit("t", "f", 2, shared=False) for _ in range(2)] == [None, None]
    third = asyncio.ensure_future(flow.admit("t", "f", 2, shared=False))
    fourth = asyncio.ensure_future(flow.admit("t", "f", 2, shared=False))
    await asyncio.sleep(0)
    assert not third.done() and not fourth.done()
    flow.leave("t", "f")
    assert await third is None
    assert not fourth.done()
    flow.leave("t", "f")
    assert await fourth is None
    assert flow.get("t", "f").running == 2


async def test_dedicated_messages_wait_as_long_as_it_takes() -> None:
    flow = make(wait_s=0.01, waiting=1)
    assert await flow.admit("t", "f", 1, shared=False) is None
    waiting = asyncio.ensure_future(flow.admit("t", "f", 1, shared=False))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # never set aside: it already is on its own queue
    flow.leave("t", "f")
    assert await waiting is None


async def test_too_many_waiting_sets_the_tenant_queue_messages_aside() -> None:
    flow = make(waiting=3, wait_s=10)
    assert await flow.admit("t", "f", 1, shared=True) is None
    first = [asyncio.ensure_future(flow.admit("t", "f", 1, shared=True)) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in first)
    third = await flow.admit("t", "f", 1, shared=True)
    assert third == WAITING
    assert [await w for w in first] == [WAITING, WAITING]  # all of them go together
    assert not flow.get("t", "f").waiters
    assert flow.get("t", "f").running == 1  # the one running keeps its slot


async def test_oldest_waiting_too_long_sets_it_aside() -> None:
    flow = make(waiting=100, wait_s=0.02)
    assert await flow.admit("t", "f", 1, shared=True) is None
    assert await flow.admit("t", "f", 1, shared=True) == OLDEST_WAIT


async def test_a_slot_granted_while_cancelled_is_given_back() -> None:
    flow = make(wait_s=10)
    assert await flow.admit("t", "f", 1, shared=False) is None
    waiting = asyncio.ensure_future(flow.admit("t", "f", 1, shared=False))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    flow.leave("t", "f")
    assert flow.get("t", "f").running == 0 and not flow.get("t", "f").waiters
    assert await flow.admit("t", "f", 1, shared=False) is None


async def test_share_of_messages_in_hand_sets_a_crowding_function_aside() -> None:
    flow = make(inflight=4, share=0.5, wait_s=10)
    # Alone, a function may hold as much as its window allows: nobody is crowded out.
    for _ in range(6):
        assert await flow.admit("t", "big", 10, shared=True) is None
    assert await flow.admit("t", "small", 10, shared=True) is None
    assert await flow.admit("t", "big", 10, shared=True) == INFLIGHT_SHARE
    # Another tenant's functions do not count.
    assert await flow.admit("u", "other", 10, shared=True) is None
    assert await flow.admit("u", "other", 10, shared=True) is None


async def test_share_of_recent_run_time_sets_a_long_runner_aside() -> None:
    clock = Clock()
    flow = make(clock, inflight=1000, share=0.5, wait_s=10)
    assert await flow.admit("t", "long", 10, shared=True) is None
    clock.now += 20
    flow.leave("t", "long", run_s=20)
    assert await flow.admit("t", "quick", 10, shared=True) is None
    flow.leave("t", "quick", run_s=0.01)
    assert await flow.admit("t", "long", 10, shared=True) == RUN_TIME_SHARE
    # Long ago, it no longer counts: recent run time decays.
    clock.now += 600
    assert await flow.admit("t", "quick", 10, shared=True) is None
    assert await flow.admit("t", "long", 10, shared=True) is None


async def test_window_follows_capacity_errors_and_ceiling() -> None:
    flow = make(wait_s=10)
    for _ in range(4):
        assert await flow.admit("t", "f", 4, shared=False) is None
    for _ in range(4):
        flow.on_capacity_error("t", "f")
        flow.leave("t", "f")
    assert flow.get("t", "f").window.limit == 2  # cut once, by half
    assert [await flow.admit("t", "f", 4, shared=False) for _ in range(2)] == [None, None]
    third = asyncio.ensure_future(flow.admit("t", "f", 4, shared=False))
    await asyncio.sleep(0)
    assert not third.done()
    flow.leave("t", "f")
    assert await third is None


async def test_idle_time_and_forgetting() -> None:
    clock = Clock()
    flow = make(clock)
    assert flow.idle_for("t", "f") == float("inf")
    assert await flow.admit("t", "f", 1, shared=False) is None
    assert flow.idle_for("t", "f") == 0.0
    flow.leave("t", "f")
    clock.now += 30
    assert flow.idle_for("t", "f") == 30
    flow.forget_idle(10)
    assert flow.functions() == []


async def test_holding_the_consumers_window_sets_it_aside_even_alone() -> None:
    flow = make(inflight=4, share=0.5, prefetch=8, wait_s=10)
    for _ in range(3):
        assert await flow.admit("t", "f", 10, shared=True) is None
        flow.leave("t", "f", finishing=True)  # ran; its destination is still being served
    assert await flow.admit("t", "f", 10, shared=True) is None
    assert flow.get("t", "f").in_hand == 4
    # Four of the eight messages the consumer may hold: what is behind them waits.
    assert await flow.admit("t", "f", 10, shared=True) == WINDOW_SHARE
    assert await flow.admit("t", "f", 10, shared=False) is None  # its own queue: fine
    for _ in range(3):
        flow.settled("t", "f")
    assert flow.get("t", "f").in_hand == 2
    assert await flow.admit("t", "f", 10, shared=True) is None
