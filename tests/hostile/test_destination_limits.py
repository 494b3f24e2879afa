"""A function destination's submission meets the limits of any async submission
(runtime/tasks/admission.py): chain depth, payload size, back-pressure and max_rate,
each refusal a failed delivery with its reason; Throttled ones are tried again as
other destination failures are. Pure: fakes for the cache, the submitter and the
rate store; the real back-pressure policy."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from runtime.destinations import Destinations
from runtime.errors import NotFound, PayloadTooLarge, Throttled
from runtime.flow.backpressure import Backpressure
from runtime.models import FunctionConfig, FunctionDestination
from runtime.settings import load_settings
from runtime.tasks.admission import DestinationChainTooLong, FunctionDestinationSubmit
from runtime.tasks.submit import Accepted, Submission
from tests.harness import NoBroker

ON_DONE = FunctionDestination(type="function", name="next")


def record(name: str = "next", **config: Any) -> Any:
    return SimpleNamespace(tenant="t1", name=name, config=FunctionConfig(**config), routed=False)


@dataclass
class Cache:
    records: dict[str, Any] = field(default_factory=lambda: {"next": record()})

    async def get(self, tenant: str, name: str) -> Any:
        return self.records.get(name)


@dataclass
class Submitter:
    subs: list[Submission] = field(default_factory=list)

    async def submit(self, sub: Submission) -> Accepted:
        self.subs.append(sub)
        return Accepted(f"task-{len(self.subs)}", "req", None)


@dataclass
class Limiter:
    wait: float | None = None
    asked: list[tuple[str, str, float]] = field(default_factory=list)

    async def admit(self, tenant: str, function: str, rate: float) -> float | None:
        self.asked.append((tenant, function, rate))
        return self.wait


def quiet_backpressure() -> Backpressure:
    return Backpressure(10, 3600.0, 0.5, sample=1.0, clock=lambda: 0.0, rng=random.Random(1).random)


def make(cache: Cache | None = None, limiter: Limiter | None = None,
         backpressure: Backpressure | None = None, max_chain: int = 8,
         payload_limit: int = 1024) -> tuple[FunctionDestinationSubmit, Submitter]:
    submitter = Submitter()
    submit = FunctionDestinationSubmit(
        cast(Any, cache or Cache()), cast(Any, submitter), cast(Any, limiter or Limiter()),
        backpressure or quiet_backpressure(), None, payload_limit=payload_limit,
        max_chain=max_chain,
    )
    return submit, submitter


async def test_a_submission_within_the_limits_carries_its_chain_depth() -> None:
    submit, submitter = make()
    assert await submit("t1", "next", b"{}", "application/json", 3) == "task-1"
    (sub,) = submitter.subs
    assert (sub.record.name, sub.payload, sub.chain_depth) == ("next", b"{}", 3)


async def test_past_the_chain_limit_nothing_is_submitted() -> None:
    submit, submitter = make(max_chain=8)
    await submit("t1", "next", b"{}", "application/json", 8)
    with pytest.raises(DestinationChainTooLong) as info:
        await submit("t1", "next", b"{}", "application/json", 9)
    assert "over the limit of 8" in info.value.message
    assert len(submitter.subs) == 1


async def test_a_record_over_the_payload_limit_is_refused() -> None:
    submit, submitter = make(payload_limit=1024)
    with pytest.raises(PayloadTooLarge):
        await submit("t1", "next", b"x" * 1025, "application/json", 1)
    assert submitter.subs == []


async def test_max_rate_is_asked_and_refuses() -> None:
    limiter = Limiter(wait=2.5)
    submit, submitter = make(Cache({"next": record(max_rate=2.0)}), limiter)
    with pytest.raises(Throttled) as info:
        await submit("t1", "next", b"{}", "application/json", 1)
    assert limiter.asked == [("t1", "next", 2.0)]
    assert info.value.retry_after_s == 3 and "max_rate of 2" in info.value.message
    assert submitter.subs == []


async def test_back_pressure_refuses_a_flooding_destination() -> None:
    bp = quiet_backpressure()
    limiter = Limiter()
    submit, submitter = make(limiter=limiter, backpressure=bp)
    for _ in range(20):
        await submit("t1", "next", b"{}", "application/json", 1)
    assert len(submitter.subs) == 20
    bp.observe("fnhost.t.t1", 500)  # its queue's backlog, far past 10 messages
    bp.refresh()
    with pytest.raises(Throttled) as info:
        for _ in range(100):
            await submit("t1", "next", b"{}", "application/json", 1)
    assert "too many asynchronous invocations are waiting" in info.value.message
    # Refused before any token of max_rate is asked for (there is none here anyway).
    assert len(submitter.subs) < 120


async def test_an_unknown_function_is_not_found() -> None:
    submit, _ = make(Cache({}))
    with pytest.raises(NotFound):
        await submit("t1", "next", b"{}", "application/json", 1)


# -- as the destination's delivery records them -----------------------------------


async def deliver(submit: FunctionDestinationSubmit, chain_depth: int) -> Any:
    settings = load_settings(webhook_backoff_s=0, webhook_retry_attempts=3)
    destinations = Destinations(settings, cast(Any, NoBroker()), submit)
    await destinations.start()
    try:
        a_record = {"requestContext": {"taskId": "t", "condition": "Success"}, "payload": "x" * 10}
        return await destinations.deliver("t1", ON_DONE, a_record, chain_depth=chain_depth)
    finally:
        await destinations.close()


async def test_a_refused_chain_is_a_failed_delivery_with_its_reason_tried_once() -> None:
    submit, submitter = make(max_chain=2)
    delivery = await deliver(submit, chain_depth=2)  # its task is the second in the chain
    assert delivery.status == "failed", delivery
    assert delivery.attempts == 1
    assert delivery.error is not None and "over the limit of 2" in delivery.error
    assert submitter.subs == []
    ok = await deliver(submit, chain_depth=1)
    assert ok.status == "delivered" and submitter.subs[0].chain_depth == 2


async def test_a_throttled_destination_is_tried_again_then_failed() -> None:
    limiter = Limiter(wait=1.0)
    submit, _ = make(Cache({"next": record(max_rate=1.0)}), limiter)
    delivery = await deliver(submit, chain_depth=0)
    assert delivery.status == "failed", delivery
    assert delivery.attempts == 3 and len(limiter.asked) == 3
    assert delivery.error is not None and "max_rate" in delivery.error
