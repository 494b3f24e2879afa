"""One tenant cannot take a whole scheduler (runtime/pool/share.py).

Tenant A drives three functions at high concurrency against a scheduler with room
for a few containers; tenant B, calling its own function all along, keeps its warm
containers and its latency, and is never refused for capacity while A holds more
than its share. Real gateway and scheduler, RabbitMQ, the MongoDB-wire server, Docker.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    ADMIN_KEY,
    MongoServer,
    Platform,
    deploy,
    function_zip,
    invoke,
    own_platform,
)

SLOTS = 10
SLEEPER = "import time\n\ndef handler(event, context):\n    time.sleep(event['s'])\n    return 'ok'\n"
ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def small_host(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, max_containers=SLOTS, keep_alive_s=600) as p:
        yield p


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def b_calls(client: httpx.Client, threads: int, each: int) -> tuple[list[float], Counter[int]]:
    """`threads` threads each making `each` sync calls one after another: latencies (s)
    and status codes."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def run() -> None:
        for i in range(each):
            started = time.perf_counter()
            r = invoke(client, "echo", {"i": i})
            took = time.perf_counter() - started
            with lock:
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append(took)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, statuses


def pool_metric(platform: Platform, name: str) -> float:
    text = httpx.get(f"{platform.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_tenant_driving_three_functions_leaves_another_its_share(small_host: Platform) -> None:
    a, b = small_host.new_tenant(), small_host.new_tenant()
    for name in ("one", "two", "three"):
        assert deploy(a, name, function_zip(SLEEPER), {"max_concurrency": 50}).status_code == 201
    assert deploy(b, "echo", function_zip(ECHO), {"max_concurrency": 4}).status_code == 201

    b_calls(b, 2, 20)  # B warm
    alone, statuses = b_calls(b, 2, 100)
    assert statuses == Counter({200: 200}), statuses

    stop = threading.Event()
    a_statuses: Counter[int] = Counter()

    def flood(name: str) -> None:
        while not stop.is_set():
            try:
                a_statuses[invoke(a, name, {"s": 0.3}).status_code] += 1
            except httpx.HTTPError:
                a_statuses[0] += 1

    flooders = [threading.Thread(target=flood, args=(n,)) for n in ("one", "two", "three") for _ in range(8)]
    for t in flooders:
        t.start()
    try:
        time.sleep(3)  # A holds every slot it can get
        beside, statuses = b_calls(b, 2, 100)
    finally:
        stop.set()
        for t in flooders:
            t.join()

    # A wanted 24 containers on a host of 10: it held more than its share throughout.
    assert a_statuses[200] > 0, a_statuses
    assert statuses == Counter({200: 200}), f"B was refused: {statuses}"
    ratio = p95(beside) / p95(alone)
    print(f"B p95 alone {p95(alone) * 1000:.1f} ms, beside A {p95(beside) * 1000:.1f} ms "
          f"({ratio:.2f}x); A's answers {dict(a_statuses)}; fair-share releases "
          f"{pool_metric(small_host, 'fnhost_pool_fair_share_releases_total'):.0f}")
    assert ratio <= 1.5, (
        f"B's p95 beside A {p95(beside) * 1000:.1f} ms, alone {p95(alone) * 1000:.1f} ms "
        f"({ratio:.2f}x); A's answers {dict(a_statuses)}"
    )
    a.close()
    b.close()


def test_a_newcomer_gets_room_from_a_tenant_holding_the_whole_host(mongo: MongoServer) -> None:
    """A holds every slot with busy containers; B's new function waits for the room A
    gives back (A's released containers are removed, not kept warm for A)."""
    with own_platform(mongo.url, max_containers=SLOTS, keep_alive_s=600) as host:
        newcomer_beside_a_hog(host)


def newcomer_beside_a_hog(small_host: Platform) -> None:
    a, b = small_host.new_tenant(), small_host.new_tenant()
    assert deploy(a, "hog", function_zip(SLEEPER), {"max_concurrency": 40}).status_code == 201
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            try:
                invoke(a, "hog", {"s": 0.5})
            except httpx.HTTPError:
                pass

    flooders = [threading.Thread(target=flood) for _ in range(2 * SLOTS)]
    for t in flooders:
        t.start()
    try:
        time.sleep(3)
        before = pool_metric(small_host, "fnhost_pool_fair_share_releases_total")
        answers = []
        for n in range(3):
            assert deploy(b, f"new{n}", function_zip(ECHO)).status_code == 201
            answers.append(invoke(b, f"new{n}", {"n": n}))
    finally:
        stop.set()
        for t in flooders:
            t.join()
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    assert [r.json() for r in answers] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert pool_metric(small_host, "fnhost_pool_fair_share_releases_total") > before
    a.close()
    b.close()
