"""Bundles in GridFS, one file per tenant and content hash, and their collection.

A bundle is referenced by a function record (its current version) and by the
version records not yet collected (a function's newest uploads). One that
nothing references is deleted: at once when a version falls out of the kept
ones or its function is deleted, and by a periodic sweep that finds what a
crash between the two writes left behind.

A file stored or re-uploaded within the grace period is never deleted: an
upload stores (or touches) the file before its version references it, and
the delete is conditional on the touch time, so an upload that reuses a file
at the moment it is being collected either keeps it or stores it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from gridfs.errors import NoFile
from pymongo.errors import DuplicateKeyError

from runtime import constants as c
from runtime.errors import NotFound
from runtime.store.mongo import Doc, Mongo

# GridFS's default chunk size; a bundle is written and read this many chunks at a time.
CHUNK_BYTES = 255 * 1024
CHUNKS_PER_INSERT = 4


def file_id(tenant: str, sha256: str) -> str:
    return f"{tenant}/{sha256}"


def _untouched_since(cutoff: datetime) -> Doc:
    """Files last stored or re-uploaded at or before `cutoff` (older files have no touch
    time). At or before: stored times are milliseconds, and with no grace period a file
    stored in the cutoff's own millisecond is old enough."""
    return {
        "$or": [
            {"metadata.touched_at": {"$lte": cutoff}},
            {"metadata.touched_at": {"$exists": False}, "uploadDate": {"$lte": cutoff}},
        ]
    }


class BundleStore:
    def __init__(self, mongo: Mongo, grace_s: float) -> None:
        self._mongo = mongo
        self._bucket = mongo.bundles
        self._files = mongo.db[f"{c.BUNDLE_BUCKET}.files"]
        self._chunks = mongo.db[f"{c.BUNDLE_BUCKET}.chunks"]
        self._grace = timedelta(seconds=grace_s)

    async def save(self, tenant: str, sha256: str, source: IO[bytes]) -> None:
        """Store a bundle from a file, read in chunks off the event loop; a copy already
        stored (same tenant and content) is touched instead, which keeps it from
        collection for the grace period."""
        fid = file_id(tenant, sha256)
        now = datetime.now(UTC)
        touched = await self._files.update_one({"_id": fid}, {"$set": {"metadata.touched_at": now}})
        if touched.matched_count:
            return
        # Written as GridFS lays files out (chunks, then the file document that makes
        # them visible), a few chunks per insert: the driver's own upload stream buffers
        # up to 32 MB of chunks, and encodes them again, before it inserts any.
        await asyncio.to_thread(source.seek, 0)
        length = n = 0
        try:
            while batch := await asyncio.to_thread(source.read, CHUNKS_PER_INSERT * CHUNK_BYTES):
                docs = []
                for start in range(0, len(batch), CHUNK_BYTES):
                    docs.append({"files_id": fid, "n": n, "data": batch[start:start + CHUNK_BYTES]})
                    n += 1
                await self._chunks.insert_many(docs)
                length += len(batch)
            await self._files.insert_one({
                "_id": fid, "length": length, "chunkSize": CHUNK_BYTES, "uploadDate": now,
                "filename": sha256,
                "metadata": {"tenant": tenant, "sha256": sha256, "touched_at": now},
            })
        except DuplicateKeyError:
            return  # the same content stored by a concurrent upload: theirs is kept
        except BaseException:
            await self._chunks.delete_many({"files_id": fid})
            raise

    async def load(self, tenant: str, sha256: str, dest: IO[bytes]) -> None:
        """Write a stored bundle into `dest`, chunk by chunk."""
        try:
            stream = await self._bucket.open_download_stream(file_id(tenant, sha256))
        except NoFile:
            raise NotFound(f"bundle {sha256[:12]} not found") from None
        async with stream:
            while chunk := await stream.readchunk():
                dest.write(chunk)

    async def read(self, tenant: str, sha256: str) -> bytes:
        """A stored bundle's bytes (for small uses; `load` streams)."""
        try:
            stream = await self._bucket.open_download_stream(file_id(tenant, sha256))
        except NoFile:
            raise NotFound(f"bundle {sha256[:12]} not found") from None
        return await stream.read()

    async def prune(self, tenant: str, function: str, current: str, keep: int) -> int:
        """Collect the versions of a function past its `keep` newest uploads (never the
        `current` one); returns the bundles deleted."""
        docs = await self._mongo.versions.find(
            {"tenant": tenant, "function": function, "collected_at": {"$exists": False}},
            {"version": 1, "sha256": 1, "uploaded_at": 1, "created_at": 1},
        ).to_list(None)
        docs.sort(key=lambda d: d.get("uploaded_at") or d["created_at"], reverse=True)
        old = [d for d in docs[keep:] if d["version"] != current]
        return await self._retire(tenant, old)

    async def forget_function(self, tenant: str, function: str, current_sha256: str | None) -> int:
        """Collect every version of a deleted function; returns the bundles deleted."""
        docs = await self._mongo.versions.find(
            {"tenant": tenant, "function": function, "collected_at": {"$exists": False}},
            {"sha256": 1},
        ).to_list(None)
        extra = [current_sha256] if current_sha256 else []
        return await self._retire(tenant, docs, extra)

    async def _retire(self, tenant: str, docs: list[Doc], extra: Iterable[str] = ()) -> int:
        # The version records stay, marked and without their manifest (up to 64 KB): a
        # deleted function's tasks are found through them (TaskStore.find).
        if docs:
            await self._mongo.versions.update_many(
                {"_id": {"$in": [d["_id"] for d in docs]}},
                {"$set": {"collected_at": datetime.now(UTC)}, "$unset": {"manifest": ""}},
            )
        return await self.collect(tenant, {*(d["sha256"] for d in docs), *extra})

    async def collect(self, tenant: str, shas: Iterable[str]) -> int:
        """Delete those of `shas` that nothing references; returns how many."""
        cutoff = datetime.now(UTC) - self._grace  # before the references are read
        deleted = 0
        for sha in sorted(set(shas)):
            if not await self._referenced(tenant, sha):
                deleted += await self._delete(file_id(tenant, sha), cutoff)
        return deleted

    async def sweep(self) -> int:
        """Delete every stored bundle that no function or kept version references."""
        cutoff = datetime.now(UTC) - self._grace
        refs: set[str] = set()
        async for doc in self._mongo.functions.find({}, {"tenant": 1, "sha256": 1}):
            refs.add(file_id(doc["tenant"], doc["sha256"]))
        async for doc in self._mongo.versions.find(
            {"collected_at": {"$exists": False}}, {"tenant": 1, "sha256": 1}
        ):
            refs.add(file_id(doc["tenant"], doc["sha256"]))
        stale = [
            doc["_id"]
            async for doc in self._files.find(_untouched_since(cutoff), {"_id": 1})
            if doc["_id"] not in refs
        ]
        deleted = 0
        for fid in stale:
            deleted += await self._delete(fid, cutoff)
        return deleted

    async def _referenced(self, tenant: str, sha256: str) -> bool:
        query = {"tenant": tenant, "sha256": sha256}
        if await self._mongo.functions.find_one(query, {"_id": 1}):
            return True
        kept = {**query, "collected_at": {"$exists": False}}
        return await self._mongo.versions.find_one(kept, {"_id": 1}) is not None

    async def _delete(self, fid: Any, cutoff: datetime) -> int:
        # Conditional on the touch time, so an upload that just reused the file keeps it.
        result = await self._files.delete_one({"_id": fid, **_untouched_since(cutoff)})
        if not result.deleted_count:
            return 0
        await self._chunks.delete_many({"files_id": fid})
        return 1
