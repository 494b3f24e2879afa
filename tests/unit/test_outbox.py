"""The outbox's decisions with stand-ins for the stores and the webhook client: one inline
attempt, the hand-off, the attempts by timer within the policy, and the task record's
`destination` at each step. (tests/e2e/test_async_outbox.py runs it on a real platform.)"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from runtime import outbox as outbox_module
from runtime.destinations import Destinations, build_record
from runtime.models import WebhookDestination
from runtime.outbox import RECORD_WAIT_S, Outbox, destination_key
from runtime.settings import Settings, load_settings
from runtime.store.timers import OUTBOX
from runtime.webhook_policy import REFUSED
from runtime.webhooks import WebhookRefused
from tests.harness import NoBroker

INLINE_S = 0.2
ATTEMPTS = 3
BACKOFF_S = 0.5
HOOK = WebhookDestination(type="webhook", url="http://hooks.example/done?secret=1")
KEY = "t1/task-1/resize"

pytestmark = pytest.mark.timeout(20)


class Webhooks:
    """The webhook client: answers each POST with the next of `script` (then `default`);
    "hang" never answers; "refused" refuses the address, as the policy does."""

    def __init__(self) -> None:
        self.script: list[int | str] = []
        self.default: int | str = 200
        self.posts: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        self.posts.append(headers["X-Fnhost-Task-Id"])
        answer = self.script.pop(0) if self.script else self.default
        if answer == "hang":
            await asyncio.sleep(3600)
        if answer == "refused":
            raise WebhookRefused(REFUSED)
        return int(answer), "Whatever"


class Timers:
    """The timer store: outbox timers by id, with the lease a claim gives them."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.settled = asyncio.Event()
        self.renewals = 0

    async def hold(self, timer_id: str, due_at: datetime, *, tenant: str, function: str,
                   delivery: dict[str, Any]) -> None:
        self.docs[timer_id] = {"_id": timer_id, "due_at": due_at, "kind": OUTBOX, "tenant": tenant,
                               "function": function, "delivery": delivery, "lease": None}

    def claim(self, timer_id: str) -> dict[str, Any]:
        self.docs[timer_id]["lease"] = secrets.token_hex(4)
        self.settled.clear()
        return copy.deepcopy(self.docs[timer_id])

    async def put_back(self, doc: dict[str, Any], due_at: datetime,
                       changes: dict[str, Any] | None = None) -> bool:
        stored = self.docs.get(doc["_id"])
        self.settled.set()
        if stored is None or stored["lease"] != doc["lease"]:
            return False
        stored.update(due_at=due_at, lease=None)
        for path, value in (changes or {}).items():
            stored["delivery"][path.removeprefix("delivery.")] = value
        return True

    async def renew(self, doc: dict[str, Any], lease_s: float) -> bool:
        self.renewals += 1
        return bool(self.docs.get(doc["_id"], {}).get("lease") == doc["lease"])

    async def done(self, doc: dict[str, Any]) -> None:
        if self.docs.get(doc["_id"], {}).get("lease") == doc["lease"]:
            del self.docs[doc["_id"]]
        self.settled.set()


