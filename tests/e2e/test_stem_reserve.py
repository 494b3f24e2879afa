"""The stem-cell reserve seen from the API: a new function starts from a stem cell even
when other functions' idle warm containers hold every container slot, and a deployed
function's max_concurrency is held in reserve for its first burst."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    ADMIN_KEY,
    MongoServer,
    Platform,
    deploy,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)

SLOTS = 4


@pytest.fixture(scope="module")
def small_host(mongo: MongoServer) -> Iterator[Platform]:
    """A scheduler with room for SLOTS containers, one stem cell kept at most."""
    with own_platform(mongo.url, max_containers=SLOTS, stem_cells=1, stem_cells_max=1,
                      keep_alive_s=600) as p:
        yield p


def pool_metric(platform: Platform, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{platform.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_new_function_starts_from_a_stem_cell_when_warm_containers_fill_the_host(
    small_host: Platform,
) -> None:
    client = small_host.new_tenant()
    assert deploy(client, "filler", "sleep", {"max_concurrency": SLOTS}).status_code == 201
    # A burst to its max_concurrency: its containers take every slot, the stem cell too.
    ids = [submit_event(client, "filler", {"seconds": 1.0}).headers["x-task-id"]
           for _ in range(2 * SLOTS)]
    for task_id in ids:
        assert wait_task(client, task_id, timeout=60)["status"] == "Succeeded"
    # Idle warm containers give way to the reserve within a few seconds, long before
    # their keep-alive (600 s) ends.
    deadline = time.monotonic() + 30
    while pool_metric(small_host, "fnhost_pool_containers", state="stem") != 1.0:
        assert time.monotonic() < deadline, "no stem cell was put back in reserve"
        time.sleep(0.25)
    assert (pool_metric(small_host, "fnhost_pool_reserve_evictions_total") or 0) >= 1

    assert deploy(client, "newcomer", "hello").status_code == 201
    r = invoke(client, "newcomer", {"name": "reserve"})
    assert r.status_code == 200, r.text
    assert r.headers["x-fnhost-start"] == "stem"
    assert r.json() == {"message": "hello, reserve"}
    client.close()


def test_a_deployed_functions_concurrency_is_held_in_reserve(mongo: MongoServer) -> None:
    with own_platform(mongo.url, stem_cells=1, stem_cells_max=4, keep_alive_s=600) as p:
        client = p.new_tenant()
        deadline = time.monotonic() + 30
        while pool_metric(p, "fnhost_pool_stem_cells_target") != 1.0:
            assert time.monotonic() < deadline, "the scheduler reported no stem cell target"
            time.sleep(0.25)
        assert deploy(client, "wide", "hello", {"max_concurrency": 3}).status_code == 201
        # Its first burst may bring three at once: three stem cells wait for it.
        while pool_metric(p, "fnhost_pool_containers", state="stem") != 3.0:
            assert time.monotonic() < deadline, "the reserve did not grow to max_concurrency"
            time.sleep(0.25)
        assert pool_metric(p, "fnhost_pool_stem_cells_target") == 3.0
        client.close()
