"""A function's `max_rate` end to end: it holds across two gateway processes (one bucket
in MongoDB), applies to sync and async invocations alike with 429 and Retry-After, and
is set, changed and cleared like any config key.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from runtime.flow.rate import burst
from tests.harness import assert_error, deploy, function_zip, invoke, returns, submit_event

RATE = 5.0
SECONDS = 3.0


def test_max_rate_holds_across_two_gateways(tenant: httpx.Client, second_gateway: str) -> None:
    r = deploy(tenant, "limited", "hello", {"max_rate": RATE})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["max_rate"] == RATE
    other = httpx.Client(base_url=second_gateway, headers=dict(tenant.headers), timeout=60)
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)
    times: list[float] = []

    def flood(client: httpx.Client) -> None:
        barrier.wait()
        started = time.monotonic()
        with lock:
            times.append(started)
        while time.monotonic() - started < SECONDS:
            r = submit_event(client, "limited", {"name": "x"})
            with lock:
                answers.append(r)
        with lock:
            times.append(time.monotonic())

    try:
        threads = [threading.Thread(target=flood, args=(c,)) for c in (tenant, other, tenant, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    elapsed = max(times) - min(times)
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code == 429]
    assert len(accepted) + len(refused) == len(answers), {r.status_code for r in answers}
    # The bucket's bound, whichever gateway answered; and the rate is used, not starved.
    assert len(accepted) <= burst(RATE) + RATE * elapsed + 1, (len(accepted), elapsed)
    assert len(accepted) >= 0.6 * RATE * elapsed, (len(accepted), elapsed)
    assert len(refused) > 5 * len(accepted), (len(refused), len(accepted))
    error = assert_error(refused[-1], 429, "throttled")
    assert "max_rate of 5" in error["message"], error
    assert refused[-1].headers["retry-after"] == "1"


def test_max_rate_applies_to_sync_invocations_and_can_be_changed(tenant: httpx.Client) -> None:
    r = deploy(tenant, "paced", function_zip(returns("ok"), {"max_rate": 0.5}))
    assert r.status_code == 201 and r.json()["config"]["max_rate"] == 0.5, r.text
    assert invoke(tenant, "paced").status_code == 200  # a cold start
    time.sleep(1 / 0.5 + 0.1)  # the bucket (one token) is full again
    assert invoke(tenant, "paced").status_code == 200  # warm, quick
    r = invoke(tenant, "paced")  # the next token is due in 2 s
    error = assert_error(r, 429, "throttled")
    assert "max_rate" in error["message"], error
    assert r.headers["retry-after"] == "2"
    assert_error(submit_event(tenant, "paced", {}), 429, "throttled")  # the same bucket

    def patch(config: dict[str, Any]) -> httpx.Response:
        return tenant.patch("/v1/functions/paced", json=config)

    assert_error(patch({"max_rate": 0}), 400, field="max_rate")
    assert_error(patch({"max_rate": 100001}), 400, field="max_rate")
    r = patch({"max_rate": None})
    assert r.status_code == 200 and r.json()["config"]["max_rate"] is None, r.text
    assert [invoke(tenant, "paced").status_code for _ in range(5)] == [200] * 5
    assert tenant.get("/v1/functions/paced").json()["config"]["max_rate"] is None
