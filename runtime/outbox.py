"""The outbox: destination records that could not be delivered at once, delivered later
by durable timers, so that a slow or failing destination never holds a queue slot.

A finished task's record is tried once inline, for at most
FNHOST_DESTINATION_INLINE_S (`Outbox.deliver`, before the task's final status is
stored and its queue message acknowledged). When that attempt fails in a way a
later one may not (no answer, a 5xx, a broker error) or runs out of time, or when
the destination's circuit (runtime/circuit.py) says it just failed, the record
is stored as an OUTBOX timer (runtime/store/timers.py) and the task goes on; its
record's `destination` says `pending`. The timer loop hands each due OUTBOX timer
to `Outbox.take`, which makes the next attempt within the destination's policy,
the same as inline retries had: FNHOST_WEBHOOK_RETRY_ATTEMPTS attempts in all,
FNHOST_WEBHOOK_BACKOFF_S doubled between them, each attempt bounded by its own
timeout. After each attempt the task's `destination` shows the attempts so far
and the last error, then `delivered`, or `failed` once the attempts are given up.

At least once: the timer is stored before the task's final status and deleted
only after its outcome is recorded, so a scheduler dying in between repeats an
attempt, never loses one. Each hand-off has an id (`outbox` in the task's
`destination`): only the hand-off the task record shows updates it; an older one
(a run repeated after a crash, a redriven task) still delivers its record.

Shared fairly (runtime/flow/slots.py): at most FNHOST_OUTBOX_CONCURRENCY attempts at
once, of them FNHOST_OUTBOX_TENANT_SLOTS for one tenant and FNHOST_OUTBOX_PER_DESTINATION
to one destination of a tenant, a webhook's host counting as one whatever its paths
and queries. A due record past a cap waits for a slot, its timer still leased (and
the lease renewed), without using a slot or an attempt; when slots are scarce the
tenants with waiting records take turns. A record with no room to wait either (its
tenant's backlog is full) has its timer put back for about one attempt's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from bson import Binary
from pydantic import TypeAdapter

from runtime.circuit import DestinationCircuits
from runtime.destinations import Delivery, DeliveryStatus, Destinations, Target, Tried
from runtime.flow.slots import FairSlots
from runtime.models import Destination
from runtime.settings import Settings
from runtime.store.mongo import Doc
from runtime.store.tasks import TaskStore
from runtime.store.timers import TimerStore
from runtime.tasks import status as st
from runtime.webhook_policy import shown_host

log = logging.getLogger(__name__)

DESTINATION: TypeAdapter[Target] = TypeAdapter(Destination)
# A claimed outbox timer stays leased this much longer than its attempt can take.
LEASE_MARGIN_S = 10.0
# An attempt that finds its task's final status not stored yet (it is being written
# right after the hand-off) waits this long, for at most RECORD_WAIT_MAX_S after the
# hand-off; past that the record is delivered without updating the task.
RECORD_WAIT_S = 0.5
RECORD_WAIT_MAX_S = 30.0
# How long `close` waits for the attempts in hand to be put back.
CLOSE_S = 5.0
# FNHOST_OUTBOX_TENANT_SLOTS 0: one tenant's slots are this share of all (at least 1).
TENANT_SHARE = 4
# A record waiting for a slot renews its timer's lease this many times per lease.
RENEWALS_PER_LEASE = 3
DEFAULT_PORTS = {"http": 80, "https": 443}

Recorded = Literal["ours", "wait", "none"]


@dataclass(eq=False)
class _Ticket:
    """A due record's place in the slots: `granted` says whether it starts (True) or
    has no room to wait (False)."""

    timer_id: str
    granted: asyncio.Future[bool] = field(repr=False)


class Outbox:
    """One per scheduler: `deliver` as each task finishes, `take` as its timers come due."""

    def __init__(
        self, settings: Settings, destinations: Destinations, timers: TimerStore, tasks: TaskStore
    ) -> None:
        self._settings = settings
        self._destinations = destinations
        self._timers = timers
        self._tasks = tasks
        self._circuits = DestinationCircuits(
            settings.destination_circuit_s, slow_s=settings.destination_slow_s
        )
        self._running: dict[str, tuple[Doc, asyncio.Task[None]]] = {}  # timer id -> its attempt
        self._slots: FairSlots[_Ticket] = FairSlots(
            total=settings.outbox_concurrency,
            per_tenant=settings.outbox_tenant_slots or max(1, settings.outbox_concurrency // TENANT_SHARE),
            per_destination=settings.outbox_per_destination,
            max_waiting=settings.outbox_concurrency,
        )
        self._closing = False
        # handed_off, delivered, gave_up; held_back: put back for want of a slot
        self.counters: Counter[str] = Counter()

    @property
    def lease_s(self) -> float:
        """How long the timer loop must lease an outbox timer: its attempt and a margin."""
        return self._destinations.attempt_timeout_s + LEASE_MARGIN_S

    # -- inline, as a task finishes ----------------------------------------------

    async def deliver(
        self, tenant: str, destination: Target, record: dict[str, Any], *,
        function: str, key: str, task_mode: bool, chain_depth: int = 0,
    ) -> dict[str, Any]:
        """Try `record` once inline; if that fails for now, hand it to the outbox. Returns
        what the task record's `destination` shows: delivered, failed (for good) or pending."""
        started, started_at = time.monotonic(), datetime.now(UTC)
        body = orjson.dumps(record)
        context = record["requestContext"]
        task_id, condition = str(context["taskId"]), str(context["condition"])
        target = self._destinations.target(tenant, destination)
        circuit = f"{tenant} {destination_key(destination.type, target)}"
        error = self._circuits.skip_reason(circuit, started)
        attempts = 0
        if error is None:
            attempts = 1
            self._circuits.started(circuit, started)
            try:
                tried = await self._destinations.try_once(
                    tenant, destination, body, task_id, condition,
                    deadline_s=self._settings.destination_inline_s, chain_depth=chain_depth,
                )
            finally:
                self._circuits.ended(circuit, started)
            if tried.error is None or not tried.retry:
                if tried.error is None:
                    self._circuits.succeeded(circuit, time.monotonic())
                else:
                    log.warning("destination %s of tenant %s failed for good: %s",
                                _shown(destination.type, target), tenant, tried.error)
                return _view(destination.type, target, tried, 1, _ms_since(started), done=True)
            self._circuits.failed(circuit, time.monotonic(), tried.error)
            error = tried.error
        handoff = secrets.token_hex(8)
        due = datetime.now(UTC) + timedelta(seconds=self._destinations.backoff_s(2) if attempts else 0)
        await self._timers.hold(
            f"{key}#outbox.{handoff}", due, tenant=tenant, function=function,
            delivery={
                "handoff": handoff, "key": key, "task_mode": task_mode,
                "destination": destination.model_dump(mode="json"),
                "body": Binary(body), "task_id": task_id, "condition": condition,
                "attempts": attempts, "error": error, "started_at": started_at,
                "chain_depth": chain_depth,
            },
        )
        self.counters["handed_off"] += 1
        log.info("outbox: the record of task %s (tenant %s) for %s is pending after %d attempt(s): %s",
                 task_id, tenant, _shown(destination.type, target), attempts, error)
        view = _view(destination.type, target, Tried(error), attempts, _ms_since(started), done=False)
        return {**view, "outbox": handoff}

    # -- later, by timer -----------------------------------------------------------

    def take(self, doc: Doc) -> None:
        """A due outbox timer the timer loop claimed: it waits for a slot and its attempt
        runs on its own (the loop goes on with the other timers) and settles the timer."""
        timer_id = str(doc["_id"])
        if self._closing or timer_id in self._running:
            return  # stays leased: claimed again once its lease runs out
        task = asyncio.create_task(self._settle(doc), name=f"outbox {timer_id}")
        self._running[timer_id] = (doc, task)
        task.add_done_callback(lambda _: self._running.pop(timer_id, None))

    async def _settle(self, doc: Doc) -> None:
        ticket = _Ticket(str(doc["_id"]), asyncio.get_running_loop().create_future())
        try:
            tenant = str(doc["tenant"])
            destination = DESTINATION.validate_python(doc["delivery"]["destination"])
            target = self._destinations.target(tenant, destination)
            if await self._slot(doc, ticket, tenant, destination_key(destination.type, target)):
                await self._attempt(doc, destination, target)
        except Exception:
            log.exception("outbox attempt failed; it is made again once its timer's lease runs out")
        finally:
            self._slots.done(ticket)
            self._grant()

    async def _slot(self, doc: Doc, ticket: _Ticket, tenant: str, destination: str) -> bool:
        """Wait for a slot for `doc`'s attempt, keeping its timer leased; False when it got
        none: its timer is put back for later (not an attempt), or its lease was lost."""
        pushed = self._slots.offer(ticket, tenant, destination)
        if pushed is not None and not pushed.granted.done():
            pushed.granted.set_result(False)  # this one, or one that made room for it
        self._grant()
        waited = False
        while not ticket.granted.done():
            waited = True
            done, _ = await asyncio.wait({ticket.granted}, timeout=self.lease_s / RENEWALS_PER_LEASE)
            if not done and not await self._timers.renew(doc, self.lease_s):
                return False  # claimed again elsewhere: that claim makes the attempt
        if not ticket.granted.result():
            # Not an attempt: it waits for those ahead of it, about as long as one takes.
            wait = self._destinations.attempt_timeout_s * random.uniform(0.5, 1.0)
            await self._timers.put_back(doc, datetime.now(UTC) + timedelta(seconds=wait))
            self.counters["held_back"] += 1
            return False
        # Its lease must outlast the attempt, however long it waited for it.
        return not waited or await self._timers.renew(doc, self.lease_s)

    def _grant(self) -> None:
        for ticket in self._slots.grant():
            if not ticket.granted.done():
                ticket.granted.set_result(True)

    async def _attempt(self, doc: Doc, destination: Target, target: str) -> None:
        box = doc["delivery"]
        tenant = str(doc["tenant"])
        circuit = f"{tenant} {destination_key(destination.type, target)}"
        recorded = await self._recorded(box)
        if recorded == "wait":
            await self._timers.put_back(doc, datetime.now(UTC) + timedelta(seconds=RECORD_WAIT_S))
            return
        tried = await self._destinations.try_once(
            tenant, destination, bytes(box["body"]), str(box["task_id"]), str(box["condition"]),
            chain_depth=int(box.get("chain_depth") or 0),
        )
        attempts = int(box["attempts"]) + 1
        done = tried.error is None or not tried.retry or attempts >= self._destinations.max_attempts
        if tried.error is None:
            self._circuits.succeeded(circuit, time.monotonic())
        elif tried.retry:
            self._circuits.failed(circuit, time.monotonic(), tried.error)
        took_ms = (datetime.now(UTC) - box["started_at"]).total_seconds() * 1000
        view = _view(destination.type, target, tried, attempts, took_ms, done=done)
        view["outbox"] = box["handoff"]
        if not done:
            due = datetime.now(UTC) + timedelta(seconds=self._destinations.backoff_s(attempts + 1))
            kept = await self._timers.put_back(
                doc, due, {"delivery.attempts": attempts, "delivery.error": tried.error}
            )
            if kept and recorded == "ours":
                await self._tasks.set_fields(str(box["key"]), {"destination": view})
            return
        # Recorded before the timer goes: a crash in between repeats the delivery, and
        # the task record never keeps `pending` for a record already delivered.
        if recorded == "ours":
            await self._tasks.set_fields(str(box["key"]), {"destination": view})
        await self._timers.done(doc)
        if tried.error is None:
            self.counters["delivered"] += 1
            log.info("outbox: the record of task %s (tenant %s) was delivered to %s at attempt %d",
                     box["task_id"], tenant, _shown(destination.type, target), attempts)
        else:
            self.counters["gave_up"] += 1
            log.warning("outbox: gave up the record of task %s (tenant %s) for %s after %d attempt(s): %s",
                        box["task_id"], tenant, _shown(destination.type, target), attempts, tried.error)

    async def _recorded(self, box: dict[str, Any]) -> Recorded:
        """Whether the task record shows this hand-off (then each attempt updates it), is
        still being written (wait), or has none or another (deliver, leave it alone)."""
        if not box["task_mode"]:
            return "none"
        task = await self._tasks.get(str(box["key"]))
        if task is None:
            return "none"  # deleted: the record is still owed to its destination
        shown = task.get("destination")
        if isinstance(shown, dict) and shown.get("outbox") == box["handoff"]:
            return "ours"
        waited = (datetime.now(UTC) - box["started_at"]).total_seconds()
        if (shown is None or task.get("status") not in st.FINAL) and waited < RECORD_WAIT_MAX_S:
            return "wait"
        return "none"

    async def close(self) -> None:
        """Stop the attempts in hand and put their timers back, due now: any scheduler
        (this one once restarted) takes them again without waiting for their lease."""
        self._closing = True
        running = list(self._running.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)

        async def put_back() -> None:
            now = datetime.now(UTC)
            for doc, _ in running:
                with contextlib.suppress(Exception):
                    await self._timers.put_back(doc, now)

        try:
            await asyncio.wait_for(put_back(), CLOSE_S)
        except TimeoutError:
            log.warning("outbox: attempts in hand not all put back; their leases run out instead")


def destination_key(kind: str, target: str) -> str:
    """What one destination of a tenant is, for its caps and its circuit: a webhook's
    origin (scheme, host and port; all its paths and queries are one server), else its
    queue or function."""
    if kind != "webhook":
        return f"{kind} {target}"
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)  # one address, however it is spelt
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"webhook {scheme}://{host}:{port or DEFAULT_PORTS.get(scheme, 0)}"


def _shown(kind: str, target: str) -> str:
    """A destination for the log: a webhook by its host only (its URL may hold a secret)."""
    return f"{kind} {shown_host(target) if kind == 'webhook' else target}"


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _view(kind: str, target: str, last: Tried, attempts: int, took_ms: float, *, done: bool
          ) -> dict[str, Any]:
    """The task record's `destination` (Delivery's shape; `outbox` is added once handed off)."""
    status: DeliveryStatus = last.status if done else "pending"
    return Delivery(type=kind, target=target, status=status, attempts=attempts, error=last.error,
                    duration_ms=took_ms).to_dict()
