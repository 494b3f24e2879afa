"""A tenant's usage against its quotas, read from what the stores already keep, and
the one usage the stores do not keep: bytes of task records, counted by hour.

Task-record bytes are counted, not measured: a task's payload when it is accepted
and its result and logs when it ends are added (in batches, `RecordBytes`) to a
counter of the hour the task was created in. A record lives for the retention
from its creation, so the sum of the counters of the last retention's hours is
what the records hold, without any decrement when records expire (within an
hour's bucket at the window's old end). Records deleted early (their function's
queued tasks deleted, a submission taken back) are not taken off: the count errs
high, never low.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from pymongo import UpdateOne

from runtime import constants as c
from runtime.store.mongo import Mongo
from runtime.store.timers import DELAY, PARK, RETRY

log = logging.getLogger(__name__)
USAGE = "usage"  # the hourly task-record byte counters
HOUR = timedelta(hours=1)
# Counters waiting to be written, at most; past it the oldest are dropped (the count
# errs low for a while rather than the process growing without bound).
MAX_PENDING = 100_000


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _bucket_id(tenant: str, hour: datetime) -> str:
    return f"{tenant}/{hour.strftime('%Y%m%d%H')}"


def _tenant_range(tenant: str) -> dict[str, str]:
    # Every `_id` of the form "<tenant>/...": '0' follows '/' in ASCII. Tenant ids are
    # [a-z0-9] only, so no other tenant's ids fall in the range.
    return {"$gte": f"{tenant}/", "$lt": f"{tenant}0"}


class UsageStore:
    """Reads of a tenant's usage; each is one indexed query."""

    def __init__(self, mongo: Mongo, retention_s: float) -> None:
        self._mongo = mongo
        self._usage = mongo.db[USAGE]
        self._timers = mongo.db["timers"]
        self._retention = timedelta(seconds=retention_s)

    async def functions(self, tenant: str) -> int:
        return await self._mongo.functions.count_documents({"tenant": tenant})

    async def function_exists(self, tenant: str, name: str) -> bool:
        return await self._mongo.functions.find_one({"_id": f"{tenant}/{name}"}, {"_id": 1}) is not None

    async def bundle_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's bundles in GridFS (each content hash stored once)."""
        files = self._mongo.db[f"{c.BUNDLE_BUCKET}.files"]
        found = files.find({"_id": _tenant_range(tenant)}, {"length": 1})
        return sum([int(doc.get("length", 0)) async for doc in found])

    async def bundle_stored(self, tenant: str, sha256: str) -> bool:
        files = self._mongo.db[f"{c.BUNDLE_BUCKET}.files"]
        return await files.find_one({"_id": f"{tenant}/{sha256}"}, {"_id": 1}) is not None

    async def versions(self, tenant: str) -> int:
        """Versions the store keeps for the tenant's functions (deleted ones' too, until
        they are collected: a collected version's record stays, marked `collected_at`)."""
        return await self._mongo.versions.count_documents(
            {"tenant": tenant, "collected_at": {"$exists": False}}
        )

    async def version_stored(self, tenant: str, function: str, version: str) -> bool:
        doc = await self._mongo.versions.find_one(
            {"_id": f"{tenant}/{function}/{version}", "collected_at": {"$exists": False}}, {"_id": 1}
        )
        return doc is not None

    async def queue_destinations(self, tenant: str, *, besides: str | None = None) -> set[str]:
        """Queue destination names in the tenant's function configs (but `besides`'s)."""
        names: set[str] = set()
        query = {"tenant": tenant}
        async for doc in self._mongo.functions.find(query, {"name": 1, "config.async": 1}):
            if doc.get("name") == besides:
                continue
            for key in ("on_success", "on_failure"):
                dest = ((doc.get("config") or {}).get("async") or {}).get(key) or {}
                if dest.get("type") == "queue" and isinstance(dest.get("name"), str):
                    names.add(dest["name"])
        return names

    async def waiting_timers(self, tenant: str) -> int:
        """The tenant's tasks held in timers: delayed, waiting for a retry, parked."""
        return await self._timers.count_documents(
            {"tenant": tenant, "kind": {"$in": [DELAY, RETRY, PARK]}}
        )

    async def task_record_bytes(self, tenant: str) -> int:
        since = hour_of(datetime.now(UTC) - self._retention)
        found = self._usage.find({"_id": _tenant_range(tenant), "hour": {"$gte": since}}, {"bytes": 1})
        return sum([int(doc.get("bytes", 0)) async for doc in found])

    async def add_record_bytes(self, counts: dict[tuple[str, datetime], int]) -> None:
        """Add to the hourly counters (tenant, hour) -> bytes, in one bulk write."""
        if not counts:
            return
        expire_at = {hour: hour + self._retention + 2 * HOUR for _, hour in counts}
        await self._usage.bulk_write([
            UpdateOne(
                {"_id": _bucket_id(tenant, hour)},
                {"$inc": {"bytes": n},
                 "$setOnInsert": {"tenant": tenant, "hour": hour, "expire_at": expire_at[hour]}},
                upsert=True,
            )
            for (tenant, hour), n in counts.items()
        ], ordered=False)

    async def delete_expired(self) -> int:
        """Counters of hours past the retention (reads skip them already)."""
        result = await self._usage.delete_many({"expire_at": {"$lt": datetime.now(UTC)}})
        return int(result.deleted_count)


class RecordBytes:
    """Task-record bytes counted in memory and added to the store every `flush_s`
    (one bulk write per round, off every request's path)."""

    def __init__(self, store: UsageStore, flush_s: float) -> None:
        self._store = store
        self._flush_s = flush_s
        self._pending: defaultdict[tuple[str, datetime], int] = defaultdict(int)
        self._flushing: dict[tuple[str, datetime], int] = {}  # being written now
        self._task: asyncio.Task[None] | None = None
        self._swept_at: datetime | None = None

    def add(self, tenant: str, created_at: datetime, n: int) -> None:
        if n <= 0:
            return
        key = (tenant, hour_of(created_at))
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            return
        self._pending[key] += n

    def pending(self, tenant: str) -> int:
        """Bytes counted here for `tenant` and not written yet (or being written: then
        a reading of the store may hold them too, and they count twice, never zero times)."""
        return sum(n for counts in (self._pending, self._flushing)
                   for (t, _), n in counts.items() if t == tenant)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="record-bytes")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception as exc:  # kept for the next round
                log.warning("writing task-record byte counts failed: %s", exc)

    async def flush(self) -> None:
        counts, self._pending = dict(self._pending), defaultdict(int)
        self._flushing = counts
        try:
            await self._store.add_record_bytes(counts)
        except Exception:
            for key, n in counts.items():
                self._pending[key] += n
            raise
        finally:
            self._flushing = {}
        hour = hour_of(datetime.now(UTC))
        if self._swept_at != hour:
            self._swept_at = hour
            await self._store.delete_expired()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
