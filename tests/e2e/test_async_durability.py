"""Durability of async tasks: a scheduler killed (SIGKILL) in the middle of a burst
loses no task. Its unacknowledged messages are redelivered to the next scheduler;
some tasks run twice (at-least-once), none is lost."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.harness import (
    FINAL_STATUSES,
    MongoServer,
    Platform,
    Webhook,
    deploy,
    list_all_tasks,
    own_platform,
    submit_event,
)

TASKS = 200
CONCURRENCY = 8
# At most this many messages are unacknowledged at the scheduler at once
# (FNHOST_ASYNC_PREFETCH, 64 by default): only those can run a second time.
PREFETCH = 64
FINISH_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def durable_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, async_prefetch=PREFETCH) as platform:
        yield platform


def by_status(tasks: list[dict[str, Any]]) -> Counter[str]:
    return Counter(t["status"] for t in tasks)


def test_killing_the_scheduler_mid_burst_loses_no_task(durable_platform: Platform) -> None:
    platform = durable_platform
    client = platform.new_tenant()
    with client, Webhook() as hook:
        config = {"max_concurrency": CONCURRENCY,
                  "async": {"on_success": {"type": "webhook", "url": hook.url}}}
        r = deploy(client, "sleep", "sleep", config)
        assert r.status_code == 201, r.text

        def submit(i: int) -> httpx.Response:
            return submit_event(client, "sleep", {"seconds": 0.2, "i": i})

        with ThreadPoolExecutor(16) as threads:
            answers = list(threads.map(submit, range(TASKS)))
        refused = [(a.status_code, a.text[:200]) for a in answers if a.status_code != 202]
        assert not refused, refused
        task_ids = {a.headers["x-task-id"] for a in answers}
        assert len(task_ids) == TASKS

        # Let the burst get going: some tasks done, others running or queued.
        deadline = time.monotonic() + 30
        while True:
            tasks = list_all_tasks(client, limit=500, function="sleep")
            counts = by_status(tasks)
            if counts["Succeeded"] >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        platform.stop_role("scheduler", signal.SIGKILL)
        at_kill = by_status(list_all_tasks(client, limit=500, function="sleep"))
        print(f"\nat the kill: {dict(at_kill)}")
        finished_at_kill = sum(at_kill[s] for s in FINAL_STATUSES)
        assert 0 < finished_at_kill < TASKS, f"the kill should land mid-burst: {dict(at_kill)}"

        left = platform.remove_containers()
        print(f"containers left by the killed scheduler: {left}")
        platform.start_role("scheduler")
        platform.wait_ready(60)

        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while True:
            tasks = list_all_tasks(client, limit=500, function="sleep")
            final = [t for t in tasks if t["status"] in FINAL_STATUSES]
            if len(final) == TASKS or time.monotonic() > deadline:
                break
            time.sleep(0.25)

        seen = {t["task_id"]: t for t in tasks}
        assert set(seen) == task_ids, f"task records missing: {sorted(task_ids - set(seen))[:20]}"
        unfinished = {t["task_id"]: t["status"] for t in tasks if t["status"] not in FINAL_STATUSES}
        assert not unfinished, (
            f"{len(unfinished)} of {TASKS} tasks did not finish in {FINISH_TIMEOUT_S:g} s "
            f"after the restart: {dict(Counter(unfinished.values()))}; "
            f"first ones: {list(unfinished.items())[:20]}\n{platform.tail()}"
        )
        lost = {t["task_id"]: t["status"] for t in tasks if t["status"] != "Succeeded"}
        duplicates = [t for t in tasks if t["approximate_invoke_count"] > 1]
        # Give the last webhook POSTs a moment to be counted (they precede the final status).
        hook.wait(TASKS, timeout=10)
        per_task = Counter(
            r["requestContext"]["taskId"] for r in hook.records() if isinstance(r, dict)
        )
        deliveries = sum(per_task.values())
        print(
            f"lost: {len(lost)}, run more than once: {len(duplicates)}, "
            f"webhook deliveries: {deliveries} for {len(per_task)} tasks "
            f"({sum(1 for n in per_task.values() if n > 1)} delivered more than once)"
        )
        assert not lost, f"{len(lost)} tasks did not succeed: {list(lost.items())[:20]}"
        assert len(duplicates) <= PREFETCH, (
            f"{len(duplicates)} tasks ran more than once; at most {PREFETCH} were in flight"
        )
        assert set(per_task) == task_ids, f"no record delivered for {sorted(task_ids - set(per_task))[:20]}"
        assert deliveries >= TASKS
        for task in tasks:
            assert task["destination"]["status"] == "delivered", task
            assert task["approximate_invoke_count"] >= 1, task
