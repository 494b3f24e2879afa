"""One tenant's hanging webhooks do not delay another tenant's retries.

Tenant A's records go to 50 URLs of one host that never answers (paths and queries
all differ), each attempt held for the whole webhook timeout. Tenant B's webhook
answers 500 to its first B_FAILURES POSTs, then 200: the outbox makes B's attempts
on B's own backoff schedule and delivers its record while A's still hang, because A
takes at most its tenant's slots (and its host counts as one destination however it
is spelt in paths and queries). Before, A's URLs took every slot of the outbox and
B's due attempts were put back for about one attempt timeout each.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.hanging import HangingWebhook
from tests.harness import (
    MongoServer,
    Platform,
    Webhook,
    deploy,
    eventually,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)

A_URLS = 50
WEBHOOK_TIMEOUT_S = 60.0  # an attempt to A's host holds its slot this long
ATTEMPTS = 5
BACKOFF_S = 1.0  # waits of 1, 2, 4, 8 s between attempts
B_FAILURES = 3  # B's record is delivered at its 4th attempt
TENANT_SLOTS = 8  # FNHOST_OUTBOX_TENANT_SLOTS' default: a quarter of 32
INLINE_PROBES = 4  # runtime/circuit.PROBES: inline attempts to a destination not answering
# How late an attempt may come after its schedule: timer polling (0.2 s), the claim,
# the task record's read, a loaded machine.
LATE_S = 1.5
# After a restart, every record is delivered within one attempt's length (5 s there)
# and a margin, well before the claims' lease (30 s) could run out.
RESTART_DELIVERY_S = 15.0

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fair_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(
        mongo.url, destination_inline_s=0.5, webhook_timeout_s=WEBHOOK_TIMEOUT_S,
        webhook_retry_attempts=ATTEMPTS, webhook_backoff_s=BACKOFF_S,
        # Receivers here are on loopback: allowed where webhook addresses are checked.
        webhook_allowed_networks="127.0.0.0/8",
    ) as platform:
        yield platform


@pytest.fixture
def tenants(fair_platform: Platform) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    a, b = fair_platform.new_tenant(), fair_platform.new_tenant()
    yield a, b
    a.close()
    b.close()


def deploy_noop(client: httpx.Client, name: str, url: str) -> None:
    r = deploy(client, name, "noop", {"async": {"on_success": {"type": "webhook", "url": url}}})
    assert r.status_code == 201, r.text
    assert invoke(client, name).status_code == 200  # warm: its container is up


def a_record_to(client: httpx.Client, url: str, name: str = "a") -> str:
    """Point function `name` at `url`, then run a task whose record goes there: its id."""
    r = client.patch(f"/v1/functions/{name}",
                     json={"async": {"on_success": {"type": "webhook", "url": url}}})
    assert r.status_code == 200, r.text
    for _ in range(20):  # until the scheduler runs it with the new config
        r = submit_event(client, name, {})
        assert r.status_code == 202, r.text
        task = wait_task(client, r.headers["x-task-id"], timeout=30, function=name)
        assert task["status"] == "Succeeded", task
        if task["destination"]["target"] == url:
            return str(task["task_id"])
        time.sleep(0.1)
    raise AssertionError(f"no task of {name} ran with its webhook at {url}")


def test_a_tenant_s_hanging_webhooks_do_not_delay_another_tenant_s_retries(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = tenants
    with HangingWebhook() as hanging, Webhook(fail_first=B_FAILURES) as flaky:
        urls = [f"{hanging.url}/{n}?a={n}" for n in range(A_URLS)]
        deploy_noop(a, "a", urls[0])
        a_ids = [a_record_to(a, url) for url in urls]
        eventually(lambda: hanging.held >= TENANT_SLOTS, 30, f"A's records hold {TENANT_SLOTS} attempts")
        deploy_noop(b, "b", flaky.url)

        r = submit_event(b, "b", {})
        assert r.status_code == 202, r.text
        b_id = r.headers["x-task-id"]
        task = wait_task(b, b_id, timeout=120, function="b",
                         until=lambda t: (t["destination"] or {}).get("status") != "pending")
        destination = task["destination"]
        assert (destination["status"], destination["attempts"]) == ("delivered", B_FAILURES + 1), destination

        posts = flaky.wait(B_FAILURES + 1, timeout=5, task_id=b_id)
        gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(posts)]
        schedule = [BACKOFF_S * 2**k for k in range(B_FAILURES)]  # 1, 2, 4 s
        print(f"\nB's attempts {[round(g, 2) for g in gaps]} s apart (schedule {schedule}); "
              f"A's attempts held at once: at most {hanging.most_held}, now {hanging.held}")
        for gap, wait in zip(gaps, schedule, strict=True):
            assert wait - 0.1 <= gap <= wait + LATE_S, (gaps, schedule)

        # Meanwhile A's records hung, all of them still pending, on A's slots only.
        assert hanging.held >= TENANT_SLOTS and not hanging.task_ids(answered=True)
        assert len({p["request"] for p in hanging.posts}) >= TENANT_SLOTS  # distinct paths tried
        assert hanging.most_held <= TENANT_SLOTS + INLINE_PROBES, hanging.most_held
        for task_id in a_ids[:5] + a_ids[-5:]:
            r = a.get(f"/v1/tasks/{task_id}", params={"function": "a"})
            assert r.json()["destination"]["status"] == "pending", r.json()["destination"]


@pytest.fixture(scope="module")
def restart_platform(mongo: MongoServer) -> Iterator[Platform]:
    """Shorter attempts (5 s), and attempts enough that none is given up in the test."""
    with own_platform(
        mongo.url, destination_inline_s=0.5, webhook_timeout_s=5, webhook_retry_attempts=10,
        webhook_backoff_s=BACKOFF_S, webhook_allowed_networks="127.0.0.0/8",
    ) as platform:
        yield platform


def test_records_waiting_for_their_tenant_s_slots_are_delivered_across_a_restart(
    restart_platform: Platform,
) -> None:
    client = restart_platform.new_tenant()
    with client, HangingWebhook() as hanging:
        urls = [f"{hanging.url}/{n}?c={n}" for n in range(3 * TENANT_SLOTS)]
        deploy_noop(client, "c", urls[0])
        ids = [a_record_to(client, url, "c") for url in urls]
        # Its slots held, as many records waiting for one, the rest put back for later.
        eventually(lambda: hanging.held >= TENANT_SLOTS, 30, f"{TENANT_SLOTS} attempts held")

        restart_platform.stop_role("scheduler")
        hanging.answer()
        restart_platform.start_role("scheduler")
        restart_platform.wait_ready(60)
        restarted = time.monotonic()

        for task_id in ids:
            task = wait_task(client, task_id, timeout=60, function="c",
                             until=lambda t: t["destination"]["status"] != "pending")
            destination = task["destination"]
            assert destination["status"] == "delivered", destination
            # Each attempt is a POST; a wait for a slot is none.
            posts = hanging.task_ids().count(task_id)
            assert 1 <= destination["attempts"] <= posts, (destination, posts)
        took = time.monotonic() - restarted
        print(f"\nC's attempts held at once: at most {hanging.most_held}; "
              f"all {len(ids)} records delivered {took:.1f} s after the restart")
        # Those waiting for a slot were put back due at once, those with no room to wait
        # due within an attempt's length: none waited out its lease (30 s).
        assert took < RESTART_DELIVERY_S, took
        assert hanging.most_held <= TENANT_SLOTS + INLINE_PROBES, hanging.most_held
