"""Back-pressure end to end (DESIGN.md 'Flow control'): a tenant flooding a function
that nothing consumes gets 429 with Retry-After once its queue is past a (low)
threshold; a second tenant's submissions are all accepted; sync invocations of the
flooding tenant, of the flooded function too, are never refused for the backlog.
Real gateway and scheduler processes, RabbitMQ, a MongoDB-wire server and Docker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.harness import (
    MongoServer,
    Platform,
    Submitters,
    assert_error,
    deploy,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)

THRESHOLD = 20  # messages
SLOW_S = 3.0  # each flooded task sleeps this long once a scheduler runs it


@pytest.fixture(scope="module")
def flooded(mongo: MongoServer) -> Iterator[Platform]:
    # A prefetch of 1: once the scheduler is back, it holds one flooded task at a time
    # and the backlog stays in the queue.
    with own_platform(mongo.url, backlog_messages=THRESHOLD, backlog_poll_s=0.2, async_prefetch=1,
                      shutdown_grace_s=1) as p:
        yield p


def throttled_count(platform: Platform, tenant: str) -> float:
    text = platform.metrics()
    m = re.search(rf'^fnhost_throttled_total{{reason="backlog",tenant="{tenant}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_flooding_tenant_is_throttled_the_quiet_one_and_sync_are_not(flooded: Platform) -> None:
    flood_client, quiet_client = flooded.new_tenant(), flooded.new_tenant()
    try:
        for client in (flood_client, quiet_client):
            r = deploy(client, "slow", "sleep", {"max_concurrency": 3})
            assert r.status_code == 201, r.text
            r = deploy(client, "hello", "hello")
            assert r.status_code == 201, r.text
        flooded.stop_role("scheduler")  # nothing consumes: every accepted task waits

        with Submitters(flood_client, "slow", {"seconds": SLOW_S}, threads=3) as flood:
            # Until the backlog is well past the threshold and refusals are the rule.
            deadline = time.monotonic() + 60
            while flood.count(202) < 5 * THRESHOLD or flood.count(429) < 50:
                assert time.monotonic() < deadline, (flood.count(202), flood.count(429))
                time.sleep(0.05)
            # The quiet tenant, meanwhile, past its own threshold too: its share of the
            # backlog is small, so none of its submissions is refused.
            quiet = [submit_event(quiet_client, "hello", {"name": str(i)})
                     for i in range(int(1.5 * THRESHOLD))]
            recent_start = len(flood.responses())
            time.sleep(1.0)
            recent = flood.responses()[recent_start:]
        assert [r.status_code for r in quiet] == [202] * len(quiet), [r.text for r in quiet]
        answered = flood.responses()
        assert all(r.status_code in (202, 429) for r in answered), {r.status_code for r in answered}
        assert sum(r.status_code == 429 for r in recent) > 0.8 * len(recent), len(recent)

        refused = [r for r in answered if r.status_code == 429]
        error = assert_error(refused[-1], 429, "throttled")
        assert f"thresholds: {THRESHOLD} messages" in error["message"], error
        for r in refused:
            assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
        assert refused[-1].headers["retry-after"] == "60"  # nothing drains the queue
        assert throttled_count(flooded, flood_client.tenant_id) == len(refused)  # type: ignore[attr-defined]
        assert throttled_count(flooded, quiet_client.tenant_id) == 0  # type: ignore[attr-defined]

        # A scheduler again: it runs one flooded task at a time, so the backlog stays.
        flooded.start_role("scheduler")
        flooded.wait_ready()
        for name, event in (("slow", {"seconds": 0}), ("hello", {"name": "sync"})):
            r = invoke(flood_client, name, event)
            assert r.status_code == 200, r.text  # never refused for the async backlog
        assert invoke(flood_client, "slow", {"seconds": 0}).json()["slept_s"] < 1
        # ... while its async submissions still are (should the scheduler move the
        # function to a queue of its own, the backlog is read there within a poll or two).
        answers: list[int] = []
        deadline = time.monotonic() + 15
        while answers.count(429) < 20:
            assert time.monotonic() < deadline, answers
            answers.append(submit_event(flood_client, "slow", {"seconds": SLOW_S}).status_code)
        assert set(answers) <= {202, 429}, answers
        # The quiet tenant's tasks run.
        last = quiet[-1].headers["x-task-id"]
        assert wait_task(quiet_client, last, timeout=60)["status"] == "Succeeded"
    finally:
        flood_client.close()
        quiet_client.close()
