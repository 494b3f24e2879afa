"""A queue with a sustained backlog is consumed by more schedulers, then by its
owners again once drained (DESIGN.md 'Flow control'; runtime/scheduler/partitions.py).

Three scheduler processes; the tenant's queue has one owner by default. A large
backlog spreads it over all three, and none of its tasks is lost or left behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import (
    MongoServer,
    Platform,
    consumers,
    deploy,
    function_zip,
    list_all_tasks,
    own_platform,
    submit_event,
)

SLEEPER = "import time\n\ndef handler(event, context):\n    time.sleep(0.2)\n    return 1\n"


@pytest.fixture
def three(mongo: MongoServer) -> Iterator[Platform]:
    settings = {
        "queue_owners": 1, "queue_owners_max": 3, "partition_backlog": 40,
        "partition_after_s": 1.0, "async_prefetch": 4,
        # The tenant's queue is the one under test: its function is never promoted (by a
        # scheduler, or by the gateway on its burst), and its owner keeps consuming it
        # when it is idle again.
        "promote_waiting": 10000, "promote_wait_s": 3600, "promote_burst": 1_000_000,
        "queue_idle_s": 600,
        # Its 600 tasks are 30 s of work, a flood by the expected-wait rule: accepted
        # all the same here, since the backlog itself is what is under test.
        "backlog_burst": 1_000_000,
    }
    with own_platform(mongo.url, **settings) as p:
        for n in ("b", "c"):
            p.start_scheduler(f"{p.scheduler_id}-{n}")
        yield p


def test_backlog_spreads_over_more_schedulers_and_back(three: Platform) -> None:
    client = three.new_tenant()
    queue = f"fnhost.t.{client.tenant_id}"  # type: ignore[attr-defined]
    amqp_url = three.env["FNHOST_AMQP_URL"]
    r = deploy(client, "work", function_zip(SLEEPER), {"max_concurrency": 4})
    assert r.status_code == 201, r.text
    time.sleep(2)  # the other schedulers have joined

    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(consumers(amqp_url, queue) or 0)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: submit_event(client, "work", {}), range(600)))
        assert all(r.status_code == 202 for r in answers), [r.text for r in answers if r.status_code != 202]
        ids = [r.headers["x-task-id"] for r in answers]
        deadline = time.monotonic() + 60
        while max(seen, default=0) < 3:
            assert time.monotonic() < deadline, f"consumed by {max(seen)} scheduler(s) at most"
            time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()

    # Drained: every task final, none lost; then back to its one owner.
    deadline = time.monotonic() + 120
    while True:
        tasks = list_all_tasks(client, limit=100, function="work")
        done = [t for t in tasks if t["status"] == "Succeeded"]
        if len(done) == len(ids):
            break
        assert time.monotonic() < deadline, f"{len(done)} of {len(ids)} succeeded"
        time.sleep(1)
    assert {t["task_id"] for t in tasks} == set(ids)
    deadline = time.monotonic() + 30
    while consumers(amqp_url, queue) != 1:
        assert time.monotonic() < deadline, three.tail(60)
        time.sleep(0.2)
    client.close()
