"""RabbitMQ restarted under a warm function's sync invocations: they go on over the
direct hop (no broker needed), asynchronous submissions and tenant creation answer
503 with Retry-After and leave nothing behind, and once the broker is back the
platform converges (heartbeats, consumers) and takes tasks again.

The broker is really stopped (`rabbitmqctl stop_app`) and always started again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fault.faults import broker_stopped, submit_when_back
from tests.harness import (
    MongoServer,
    Platform,
    assert_error,
    deploy,
    invoke,
    list_all_tasks,
    own_platform,
    submit_event,
    wait_task,
)

# How long the broker stays down: many heartbeat periods (0.5 s in tests), longer
# than a scheduler was remembered without heartbeats (3 periods).
OUTAGE_S = 8.0


class SyncLoop:
    """Invokes a function synchronously, one call after another, in a thread; records
    (time, status) of each call."""

    def __init__(self, client: httpx.Client, name: str) -> None:
        self._client = client
        self._name = name
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync-loop", daemon=True)
        self._count = threading.Condition()

    def __enter__(self) -> SyncLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = invoke(self._client, self._name, {"name": "loop"}).status_code
            except httpx.HTTPError:
                status = 0
            with self._count:
                self.results.append((time.monotonic(), status))
                self._count.notify_all()
            time.sleep(0.05)

    def wait_calls(self, n: int, since: float, timeout: float = 60) -> None:
        """Wait until `n` calls finished after `since`."""
        with self._count:
            ok = self._count.wait_for(
                lambda: sum(1 for at, _ in self.results if at > since) >= n, timeout
            )
        assert ok, f"fewer than {n} sync calls in {timeout} s: {self.results[-5:]}"

    def between(self, start: float, end: float) -> list[int]:
        with self._count:
            return [status for at, status in self.results if start < at <= end]


@pytest.fixture(scope="module")
def platform_alone(mongo: MongoServer) -> Iterator[Platform]:
    """A platform on a vhost of its own (the broker restart drops every connection)."""
    with own_platform(mongo.url) as platform:
        yield platform


def test_sync_invocations_go_on_through_a_broker_restart(platform_alone: Platform) -> None:
    platform = platform_alone
    with platform.new_tenant() as client:
        assert deploy(client, "hello", "hello").status_code == 201
        assert invoke(client, "hello", {"name": "warm"}).status_code == 200
        with SyncLoop(client, "hello") as loop:
            loop.wait_calls(10, since=0)
            with broker_stopped():
                down = time.monotonic()
                loop.wait_calls(20, since=down)
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
                up = time.monotonic()
            # Back: membership converges on heartbeats again, and the scheduler consumes.
            platform.wait_ready(60)
            r = submit_event(client, "hello", {})
            assert r.status_code == 202, r.text + platform.tail()
            task = wait_task(client, r.headers["x-task-id"], timeout=30)
            assert task["status"] == "Succeeded", task
            loop.wait_calls(10, since=time.monotonic())
        during = loop.between(down, up)
        served = [s for s in during if s == 200]
        print(f"sync invocations while the broker was down: {len(served)} of {len(during)} served")
        assert len(served) >= 0.95 * len(during), (len(served), len(during), during)
        everything = [s for _, s in loop.results]
        assert everything.count(200) >= 0.95 * len(everything), everything
    assert "unhandled error" not in platform.tail(400), platform.tail()


def test_submissions_while_the_broker_is_down_are_503_and_leave_nothing(
    platform_alone: Platform,
) -> None:
    platform = platform_alone
    with platform.new_tenant() as client, platform.admin() as admin:
        assert deploy(client, "hello", "hello").status_code == 201
        with broker_stopped():
            for headers in ({}, {"X-Task-Id": "during-outage"}, {"X-Delay-Seconds": "1"}):
                r = submit_event(client, "hello", {}, headers=headers)
                if "X-Delay-Seconds" in headers:
                    # A delayed task needs only its timer in the database: accepted.
                    assert r.status_code == 202, r.text
                    delayed = r.headers["x-task-id"]
                    continue
                err = assert_error(r, 503, "unavailable")
                assert "broker" in err["message"], err
                assert int(r.headers["retry-after"]) >= 1, r.headers
                assert "x-task-id" not in r.headers, r.headers
            r = admin.post("/v1/tenants", json={"name": "made-during-outage"})
            assert_error(r, 503, "unavailable")
            assert int(r.headers["retry-after"]) >= 1, r.headers
            # A function change is stored in MongoDB: it stands (200), and its
            # broadcast goes out when the broker is back.
            r = client.patch("/v1/functions/hello", json={"timeout_s": 17})
            assert r.status_code == 200, r.text
            assert r.json()["config"]["timeout_s"] == 17, r.json()
        # Nothing of the refused submissions is left behind: the id is free again.
        submit_when_back(client, "hello", "during-outage")
        try:
            assert wait_task(client, "during-outage", timeout=30)["status"] == "Succeeded"
            assert wait_task(client, delayed, timeout=30)["status"] == "Succeeded"
        except AssertionError:
            print(platform.tail(200))
            raise
        assert client.get("/v1/functions/hello").json()["config"]["timeout_s"] == 17
        r = client.post("/v1/functions/hello/invocations", json={"name": "x"})
        assert r.status_code == 200, r.text
        tasks = {t["task_id"] for t in list_all_tasks(client)}
        assert tasks == {"during-outage", delayed}, tasks
        # The tenant refused during the outage was taken back: its name is free.
        assert admin.post("/v1/tenants", json={"name": "made-during-outage"}).status_code == 201
    assert "unhandled error" not in platform.tail(400), platform.tail()
