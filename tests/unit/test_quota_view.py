"""The gateway's quota view (runtime/tasks/quotas.py): admissions counted on top of the last
reading, given back when not accepted, and a reading that races admissions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from runtime.errors import QuotaExceeded
from runtime.models import FunctionConfig
from runtime.settings import Settings
from runtime.store.functions import FunctionRecord
from runtime.tasks.quotas import READINGS, QuotaKeeper


class Tenants:
    def __init__(self) -> None:
        self.overrides: dict[str, int] = {}

    async def quotas(self, tenant: str) -> dict[str, int]:
        return dict(self.overrides)


class Keeper(QuotaKeeper):
    """The store and broker readings replaced by numbers the test sets."""

    queued = 0
    held_reading: asyncio.Event | None = None

    async def queued_tasks(self, tenant: str) -> int:
        if self.held_reading is not None:
            await self.held_reading.wait()
        return self.queued

    async def task_record_bytes(self, tenant: str) -> int:
        return 0


def keeper(**settings: Any) -> tuple[Keeper, Tenants]:
    tenants = Tenants()
    k = Keeper(Settings(**settings), tenants, None, None, None)  # type: ignore[arg-type]
    return k, tenants


def record(task_mode: bool = True) -> FunctionRecord:
    now = datetime.now(UTC)
    config = FunctionConfig.model_validate({"async": {"task_mode": task_mode}})
    return FunctionRecord("t1", "f", config, "v", "s", 1, None, 0, now, now)


async def test_admissions_count_until_the_quota_and_release_gives_back() -> None:
    k, _ = keeper(quota_queued_tasks=3)
    k.queued = 1
    rec = record()
    await k.admit_task(rec, 10)
    await k.admit_task(rec, 10)
    with pytest.raises(QuotaExceeded) as info:
        await k.admit_task(rec, 10)
    assert info.value.quota == "queued_tasks" and info.value.status == 429
    k.release(rec, 10)
    await k.admit_task(rec, 10)


async def test_record_bytes_only_in_task_mode() -> None:
    k, _ = keeper(quota_task_record_bytes=100)
    await k.admit_task(record(), 60)
    with pytest.raises(QuotaExceeded) as info:
        await k.admit_task(record(), 60)
    assert info.value.quota == "task_record_bytes"
    await k.admit_task(record(task_mode=False), 60)  # keeps no record


async def test_a_reading_errs_high_never_low_and_settles() -> None:
    k, tenants = keeper(quota_queued_tasks=10)
    rec = record()
    await k.admit_task(rec, 1)  # first sight: a reading of 0, then one admitted here
    k.accepted(rec, None, 1)
    view = k._views["t1"]
    k.held_reading = asyncio.Event()
    k.queued = 0  # the reading misses the first task (a scheduler holds it)
    reading = asyncio.ensure_future(k._read("t1", view))
    await asyncio.sleep(0)
    await k.admit_task(rec, 1)  # admitted while the reading runs, not durable yet
    k.held_reading.set()
    await reading
    assert view.tasks >= 2
    k.held_reading = None
    await k._read("t1", view)  # still in flight: no reading can hold it
    assert view.tasks >= 2
    k.accepted(rec, None, 1)
    k.queued = 2
    for _ in range(READINGS + 1):
        await k._read("t1", view)
        assert view.tasks >= 2
    assert view.tasks == 2
    k.queued = 0  # both ran: the highest of the last readings lets go of them in time
    for _ in range(READINGS):
        await k._read("t1", view)
    assert view.tasks == 0
    tenants.overrides = {"queued_tasks": 2}
    k.queued = 2
    await k._read("t1", view)
    with pytest.raises(QuotaExceeded):
        await k.admit_task(rec, 1)


async def test_an_admin_change_applies_at_once_here() -> None:
    k, _ = keeper(quota_queued_tasks=10)
    rec = record()
    await k.admit_task(rec, 1)
    k.overridden("t1", {**k._views["t1"].quotas, "queued_tasks": 1})
    with pytest.raises(QuotaExceeded):
        await k.admit_task(rec, 1)
    assert not k._views["t1"].far()