class Tasks:
    """The task store: records by key; `fields` as `set_fields` left them."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.reads = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        self.reads += 1
        return copy.deepcopy(self.records.get(key))

    async def set_fields(self, key: str, fields: dict[str, Any]) -> None:
        self.records.setdefault(key, {}).update(fields)


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        destination_inline_s=INLINE_S, webhook_timeout_s=0.5, webhook_retry_attempts=ATTEMPTS,
        webhook_backoff_s=BACKOFF_S, destination_circuit_s=10, outbox_per_destination=1,
    )


@pytest.fixture
def webhooks() -> Webhooks:
    return Webhooks()


@pytest.fixture
def timers() -> Timers:
    return Timers()


@pytest.fixture
def tasks() -> Tasks:
    return Tasks()


@pytest.fixture
async def outbox(settings: Settings, webhooks: Webhooks, timers: Timers, tasks: Tasks
                 ) -> AsyncIterator[Outbox]:
    destinations = Destinations(settings, cast(Any, NoBroker()), None, webhooks)
    await destinations.start()
    box = Outbox(settings, destinations, cast(Any, timers), cast(Any, tasks))
    yield box
    await box.close()
    await destinations.close()


def a_record(task_id: str = "task-1") -> dict[str, Any]:
    return build_record(
        request_id="req-1", task_id=task_id, function="resize", version="v1", condition="Success",
        invoke_count=1, payload=b"{}", content_type="application/json", status_code=200,
        function_error=None, result=b"{}", result_content_type="application/json",
    )


async def deliver(outbox: Outbox, tasks: Tasks, task_id: str = "task-1", key: str = KEY,
                  task_mode: bool = True) -> dict[str, Any]:
    """As TaskRunner._finish does: deliver, then store the final status with the result."""
    shown = await outbox.deliver("t1", HOOK, a_record(task_id), function="resize", key=key,
                                 task_mode=task_mode)
    if task_mode:
        tasks.records[key] = {"status": "Succeeded", "destination": shown}
    return shown


async def fire(outbox: Outbox, timers: Timers, timer_id: str) -> None:
    """The timer loop claims the timer and hands it over; wait until it is settled."""
    outbox.take(timers.claim(timer_id))
    await asyncio.wait_for(timers.settled.wait(), 5)


def only_timer(timers: Timers) -> str:
    (timer_id,) = timers.docs
    return timer_id


async def test_delivered_inline_leaves_no_timer(outbox: Outbox, webhooks: Webhooks, timers: Timers,
                                                tasks: Tasks) -> None:
    shown = await deliver(outbox, tasks)
    assert shown | {"duration_ms": 0} == {
        "type": "webhook", "target": HOOK.url, "status": "delivered", "attempts": 1, "error": None,
        "duration_ms": 0,
    }
    assert webhooks.posts == ["task-1"] and timers.docs == {}


async def test_a_client_error_fails_at_once_without_the_outbox(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.default = 404
    shown = await deliver(outbox, tasks)
    assert (shown["status"], shown["attempts"]) == ("failed", 1) and "404" in shown["error"]
    assert timers.docs == {}
    assert (await deliver(outbox, tasks, "task-2"))["attempts"] == 1  # no circuit opened by it


async def test_a_refused_address_is_recorded_refused_without_the_outbox(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.default = "refused"
    shown = await deliver(outbox, tasks)
    assert {k: shown[k] for k in ("status", "attempts", "error")} == {
        "status": "refused", "attempts": 1, "error": "address not allowed"}, shown
    assert timers.docs == {}
    assert (await deliver(outbox, tasks, "task-2"))["attempts"] == 1  # no circuit opened by it


async def test_an_address_refused_at_an_outbox_attempt_ends_the_delivery(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    """A name that resolves to a refused address by the next attempt: refused, not retried."""
    webhooks.script = [503, "refused"]
    assert (await deliver(outbox, tasks))["status"] == "pending"
    await fire(outbox, timers, only_timer(timers))
    destination = tasks.records[KEY]["destination"]
    assert {k: destination[k] for k in ("status", "attempts", "error")} == {
        "status": "refused", "attempts": 2, "error": "address not allowed"}, destination
    assert timers.docs == {} and len(webhooks.posts) == 2


async def test_a_hanging_webhook_is_handed_off_after_the_inline_deadline(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.default = "hang"
    started = time.monotonic()
    shown = await deliver(outbox, tasks)
    took = time.monotonic() - started
    assert INLINE_S <= took < INLINE_S + 0.3
    assert shown["status"] == "pending" and shown["attempts"] == 1, shown
    assert shown["error"] == f"no answer within {INLINE_S:g} s"
    timer = timers.docs[only_timer(timers)]
    box = timer["delivery"]
    assert shown["outbox"] == box["handoff"]
    assert (box["key"], box["task_id"], box["condition"], box["attempts"]) == (KEY, "task-1", "Success", 1)
    assert box["destination"] == {"type": "webhook", "url": HOOK.url}
    wait = (timer["due_at"] - datetime.now(UTC)).total_seconds()
    assert BACKOFF_S - 0.5 < wait <= BACKOFF_S  # the policy's wait before attempt 2


async def test_after_a_failure_the_next_records_skip_the_inline_attempt(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.default = "hang"
    await deliver(outbox, tasks)
    started = time.monotonic()
    shown = await deliver(outbox, tasks, "task-2", key="t1/task-2/resize")
    assert time.monotonic() - started < INLINE_S / 2  # no inline wait this time
    assert webhooks.posts == ["task-1"]  # task-2 was not tried inline
    assert shown["status"] == "pending" and shown["attempts"] == 0
    assert "not tried inline" in shown["error"] and "no answer" in shown["error"]
    due = [t["due_at"] for t in timers.docs.values() if t["delivery"]["task_id"] == "task-2"]
    assert due and due[0] <= datetime.now(UTC)  # its first attempt is due at once


async def test_the_outbox_delivers_and_records_it(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.script = [503]
    shown = await deliver(outbox, tasks)
    assert shown["status"] == "pending"
    await fire(outbox, timers, only_timer(timers))
    assert timers.docs == {}
    destination = tasks.records[KEY]["destination"]
    assert destination["status"] == "delivered" and destination["attempts"] == 2, destination
    assert destination["outbox"] == shown["outbox"] and destination["error"] is None
    assert webhooks.posts == ["task-1", "task-1"]


async def test_the_outbox_gives_up_after_the_policy_s_attempts(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.default = 500
    await deliver(outbox, tasks)
    timer_id = only_timer(timers)
    await fire(outbox, timers, timer_id)  # attempt 2: fails, put back for attempt 3
    destination = tasks.records[KEY]["destination"]
    assert (destination["status"], destination["attempts"]) == ("pending", 2), destination
    assert destination["error"] == "HTTP 500 Whatever"
    wait = (timers.docs[timer_id]["due_at"] - datetime.now(UTC)).total_seconds()
    assert BACKOFF_S * 2 - 0.5 < wait <= BACKOFF_S * 2  # doubled
    await fire(outbox, timers, timer_id)  # attempt 3, the last one
    destination = tasks.records[KEY]["destination"]
    assert (destination["status"], destination["attempts"]) == ("failed", ATTEMPTS), destination
    assert timers.docs == {} and len(webhooks.posts) == ATTEMPTS


async def test_without_task_mode_it_delivers_without_a_record(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.script = [500]
    await deliver(outbox, tasks, task_mode=False)
    await fire(outbox, timers, only_timer(timers))
    assert timers.docs == {} and len(webhooks.posts) == 2
    assert tasks.records == {} and tasks.reads == 0


async def test_an_attempt_waits_for_the_task_record_to_show_its_hand_off(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.script = [500]
    shown = await outbox.deliver("t1", HOOK, a_record(), function="resize", key=KEY, task_mode=True)
    tasks.records[KEY] = {"status": "Running", "destination": None}  # its final write not yet done
    timer_id = only_timer(timers)
    await fire(outbox, timers, timer_id)
    assert len(webhooks.posts) == 1  # no attempt made
    box = timers.docs[timer_id]["delivery"]
    assert box["attempts"] == 1
    assert (timers.docs[timer_id]["due_at"] - datetime.now(UTC)).total_seconds() <= RECORD_WAIT_S
    tasks.records[KEY] = {"status": "Succeeded", "destination": shown}
    await fire(outbox, timers, timer_id)
    assert tasks.records[KEY]["destination"]["status"] == "delivered"


async def test_an_older_hand_off_delivers_but_leaves_the_record_alone(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.script = [500]
    await deliver(outbox, tasks)
    newer = {"status": "delivered", "attempts": 1, "type": "webhook"}  # a run repeated after a crash
    tasks.records[KEY]["destination"] = newer
    await fire(outbox, timers, only_timer(timers))
    assert len(webhooks.posts) == 2 and timers.docs == {}
    assert tasks.records[KEY]["destination"] == newer


async def test_a_destination_with_its_attempts_in_flight_makes_the_others_wait(
    outbox: Outbox, webhooks: Webhooks, timers: Timers, tasks: Tasks
) -> None:
    webhooks.script = [500, "hang"]  # outbox_per_destination is 1
    await deliver(outbox, tasks, "task-1", key="t1/task-1/resize")
    await deliver(outbox, tasks, "task-2", key="t1/task-2/resize")  # not tried inline
    first, second = sorted(timers.docs, key=lambda t: timers.docs[t]["delivery"]["task_id"])
    outbox.take(timers.claim(first))  # hangs until its timeout (0.5 s)
    await until(lambda: len(webhooks.posts) == 2)
    assert webhooks.posts == ["task-1", "task-1"]
    outbox.take(timers.claim(second))
    await asyncio.sleep(0.3)
    assert len(webhooks.posts) == 2  # not attempted: it waits for the slot, its attempts untouched
    assert timers.docs[second]["delivery"]["attempts"] == 0 and timers.docs[second]["lease"]
    await until(lambda: len(webhooks.posts) == 3)  # the first timed out: its turn
    assert webhooks.posts[2] == "task-2"
    await until(lambda: timers.docs.get(second, {}).get("lease") is None and second not in pending(outbox))
    assert second not in timers.docs  # delivered (200) and settled


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


def pending(outbox: Outbox) -> set[str]:
    return set(outbox._running)


def hold(timers: Timers, tenant: str, url: str, n: int) -> str:
    """An outbox timer of `tenant` for a record to `url`, due now, not tried yet: its id."""
    timer_id = f"{tenant}/task-{n}#outbox.{n}"
    timers.docs[timer_id] = {
        "_id": timer_id, "due_at": datetime.now(UTC), "kind": OUTBOX, "tenant": tenant,
        "function": "f", "lease": None, "delivery": {
            "handoff": str(n), "key": f"{tenant}/task-{n}/f", "task_mode": False,
            "destination": {"type": "webhook", "url": url}, "body": b"{}",
            "task_id": f"{tenant}-{n}", "condition": "Success", "attempts": 1, "error": "HTTP 500",
            "started_at": datetime.now(UTC),
        },
    }
    return timer_id


class HostWebhooks(Webhooks):
    """Hangs every POST to hooks.example (whatever its path), answers 200 elsewhere."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        self.posts.append(headers["X-Fnhost-Task-Id"])
        if "//hooks.example" in url:
            await asyncio.sleep(3600)
        return 200, "OK"


