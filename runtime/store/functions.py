"""Function records and their immutable versions (bundles: runtime/store/bundles.py).

A function's queue state lives on its record: `queue` holds a promotion to a
dedicated queue (mode, since, reason) set by a scheduler; `pinned_at` is when
`dedicated_queue: true` was set. Neither changes the revision: moving queues
is not a new version of the function, and must not retire its containers.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument

from runtime.errors import NotFound
from runtime.models import FunctionConfig
from runtime.store.mongo import Doc, Mongo

# Where a function's async invocations go: its tenant's queue, a dedicated queue the
# platform promoted it to, or one its config pins it to.
SHARED, DEDICATED, PINNED = "shared", "dedicated", "pinned"
PINNED_REASON = "dedicated_queue: true"


@dataclass(frozen=True)
class FunctionRecord:
    tenant: str
    name: str
    config: FunctionConfig
    version: str
    sha256: str
    revision: int
    pickle: str | None
    bundle_size: int
    created_at: datetime
    updated_at: datetime
    queue_mode: str = SHARED  # shared | dedicated | pinned
    queue_since: datetime | None = None
    queue_reason: str | None = None

    @property
    def routed(self) -> bool:
        """Whether its invocations go to its own queue rather than the tenant's."""
        return self.queue_mode != SHARED

    @property
    def qualified(self) -> str:
        return f"{self.name}:{self.version}"

    def describe(self) -> dict[str, Any]:
        """The function as the API shows it."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "revision": self.revision,
            "bundle_size": self.bundle_size,
            "config": self.config.dump(),
            "queue_mode": self.queue_mode,
            "queue_since": _iso(self.queue_since) if self.queue_since else None,
            "queue_reason": self.queue_reason,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _queue_state(doc: Doc) -> tuple[str, datetime | None, str | None]:
    if doc["config"].get("dedicated_queue"):
        return PINNED, doc.get("pinned_at") or doc["updated_at"], PINNED_REASON
    queue = doc.get("queue") or {}
    if queue.get("mode") == DEDICATED:
        return DEDICATED, queue.get("since"), queue.get("reason")
    return SHARED, queue.get("since"), queue.get("reason")


def _record(doc: Doc) -> FunctionRecord:
    mode, since, reason = _queue_state(doc)
    return FunctionRecord(
        tenant=doc["tenant"],
        name=doc["name"],
        config=FunctionConfig.model_validate(doc["config"]),
        version=doc["version"],
        sha256=doc["sha256"],
        revision=doc["revision"],
        pickle=doc.get("pickle"),
        bundle_size=doc.get("bundle_size", 0),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        queue_mode=mode,
        queue_since=since,
        queue_reason=reason,
    )


def _fid(tenant: str, name: str) -> str:
    return f"{tenant}/{name}"


def _next_revision(previous: int = 0) -> int:
    # Wall-clock microseconds, strictly increasing per function, so a function
    # deleted and created again never goes back to a revision a cache has seen.
    return max(previous + 1, time.time_ns() // 1000)


class FunctionStore:
    def __init__(self, mongo: Mongo) -> None:
        self._mongo = mongo

    async def get(self, tenant: str, name: str) -> FunctionRecord | None:
        doc = await self._mongo.functions.find_one({"_id": _fid(tenant, name)})
        return None if doc is None else _record(doc)

    async def require(self, tenant: str, name: str) -> FunctionRecord:
        record = await self.get(tenant, name)
        if record is None:
            raise NotFound(f"function {name!r} not found")
        return record

    async def list(self, tenant: str) -> list[FunctionRecord]:
        cursor = self._mongo.functions.find({"tenant": tenant}).sort("name", 1)
        return [_record(doc) async for doc in cursor]

    async def put(
        self,
        tenant: str,
        name: str,
        config: FunctionConfig,
        *,
        version: str,
        sha256: str,
        pickle: str | None,
        bundle_size: int,
        manifest: dict[str, Any],
    ) -> tuple[FunctionRecord, bool]:
        """Create or update a function to point at a new version; returns (record, created)."""
        now = datetime.now(UTC)
        previous = await self._mongo.functions.find_one({"_id": _fid(tenant, name)})
        fields = {
            "tenant": tenant,
            "name": name,
            "config": config.dump(),
            "version": version,
            "sha256": sha256,
            "pickle": pickle,
            "bundle_size": bundle_size,
            "updated_at": now,
            "revision": _next_revision(previous["revision"] if previous else 0),
        }
        if config.dedicated_queue and not (previous or {}).get("config", {}).get("dedicated_queue"):
            fields["pinned_at"] = now
        doc = await self._mongo.functions.find_one_and_update(
            {"_id": _fid(tenant, name)},
            {"$set": fields, "$setOnInsert": {"created_at": now}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None, "an upsert returns the document"
        await self._mongo.versions.update_one(
            {"_id": f"{tenant}/{name}/{version}"},
            {
                "$setOnInsert": {
                    "tenant": tenant,
                    "function": name,
                    "version": version,
                    "sha256": sha256,
                    "size": bundle_size,
                    "manifest": manifest,
                    "created_at": now,
                },
                # The newest uploads are the versions kept (runtime/store/bundles.py);
                # uploading a collected version again brings it back.
                "$set": {"uploaded_at": now},
                "$unset": {"collected_at": ""},
            },
            upsert=True,
        )
        return _record(doc), previous is None

    async def update_config(self, record: FunctionRecord, config: FunctionConfig) -> FunctionRecord:
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "config": config.dump(), "updated_at": now, "revision": _next_revision(record.revision)
        }
        if config.dedicated_queue and not record.config.dedicated_queue:
            fields["pinned_at"] = now
        doc = await self._mongo.functions.find_one_and_update(
            {"_id": _fid(record.tenant, record.name)},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFound(f"function {record.name!r} not found")
        return _record(doc)

    async def set_queue(
        self, tenant: str, name: str, mode: str, reason: str, *, since: datetime | None = None
    ) -> bool:
        """Move a function between its tenant's queue and a dedicated one; False when it
        already was in `mode` (another scheduler moved it first) or is gone."""
        result = await self._mongo.functions.update_one(
            {"_id": _fid(tenant, name), "queue.mode": {"$ne": mode}},
            {"$set": {"queue": {"mode": mode, "since": since or datetime.now(UTC), "reason": reason}}},
        )
        return result.modified_count == 1

    async def routed(self) -> builtins.list[tuple[str, str]]:
        """Every function on a dedicated queue, promoted or pinned: (tenant, name)."""
        found: set[tuple[str, str]] = set()
        for query in ({"queue.mode": DEDICATED}, {"config.dedicated_queue": True}):
            async for doc in self._mongo.functions.find(query, {"tenant": 1, "name": 1}):
                found.add((str(doc["tenant"]), str(doc["name"])))
        return sorted(found)

    async def delete(self, tenant: str, name: str) -> bool:
        result = await self._mongo.functions.delete_one({"_id": _fid(tenant, name)})
        return result.deleted_count == 1
