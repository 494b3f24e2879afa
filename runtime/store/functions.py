"""Function records, their immutable versions and the bundles in GridFS."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gridfs.errors import NoFile
from pymongo import ReturnDocument

from runtime.errors import NotFound
from runtime.models import FunctionConfig
from runtime.store.mongo import Doc, Mongo


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
            "queue_mode": "dedicated" if self.config.dedicated_queue else "shared",
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(doc: Doc) -> FunctionRecord:
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

    async def save_bundle(self, tenant: str, sha256: str, data: bytes) -> None:
        """Store a bundle's bytes once per tenant and content hash."""
        file_id = f"{tenant}/{sha256}"
        if await self._mongo.db["bundles.files"].find_one({"_id": file_id}, {"_id": 1}):
            return
        await self._mongo.bundles.upload_from_stream_with_id(file_id, sha256, data)

    async def load_bundle(self, tenant: str, sha256: str) -> bytes:
        try:
            stream = await self._mongo.bundles.open_download_stream(f"{tenant}/{sha256}")
        except NoFile:
            raise NotFound(f"bundle {sha256[:12]} not found") from None
        return await stream.read()

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
                }
            },
            upsert=True,
        )
        return _record(doc), previous is None

    async def update_config(self, record: FunctionRecord, config: FunctionConfig) -> FunctionRecord:
        doc = await self._mongo.functions.find_one_and_update(
            {"_id": _fid(record.tenant, record.name)},
            {
                "$set": {
                    "config": config.dump(),
                    "updated_at": datetime.now(UTC),
                    "revision": _next_revision(record.revision),
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFound(f"function {record.name!r} not found")
        return _record(doc)

    async def delete(self, tenant: str, name: str) -> bool:
        result = await self._mongo.functions.delete_one({"_id": _fid(tenant, name)})
        return result.deleted_count == 1