@pytest.fixture
async def shared(timers: Timers, tasks: Tasks) -> AsyncIterator[tuple[Outbox, HostWebhooks]]:
    """An outbox of 4 slots, 2 per tenant, 8 per destination; hooks.example hangs for 5 s."""
    settings = load_settings(webhook_timeout_s=5, outbox_concurrency=4, outbox_tenant_slots=2,
                             outbox_per_destination=8)
    webhooks = HostWebhooks()
    destinations = Destinations(settings, cast(Any, NoBroker()), None, webhooks)
    await destinations.start()
    box = Outbox(settings, destinations, cast(Any, timers), cast(Any, tasks))
    yield box, webhooks
    await box.close()
    await destinations.close()


async def test_a_tenant_s_hanging_urls_take_its_slots_only(
    shared: tuple[Outbox, HostWebhooks], timers: Timers
) -> None:
    outbox, webhooks = shared
    hanging = [hold(timers, "a", f"http://hooks.example/{n}?a={n}", n) for n in range(6)]
    for timer_id in hanging:
        outbox.take(timers.claim(timer_id))
    await until(lambda: len(webhooks.posts) == 2)
    b = hold(timers, "b", "http://other.example/done", 99)
    outbox.take(timers.claim(b))
    await until(lambda: b not in timers.docs)  # delivered at once
    assert webhooks.posts[2:] == ["b-99"]
    assert len(webhooks.posts) == 3  # A: still its 2 slots
    # A's records past its slots and its backlog were put back for later, not tried.
    put_back = [t for t in hanging if timers.docs[t]["lease"] is None]
    assert len(put_back) == 2, put_back
    for timer_id in put_back:
        assert timers.docs[timer_id]["delivery"]["attempts"] == 1
        assert timers.docs[timer_id]["due_at"] > datetime.now(UTC) + timedelta(seconds=2)
    assert outbox.counters["held_back"] == 2


