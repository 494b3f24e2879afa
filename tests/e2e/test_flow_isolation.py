"""Isolation between the functions of one tenant (DESIGN.md 'Flow control').

A function that holds up its tenant's queue is promoted to a dedicated queue
`fnhost.f.<tenant>.<function>`: the tenant's other functions keep their pace,
its own tasks all finish, each once, and it goes back to the tenant's queue
(its queue deleted) after a quiet period. `dedicated_queue: true` pins it.
Sync invocations never wait behind async backlog. Real gateway and scheduler
processes, RabbitMQ, a MongoDB-wire server and Docker.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    deploy,
    eventually,
    function_zip,
    invoke,
    own_platform,
    queue_state,
    submit_event,
    wait_task,
)

SLEEPER = "import time\n\ndef handler(event, context):\n    time.sleep(event['s'])\n    return event\n"
DEMOTE_AFTER_S = 3.0


@pytest.fixture(scope="module")
def flow_platform(mongo: MongoServer) -> Iterator[Platform]:
    # A small prefetch: the backlog below is well beyond what the consumer holds, as
    # thousands of tasks would be with the default. The schedulers' signals are what is
    # tested here: no gateway promotes on a burst (tests/e2e/test_burst_promotion.py).
    with own_platform(mongo.url, demote_after_s=DEMOTE_AFTER_S, async_prefetch=8,
                      promote_burst=1_000_000) as p:
        yield p


@pytest.fixture
def client(flow_platform: Platform) -> Iterator[httpx.Client]:
    c = flow_platform.new_tenant()
    yield c
    c.close()


def deployed(client: httpx.Client, name: str, config: dict[str, Any]) -> None:
    r = deploy(client, name, function_zip(SLEEPER), config)
    assert r.status_code == 201, r.text


def submit(client: httpx.Client, name: str, seconds: float) -> str:
    r = submit_event(client, name, {"s": seconds})
    assert r.status_code == 202, r.text
    return str(r.headers["x-task-id"])


def function(client: httpx.Client, name: str) -> dict[str, Any]:
    r = client.get(f"/v1/functions/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def queue_exists(amqp_url: str, name: str) -> bool:
    return queue_state(amqp_url, name) is not None


def completion_s(task: dict[str, Any]) -> float:
    def at(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    return (at(task["history"][-1]["at"]) - at(task["created_at"])).total_seconds()


def test_blocked_function_is_promoted_and_others_keep_flowing(
    flow_platform: Platform, client: httpx.Client
) -> None:
    tenant = client.tenant_id  # type: ignore[attr-defined]
    deployed(client, "slow", {"max_concurrency": 1})
    deployed(client, "quick", {"max_concurrency": 4})
    assert function(client, "slow")["queue_mode"] == "shared"
    # 15 s of work for `slow` in the tenant's queue, then `quick`'s tasks behind it.
    slow = [submit(client, "slow", 0.5) for _ in range(30)]
    quick = [submit(client, "quick", 0.01) for _ in range(20)]
    done = [wait_task(client, t, timeout=20) for t in quick]
    assert all(t["status"] == "Succeeded" for t in done), done
    # Behind 15 s of queued work, yet done in seconds: `slow` was set aside.
    assert max(completion_s(t) for t in done) < 5, [completion_s(t) for t in done]

    described = function(client, "slow")
    assert described["queue_mode"] == "dedicated", described
    assert described["queue_reason"] and described["queue_since"], described
    assert queue_exists(flow_platform.env["FNHOST_AMQP_URL"], f"fnhost.f.{tenant}.slow")
    assert function(client, "quick")["queue_mode"] in ("shared", "dedicated")

    # The schedulers' heartbeats carry their flow state to the gateway's metrics.
    def metric(line_start: str) -> float | None:
        text = flow_platform.metrics()
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return None

    scheduler = flow_platform.scheduler_id
    window = f'fnhost_dispatch_window{{function="slow",scheduler="{scheduler}",tenant="{tenant}"}}'
    eventually(lambda: metric(window) == 1.0, 5, "the slow function's window in /metrics")
    # The promotion is counted after the store records it: the heartbeat that carries
    # the count may be the next one, so the gateway sees it within a beat or two.
    promotions = f'fnhost_queue_promotions_total{{scheduler="{scheduler}"}}'
    eventually(lambda: (metric(promotions) or 0) >= 1, 5, "the promotion counted in /metrics")

    # Every task of the promoted function runs, once: none lost in the move.
    finals = [wait_task(client, t, timeout=60) for t in slow]
    assert [t["status"] for t in finals] == ["Succeeded"] * 30, finals
    assert all(t["approximate_invoke_count"] == 1 for t in finals), finals

    # Quiet: back on the tenant's queue, and its queue is gone.
    eventually(lambda: function(client, "slow")["queue_mode"] == "shared", DEMOTE_AFTER_S + 15,
          "demotion")
    back = function(client, "slow")
    assert back["queue_reason"] and "quiet" in back["queue_reason"], back
    eventually(lambda: not queue_exists(flow_platform.env["FNHOST_AMQP_URL"], f"fnhost.f.{tenant}.slow"), 15,
          "the dedicated queue's deletion")
    # And it still runs from there.
    task = wait_task(client, submit(client, "slow", 0.0), timeout=30)
    assert task["status"] == "Succeeded", task


def test_pinned_function_uses_its_own_queue(flow_platform: Platform, client: httpx.Client) -> None:
    tenant = client.tenant_id  # type: ignore[attr-defined]
    deployed(client, "pinned", {"dedicated_queue": True})
    described = function(client, "pinned")
    assert described["queue_mode"] == "pinned", described
    assert described["queue_reason"] == "dedicated_queue: true" and described["queue_since"]
    tasks = [submit(client, "pinned", 0.0) for _ in range(5)]
    assert all(wait_task(client, t)["status"] == "Succeeded" for t in tasks)
    assert queue_exists(flow_platform.env["FNHOST_AMQP_URL"], f"fnhost.f.{tenant}.pinned")

    r = client.patch("/v1/functions/pinned", json={"dedicated_queue": False})
    assert r.status_code == 200, r.text
    assert function(client, "pinned")["queue_mode"] == "shared"
    tasks = [submit(client, "pinned", 0.0) for _ in range(5)]
    assert all(wait_task(client, t)["status"] == "Succeeded" for t in tasks)
    amqp_url = flow_platform.env["FNHOST_AMQP_URL"]
    eventually(lambda: not queue_exists(amqp_url, f"fnhost.f.{tenant}.pinned"), 15,
               "the unpinned queue's deletion")


def test_sync_never_waits_behind_async_backlog(client: httpx.Client) -> None:
    deployed(client, "backlog", {"max_concurrency": 2})
    deployed(client, "sync", {"max_concurrency": 2})

    def sync_latencies(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            r = invoke(client, "sync", {"s": 0.0})
            assert r.status_code == 200, r.text
            times.append(time.perf_counter() - started)
        return times

    sync_latencies(3)  # warm
    alone = statistics.median(sync_latencies(20))
    backlog = [submit(client, "backlog", 0.5) for _ in range(200)]
    beside = sync_latencies(20)
    assert statistics.median(beside) < max(3 * alone, alone + 0.05), (alone, beside)
    assert max(beside) < 2.0, beside
    r = client.delete("/v1/functions/backlog")  # its backlog ends Invalid, not our business here
    assert r.status_code in (200, 204), r.text
    assert backlog


def test_timeouts_shrink_the_dispatch_window(flow_platform: Platform, client: httpx.Client) -> None:
    tenant = client.tenant_id  # type: ignore[attr-defined]
    deployed(client, "stuck", {"max_concurrency": 8, "timeout_s": 0.3,
                               "async": {"max_retry_attempts": 0}})
    tasks = [submit(client, "stuck", 5.0) for _ in range(8)]
    finals = [wait_task(client, t, timeout=60) for t in tasks]
    assert [t["status"] for t in finals] == ["Failed"] * 8, finals
    assert all(t["error"]["errorType"] == "Timeout" for t in finals), finals

    # A surge of timeouts is a capacity signal: the window was cut below its bound
    # (max_concurrency), and the schedulers' metrics show it.
    labels = f'function="stuck",scheduler="{flow_platform.scheduler_id}",tenant="{tenant}"'

    def window() -> tuple[float, float] | None:
        text = flow_platform.metrics()
        values = {}
        for line in text.splitlines():
            for name in ("fnhost_dispatch_window", "fnhost_dispatch_ceiling"):
                if line.startswith(f"{name}{{{labels}}} "):
                    values[name] = float(line.rsplit(" ", 1)[1])
        if len(values) < 2:
            return None
        return values["fnhost_dispatch_window"], values["fnhost_dispatch_ceiling"]

    limit, ceiling = eventually(window, 10, "the stuck function's window in /metrics")
    assert ceiling == 8 and limit <= 4, (limit, ceiling)
