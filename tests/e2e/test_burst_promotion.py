"""A gateway that sees a burst of one function's submissions, while another function of
its tenant is active, promotes the function to a dedicated queue itself, before any
scheduler holds a backlog of it (even with no scheduler consuming at all); every task
still runs, once. A burst with nobody behind it stays on its tenant's queue."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

from tests.harness import (
    MongoServer,
    deploy,
    eventually,
    own_platform,
    submit_event,
    wait_task,
)

BURST = 40  # above the gateway's threshold: half the default prefetch (64), 32


def test_a_burst_seen_by_the_gateway_gets_a_dedicated_queue(mongo: MongoServer) -> None:
    with own_platform(mongo.url) as p, p.new_tenant() as client, p.new_tenant() as alone:
        assert deploy(client, "bursty", "noop").status_code == 201
        assert deploy(client, "calm", "noop").status_code == 201
        assert deploy(alone, "bursty", "noop").status_code == 201
        scheduler = p.procs["scheduler"]
        os.kill(scheduler.pid, signal.SIGSTOP)  # nothing consumes: no scheduler signal
        try:
            calm = submit_event(client, "calm", {})  # the tenant's other function is active
            assert calm.status_code == 202
            with ThreadPoolExecutor(8) as threads:
                answers = list(threads.map(lambda _: submit_event(client, "bursty", {}), range(BURST)))
                lone = list(threads.map(lambda _: submit_event(alone, "bursty", {}), range(BURST)))
            assert [r.status_code for r in answers + lone] == [202] * (2 * BURST)

            def promoted() -> dict[str, object] | None:
                described = client.get("/v1/functions/bursty").json()
                return described if described["queue_mode"] == "dedicated" else None

            described = eventually(promoted, 10, "the gateway promoted the bursting function")
            assert "burst" in str(described["queue_reason"])
            metrics = p.metrics()
            assert "fnhost_burst_promotions_total 1.0" in metrics
            assert client.get("/v1/functions/calm").json()["queue_mode"] == "shared"
            # Another tenant's function, alone in its tenant: nobody waits behind it.
            assert alone.get("/v1/functions/bursty").json()["queue_mode"] == "shared"
            # From then on its submissions go to its own queue.
            later = submit_event(client, "bursty", {})
            assert later.status_code == 202
        finally:
            os.kill(scheduler.pid, signal.SIGCONT)
        ids = [r.headers["x-task-id"] for r in [*answers, later]]
        for task_id in ids:
            task = wait_task(client, task_id, timeout=60)
            assert task["status"] == "Succeeded", task
            assert task["attempts"] == 1
        assert wait_task(client, calm.headers["x-task-id"], timeout=60)["status"] == "Succeeded"
        for r in lone:
            assert wait_task(alone, r.headers["x-task-id"], timeout=60)["status"] == "Succeeded"
