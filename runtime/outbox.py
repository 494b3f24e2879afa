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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from bson import Binary
from pydantic import TypeAdapter

from runtime.circuit import DestinationCircuits
from runtime.destinations import Delivery, Destinations, Target
from runtime.models import Destination
from runtime.settings import Settings
from runtime.store.mongo import Doc
from runtime.store.tasks import TaskStore
from runtime.store.timers import TimerStore
from runtime.tasks import status as st

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

Recorded = Literal["ours", "wait", "none"]


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
        self._attempting: Counter[str] = Counter()  # destination -> attempts in flight
        self._closing = False
        self.counters: Counter[str] = Counter()  # handed_off, delivered, gave_up

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
        circuit = _circuit(tenant, destination.type, target)
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
                return _view(destination.type, target, tried.error, 1, _ms_since(started), done=True)
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
        view = _view(destination.type, target, error, attempts, _ms_since(started), done=False)
        return {**view, "outbox": handoff}

    # -- later, by timer -----------------------------------------------------------

    def take(self, doc: Doc) -> None:
        """A due outbox timer the timer loop claimed: its attempt runs on its own (the loop
        goes on with the other timers) and settles the timer itself."""
        timer_id = str(doc["_id"])
        if self._closing or timer_id in self._running:
            return  # stays leased: claimed again once its lease runs out
        task = asyncio.create_task(self._settle(doc), name=f"outbox {timer_id}")
        self._running[timer_id] = (doc, task)
        task.add_done_callback(lambda _: self._running.pop(timer_id, None))

    async def _settle(self, doc: Doc) -> None:
        try:
            await self._attempt(doc)
        except Exception:
            log.exception("outbox attempt failed; it is made again once its timer's lease runs out")

    async def _attempt(self, doc: Doc) -> None:
        box = doc["delivery"]
        tenant = str(doc["tenant"])
        destination = DESTINATION.validate_python(box["destination"])
        target = self._destinations.target(tenant, destination)
        circuit = _circuit(tenant, destination.type, target)
        s = self._settings
        if (self._attempting.total() >= s.outbox_concurrency
                or self._attempting[circuit] >= s.outbox_per_destination):
            # Not an attempt: it waits for one of those in flight, about as long as one takes.
            wait = self._destinations.attempt_timeout_s * random.uniform(0.5, 1.0)
            await self._timers.put_back(doc, datetime.now(UTC) + timedelta(seconds=wait))
            return
        self._attempting[circuit] += 1
        try:
            recorded = await self._recorded(box)
            if recorded == "wait":
                await self._timers.put_back(doc, datetime.now(UTC) + timedelta(seconds=RECORD_WAIT_S))
                return
            tried = await self._destinations.try_once(
                tenant, destination, bytes(box["body"]), str(box["task_id"]), str(box["condition"]),
                chain_depth=int(box.get("chain_depth") or 0),
            )
        finally:
            self._attempting[circuit] -= 1
            if not self._attempting[circuit]:
                del self._attempting[circuit]
        attempts = int(box["attempts"]) + 1
        done = tried.error is None or not tried.retry or attempts >= self._destinations.max_attempts
        if tried.error is None:
            self._circuits.succeeded(circuit, time.monotonic())
        elif tried.retry:
            self._circuits.failed(circuit, time.monotonic(), tried.error)
        took_ms = (datetime.now(UTC) - box["started_at"]).total_seconds() * 1000
        view = _view(destination.type, target, tried.error, attempts, took_ms, done=done)
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


def _circuit(tenant: str, kind: str, target: str) -> str:
    return f"{tenant} {kind} {target}"


def _shown(kind: str, target: str) -> str:
    """A destination for the log: a webhook by its host only (its URL may hold a secret)."""
    return f"{kind} {urlsplit(target).netloc if kind == 'webhook' else target}"


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _view(kind: str, target: str, error: str | None, attempts: int, took_ms: float, *, done: bool
          ) -> dict[str, Any]:
    """The task record's `destination` (Delivery's shape; `outbox` is added once handed off)."""
    status: Literal["delivered", "failed", "pending"] = (
        "pending" if not done else "delivered" if error is None else "failed"
    )
    return Delivery(type=kind, target=target, status=status, attempts=attempts, error=error,
                    duration_ms=took_ms).to_dict()
