"""The gateway's view of each tenant's usage against its quotas.

Checks on function uploads and config changes read the store when they run (those
requests are rare). The async submit path must not: there a tenant's queued tasks
and task-record bytes come from a view in memory, read when the tenant first submits
here and then every FNHOST_QUOTA_REFRESH_S while it keeps submitting (every tenth
time while it uses less than half of both), with what this gateway admitted since
the reading added on top. So a submission costs no round trip, and the view is
behind by what other gateways admitted since their last reading: over all gateways,
a tenant near a quota can pass it by at most what they admit in one refresh
interval. The admin's quota changes apply at once on the gateway that took them,
within ten refresh intervals on the others.

Queued tasks are those not started yet: the ready messages of the tenant's queue
(a passive declare) and of its functions' dedicated queues (read by back-pressure),
plus its timers (delayed tasks, retries waiting for their backoff, parked tasks).
Messages a scheduler holds (prefetched, running) are not counted: that is bounded
by the schedulers' prefetch. A task moving between a queue and a timer (a retry, a
paused function's task parked and put back) can be missed by one reading, as the
two are not read at one instant, and a task a scheduler holds is in neither: the view
takes the highest of the last few readings, and keeps a task accepted here on top
until that many readings could have held it (high for a few intervals, not low).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from runtime import constants as c
from runtime import quotas as q
from runtime.broker.topology import DepthReader
from runtime.flow.backpressure import Backpressure
from runtime.models import FunctionConfig
from runtime.settings import Settings
from runtime.store.functions import FunctionRecord
from runtime.store.tenants import TenantStore
from runtime.store.usage import RecordBytes, UsageStore

log = logging.getLogger(__name__)
# A tenant that has not submitted here for this long is no longer read.
IDLE_S = 300.0
# A tenant using less than this share of its queued-task and record-byte quotas is
# read only every FAR_ROUNDS refreshes: its usage cannot reach them between readings
# at any rate the platform takes, and the store is spared a read per tenant a second.
FAR_SHARE = 0.5
FAR_ROUNDS = 10
DECLARE_TIMEOUT_S = 2.0
READINGS = 3


@dataclass
class _View:
    quotas: q.Quotas
    queued: int = 0  # the highest of the last READINGS readings
    readings: deque[int] = field(default_factory=lambda: deque(maxlen=READINGS))
    record_bytes: int = 0
    # Admitted here and not answered yet: a reading may or may not hold them.
    inflight: int = 0
    inflight_bytes: int = 0
    # Accepted here since the last reading began: not in it, unless they were durable
    # before it counted (then counted twice for a while: high, never low).
    accepted: int = 0
    accepted_bytes: int = 0
    # Tasks accepted before each of the last READINGS readings began: kept on top until
    # that many readings (whose highest is `queued`) could hold them.
    covered: deque[int] = field(default_factory=lambda: deque(maxlen=READINGS))
    used_at: float = field(default_factory=time.monotonic)
    skip: int = 0  # refresh rounds to skip before the next reading

    @property
    def tasks(self) -> int:
        return self.queued + self.inflight + self.accepted + sum(self.covered)

    @property
    def bytes(self) -> int:
        return self.record_bytes + self.inflight_bytes + self.accepted_bytes

    def far(self) -> bool:
        """Whether it is well below the quotas the submit path checks."""
        return (self.tasks < FAR_SHARE * self.quotas[q.QUEUED_TASKS]
                and self.bytes < FAR_SHARE * self.quotas[q.TASK_RECORD_BYTES])


class QuotaKeeper:
    def __init__(
        self, settings: Settings, tenants: TenantStore, usage: UsageStore,
        connection: AbstractRobustConnection, backpressure: Backpressure,
    ) -> None:
        self._settings = settings
        self._defaults = q.defaults(settings)
        self._tenants = tenants
        self.usage = usage
        self.record_bytes = RecordBytes(usage, settings.quota_refresh_s)
        self._backpressure = backpressure
        self._depths = DepthReader(connection, DECLARE_TIMEOUT_S)
        self._views: dict[str, _View] = {}
        self._loading: dict[str, asyncio.Task[_View]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.record_bytes.start()
        self._task = asyncio.create_task(self._loop(), name="quota-views")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.record_bytes.close()
        await self._depths.close()

    async def quotas(self, tenant: str) -> q.Quotas:
        """The tenant's quotas now (the defaults with the admin's overrides)."""
        return q.effective(self._defaults, await self._tenants.quotas(tenant))

    def overridden(self, tenant: str, quotas: q.Quotas) -> None:
        """The admin changed the tenant's quotas through this gateway: used here at once
        (other gateways read them within FNHOST_QUOTA_REFRESH_S)."""
        view = self._views.get(tenant)
        if view is not None:
            view.quotas = dict(quotas)

    # -- the async submit path ---------------------------------------------------

    async def admit_task(self, record: FunctionRecord, payload_bytes: int) -> None:
        """Count one task against the queued-task (and, in task mode, record-byte)
        quota, or refuse it (429 QuotaExceeded). Then `accepted` once it is durable, or
        `release` when it is not accepted after all."""
        view = self._views.get(record.tenant)
        if view is None:
            view = await self._load(record.tenant)
        view.used_at = time.monotonic()
        quotas = view.quotas
        q.check_count(q.QUEUED_TASKS, view.tasks, 1, quotas[q.QUEUED_TASKS])
        if record.config.async_.task_mode:
            q.check_count(q.TASK_RECORD_BYTES, view.bytes, payload_bytes, quotas[q.TASK_RECORD_BYTES])
            view.inflight_bytes += payload_bytes
        view.inflight += 1

    def release(self, record: FunctionRecord, payload_bytes: int) -> None:
        """An admitted task that was refused or failed: it counts no more."""
        self._answered(record, payload_bytes)

    def accepted(self, record: FunctionRecord, created_at: datetime | None, payload_bytes: int) -> None:
        """An admitted task is durable; its record (task mode) keeps its payload for the
        retention from `created_at` (None: counted already)."""
        view = self._answered(record, payload_bytes)
        if view is not None:
            view.accepted += 1
            if record.config.async_.task_mode:
                view.accepted_bytes += payload_bytes
        if record.config.async_.task_mode and created_at is not None:
            self.record_bytes.add(record.tenant, created_at, payload_bytes)

    def _answered(self, record: FunctionRecord, payload_bytes: int) -> _View | None:
        view = self._views.get(record.tenant)
        if view is not None:
            view.inflight = max(0, view.inflight - 1)
            if record.config.async_.task_mode:
                view.inflight_bytes = max(0, view.inflight_bytes - payload_bytes)
        return view

    # -- readings ----------------------------------------------------------------

    async def queued_tasks(self, tenant: str) -> int:
        """A reading of the tenant's tasks not started yet (see the module's doc)."""
        depth = 0
        try:
            reading = await self._depths.read(c.tenant_queue(tenant))
        except Exception as exc:  # the broker is down: its publishes fail anyway
            log.debug("reading the depth of tenant %s's queue failed: %s", tenant, exc)
            reading = None
        if reading is not None:
            depth += reading[0]
        own = f"fnhost.f.{tenant}."
        for queue in self._backpressure.watched():
            gauge = self._backpressure.gauge(queue)
            if queue.startswith(own) and gauge is not None:
                depth += gauge.depth
        return depth + await self.usage.waiting_timers(tenant)

    async def task_record_bytes(self, tenant: str) -> int:
        return await self.usage.task_record_bytes(tenant) + self.record_bytes.pending(tenant)

    async def _load(self, tenant: str) -> _View:
        """The first reading of a tenant here; concurrent first submissions share it."""
        loading = self._loading.get(tenant)
        if loading is None:
            loading = asyncio.create_task(self._first_reading(tenant))
            self._loading[tenant] = loading
            loading.add_done_callback(lambda _t: self._loading.pop(tenant, None))
        return await asyncio.shield(loading)

    async def _first_reading(self, tenant: str) -> _View:
        view = _View(quotas=self._defaults)
        await self._read(tenant, view)
        self._views[tenant] = self._views.get(tenant) or view
        return self._views[tenant]

    async def _read(self, tenant: str, view: _View) -> None:
        # Accepted before the reading began: durable, so in it. Those accepted since and
        # those still in flight stay on top of it.
        accepted, accepted_bytes = view.accepted, view.accepted_bytes
        quotas = await self.quotas(tenant)
        queued = await self.queued_tasks(tenant)
        record_bytes = await self.task_record_bytes(tenant)
        view.readings.append(queued)
        view.quotas, view.queued, view.record_bytes = quotas, max(view.readings), record_bytes
        view.covered.append(min(accepted, view.accepted))
        view.accepted = max(0, view.accepted - accepted)
        view.accepted_bytes = max(0, view.accepted_bytes - accepted_bytes)

    async def _loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._settings.quota_refresh_s)
            now = time.monotonic()
            for tenant, view in list(self._views.items()):
                if now - view.used_at > IDLE_S:
                    del self._views[tenant]
                    continue
                if view.skip > 0 and view.far():
                    view.skip -= 1
                    continue
                try:
                    await self._read(tenant, view)
                    view.skip = FAR_ROUNDS - 1
                    failing = False
                except Exception as exc:
                    if not failing:  # once per outage, not every round
                        log.warning("reading tenant usage failed (%s): quota views are stale "
                                    "until it works again", exc)
                    failing = True
                    break

    # -- function uploads and config changes -------------------------------------

    async def check_upload(
        self, tenant: str, name: str, existing: FunctionRecord | None, config: FunctionConfig,
        *, sha256: str, version: str, size: int,
    ) -> None:
        """An upload's quotas, before anything of it is stored: a new function, a new
        version, a new bundle's bytes (413 when it alone would pass the quota) and the
        queue destinations its config names. Two uploads at the same instant can both
        pass a quota's last unit (each reads before the other writes)."""
        quotas = await self.quotas(tenant)
        if existing is None:
            q.check_count(q.FUNCTIONS, await self.usage.functions(tenant), 1, quotas[q.FUNCTIONS])
        if not await self.usage.version_stored(tenant, name, version):
            q.check_count(q.VERSIONS, await self.usage.versions(tenant), 1, quotas[q.VERSIONS])
        if not await self.usage.bundle_stored(tenant, sha256):
            q.check_bytes(q.BUNDLE_BYTES, await self.usage.bundle_bytes(tenant), size,
                          quotas[q.BUNDLE_BYTES])
        await self.check_config(tenant, name, existing, config, quotas)

    async def check_config(
        self, tenant: str, name: str, existing: FunctionRecord | None, config: FunctionConfig,
        quotas: q.Quotas | None = None,
    ) -> None:
        """The queue destinations a function's new config names."""
        wanted = q.queue_destinations(config)
        current = q.queue_destinations(existing.config) if existing is not None else set()
        if not wanted - current:
            return  # nothing new: no read
        quotas = quotas or await self.quotas(tenant)
        others = await self.usage.queue_destinations(tenant, besides=name)
        q.check_destinations(others, current, wanted, quotas[q.QUEUE_DESTINATIONS])

    # -- the usage endpoints -----------------------------------------------------

    async def report(self, tenant: str) -> dict[str, Any]:
        """`{"usage": {...}, "quotas": {...}}`, every figure read now."""
        usage = {
            q.FUNCTIONS: await self.usage.functions(tenant),
            q.BUNDLE_BYTES: await self.usage.bundle_bytes(tenant),
            q.VERSIONS: await self.usage.versions(tenant),
            q.QUEUED_TASKS: await self.queued_tasks(tenant),
            q.TASK_RECORD_BYTES: await self.task_record_bytes(tenant),
            q.QUEUE_DESTINATIONS: len(await self.usage.queue_destinations(tenant)),
        }
        return {"usage": usage, "quotas": await self.quotas(tenant)}
