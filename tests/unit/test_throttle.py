"""The gateway's throttles: which queue a submission is judged by, the 429 they raise
(error body, Retry-After) and the counter of refusals by tenant and reason."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway.errors import error_response
from gateway.metrics import THROTTLED
from gateway.throttle import BACKLOG, RATE, check_backlog, check_rate, queue_of
from runtime.errors import Throttled
from runtime.flow.backpressure import Backpressure
from runtime.models import FunctionConfig


def record(tenant: str = "t1", name: str = "f", **config: Any) -> Any:
    return SimpleNamespace(tenant=tenant, name=name, config=FunctionConfig(**config))


def refusals(tenant: str, reason: str) -> float:
    return THROTTLED.labels(tenant, reason)._value.get()


def test_the_queue_a_submission_goes_to() -> None:
    shared = record()
    assert queue_of(shared) == "fnhost.t.t1"  # a record without queue_mode yet
    assert queue_of(record(dedicated_queue=True)) == "fnhost.f.t1.f"
    for mode, queue in (("shared", "fnhost.t.t1"), ("dedicated", "fnhost.f.t1.f"),
                        ("pinned", "fnhost.f.t1.f")):
        shared.queue_mode = mode
        assert queue_of(shared) == queue


def test_a_backlog_refusal_is_a_429_with_retry_after() -> None:
    clock = SimpleNamespace(now=0.0)
    bp = Backpressure(10, 3600.0, 0.5, sample=1.0, clock=lambda: clock.now,
                      rng=random.Random(1).random)
    flood = record("tb", "flood")
    for _ in range(20):
        check_backlog(bp, flood, "Event")
    bp.observe("fnhost.t.tb", 500)
    bp.refresh()
    before = refusals("tb", BACKLOG)
    with pytest.raises(Throttled) as info:
        for _ in range(100):
            check_backlog(bp, flood, "Event")
    assert refusals("tb", BACKLOG) == before + 1
    response = error_response(info.value)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"  # nothing drains it yet
    error = orjson.loads(bytes(response.body))["error"]
    assert error["code"] == "throttled"
    assert "500 messages" in error["message"] and "10 messages" in error["message"]


class Limiter:
    def __init__(self, wait: float | None) -> None:
        self.wait = wait
        self.asked: list[tuple[str, str, float]] = []

    async def admit(self, tenant: str, function: str, rate: float) -> float | None:
        self.asked.append((tenant, function, rate))
        return self.wait


async def test_a_rate_refusal_rounds_retry_after_up() -> None:
    limited = record("tr", "f", max_rate=2.5)
    before = refusals("tr", RATE)
    with pytest.raises(Throttled) as info:
        await check_rate(Limiter(0.01), limited, "RequestResponse")  # type: ignore[arg-type]
    assert info.value.retry_after_s == 1
    assert "max_rate of 2.5" in info.value.message
    assert refusals("tr", RATE) == before + 1
    with pytest.raises(Throttled) as info:
        await check_rate(Limiter(3.2), limited, "Event")  # type: ignore[arg-type]
    assert info.value.retry_after_s == 4
    admitted = Limiter(None)
    await check_rate(admitted, limited, "Event")  # type: ignore[arg-type]
    assert admitted.asked == [("tr", "f", 2.5)]
    assert refusals("tr", RATE) == before + 2
