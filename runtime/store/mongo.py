"""Connecting to MongoDB (or a MongoDB-wire server) and declaring indexes."""

from __future__ import annotations

from typing import Any

from gridfs import AsyncGridFSBucket
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from runtime import constants as c
from runtime.settings import Settings

Doc = dict[str, Any]


class Mongo:
    """One client per process; collections are attributes."""

    def __init__(self, settings: Settings) -> None:
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            settings.effective_mongo_url,
            serverSelectionTimeoutMS=5000,
            # A connection the server closed while it sat in the pool is not noticed
            # until used (the client does not read an idle socket), and with retryable
            # writes off nothing retries the write that finds it: retire it first.
            maxIdleTimeMS=int(settings.mongo_max_idle_s * 1000),
            tz_aware=True,
        )
        self.db: AsyncDatabase[Doc] = self.client[settings.mongo_db]
        self.tenants = self.db[c.C_TENANTS]
        self.api_keys = self.db[c.C_API_KEYS]
        self.functions = self.db[c.C_FUNCTIONS]
        self.versions = self.db[c.C_VERSIONS]
        self.bundles = AsyncGridFSBucket(self.db, bucket_name=c.BUNDLE_BUCKET)

    async def ensure_indexes(self) -> None:
        await self.tenants.create_index([("name", ASCENDING)], unique=True)
        await self.api_keys.create_index([("tenant", ASCENDING)])
        await self.functions.create_index(
            [("tenant", ASCENDING), ("name", ASCENDING)], unique=True
        )
        # The functions on dedicated queues, read by every scheduler at start.
        await self.functions.create_index([("queue.mode", ASCENDING)])
        await self.functions.create_index([("config.dedicated_queue", ASCENDING)])
        await self.versions.create_index(
            [("tenant", ASCENDING), ("function", ASCENDING), ("created_at", ASCENDING)]
        )

        # As GridFS declares them: bundles are written chunk by chunk (runtime/store/bundles.py).
        chunks = self.db[f"{c.BUNDLE_BUCKET}.chunks"]
        await chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        files = self.db[f"{c.BUNDLE_BUCKET}.files"]
        await files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def close(self) -> None:
        await self.client.close()