async def test_close_puts_back_the_records_waiting_for_a_slot_due_now(
    shared: tuple[Outbox, HostWebhooks], timers: Timers
) -> None:
    outbox, webhooks = shared
    hanging = [hold(timers, "a", f"http://hooks.example/{n}", n) for n in range(4)]
    for timer_id in hanging:
        outbox.take(timers.claim(timer_id))
    await until(lambda: len(webhooks.posts) == 2)
    await outbox.close()
    now = datetime.now(UTC)
    for timer_id in hanging:
        doc = timers.docs[timer_id]
        assert doc["lease"] is None and doc["due_at"] <= now, doc
        assert doc["delivery"]["attempts"] == 1  # neither the cut attempts nor the waits counted


async def test_a_record_waiting_for_a_slot_keeps_its_lease(
    shared: tuple[Outbox, HostWebhooks], timers: Timers, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox, webhooks = shared
    monkeypatch.setattr(outbox_module, "RENEWALS_PER_LEASE", 100)  # every 0.15 s
    hanging = [hold(timers, "a", f"http://hooks.example/{n}", n) for n in range(3)]
    for timer_id in hanging:
        outbox.take(timers.claim(timer_id))
    await until(lambda: timers.renewals >= 2)
    waiting = hanging[2]
    assert timers.docs[waiting]["lease"] and len(webhooks.posts) == 2
    timers.docs[waiting]["lease"] = "taken by another claim"
    await until(lambda: waiting not in pending(outbox))
    assert len(webhooks.posts) == 2  # that claim makes its attempt, not this one
    assert timers.docs[waiting]["lease"] == "taken by another claim"


@pytest.mark.parametrize(("one", "other"), [
    ("http://h.example/a?x=1", "http://H.example:80/b/c?y=2#z"),
    ("https://h.example/", "https://user@h.example:443/other"),
    ("http://[::1]:8080/a", "http://[0:0:0:0:0:0:0:1]:8080/b"),
    ("http://h.example./a", "http://h.example/b"),
])
def test_a_webhook_host_is_one_destination_whatever_its_path_and_query(one: str, other: str) -> None:
    assert destination_key("webhook", one) == destination_key("webhook", other)


@pytest.mark.parametrize(("one", "other"), [
    ("http://h.example/a", "https://h.example/a"),
    ("http://h.example/a", "http://h.example:8080/a"),
    ("http://h.example/a", "http://g.example/a"),
])
def test_another_scheme_port_or_host_is_another_destination(one: str, other: str) -> None:
    assert destination_key("webhook", one) != destination_key("webhook", other)


def test_a_queue_or_function_destination_is_its_target() -> None:
    assert destination_key("queue", "fnhost.d.t1.q") == "queue fnhost.d.t1.q"
    assert destination_key("function", "resize") != destination_key("queue", "resize")
