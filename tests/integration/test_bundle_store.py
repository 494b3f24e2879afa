"""Bundles in GridFS against the real MongoDB-wire server: stored once per tenant and
content, kept while a function or a kept version references them, collected at once
when not (after the grace period), swept when a crash left them unreferenced."""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from collections.abc import AsyncIterator

import pytest

from runtime.errors import NotFound
from runtime.models import FunctionConfig
from runtime.settings import Settings
from runtime.store.bundles import BundleStore, file_id
from runtime.store.functions import FunctionStore
from runtime.store.mongo import Mongo
from tests.harness import MongoServer


@pytest.fixture
async def mongo(mongo: MongoServer) -> AsyncIterator[Mongo]:
    store = Mongo(Settings(mongo_url=mongo.url, mongo_db="b" + secrets.token_hex(6)))
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(store.db.name)
    await store.close()


def content(marker: str) -> tuple[str, bytes]:
    data = f"bundle {marker} ".encode() * 1000
    return hashlib.sha256(data).hexdigest(), data


async def stored(mongo: Mongo, tenant: str) -> set[str]:
    ids = [doc["_id"] async for doc in mongo.db["bundles.files"].find({}, {"_id": 1})]
    return {i.split("/", 1)[1] for i in ids if i.startswith(f"{tenant}/")}


async def upload(mongo: Mongo, bundles: BundleStore, tenant: str, name: str, marker: str) -> str:
    """What PUT /v1/functions/{name} does: store the bundle, then point the function at it."""
    sha, data = content(marker)
    await bundles.save(tenant, sha, io.BytesIO(data))
    await FunctionStore(mongo).put(
        tenant, name, FunctionConfig(), version=sha[:12], sha256=sha, pickle=None,
        bundle_size=len(data), manifest={},
    )
    return sha


async def test_stored_once_and_read_back(mongo: Mongo) -> None:
    bundles = BundleStore(mongo, grace_s=0)
    sha, data = content("a")
    await bundles.save("t1", sha, io.BytesIO(data))
    await bundles.save("t1", sha, io.BytesIO(data))
    assert await mongo.db["bundles.files"].count_documents({}) == 1
    out = io.BytesIO()
    await bundles.load("t1", sha, out)
    assert out.getvalue() == data
    with pytest.raises(NotFound):
        await bundles.load("t2", sha, io.BytesIO())  # another tenant's copy is its own


async def test_versions_past_the_kept_ones_are_collected(mongo: Mongo) -> None:
    bundles = BundleStore(mongo, grace_s=0)
    shas = [await upload(mongo, bundles, "t1", "f", f"v{i}") for i in range(4)]
    shared = await upload(mongo, bundles, "t1", "g", "v0")  # same content as f's first
    assert shared == shas[0]
    assert await bundles.prune("t1", "f", shas[3][:12], keep=2) == 1
    assert await stored(mongo, "t1") == {shas[0], shas[2], shas[3]}  # v0: g's current
    # Uploading a collected version again makes it the newest of the kept ones.
    await upload(mongo, bundles, "t1", "f", "v1")
    assert await bundles.prune("t1", "f", shas[1][:12], keep=2) == 1  # v2
    assert await stored(mongo, "t1") == {shas[0], shas[1], shas[3]}
    assert await bundles.prune("t1", "f", shas[1][:12], keep=1) == 1  # v3
    assert await stored(mongo, "t1") == {shas[0], shas[1]}


async def test_a_deleted_functions_bundles_are_collected_and_its_versions_stay(mongo: Mongo) -> None:
    bundles = BundleStore(mongo, grace_s=0)
    functions = FunctionStore(mongo)
    first = await upload(mongo, bundles, "t1", "f", "v0")
    second = await upload(mongo, bundles, "t1", "f", "v1")
    await functions.delete("t1", "f")
    assert await bundles.forget_function("t1", "f", second) == 2
    assert await stored(mongo, "t1") == set()
    # The version records stay (a deleted function's tasks are found through them).
    assert await mongo.versions.count_documents({"tenant": "t1", "function": "f"}) == 2
    assert await mongo.versions.count_documents({"manifest": {"$exists": True}}) == 0
    assert first != second


async def test_nothing_younger_than_the_grace_period_is_collected(mongo: Mongo) -> None:
    bundles = BundleStore(mongo, grace_s=0.5)
    shas = [await upload(mongo, bundles, "t1", "f", f"v{i}") for i in range(3)]
    assert await bundles.prune("t1", "f", shas[2][:12], keep=1) == 0
    assert await stored(mongo, "t1") == set(shas)
    await asyncio.sleep(0.6)
    # Re-uploading the same content touches it: it is young again.
    await bundles.save("t1", shas[0], io.BytesIO(content("v0")[1]))
    assert await bundles.collect("t1", shas) == 1
    assert await stored(mongo, "t1") == {shas[0], shas[2]}


async def test_the_sweep_deletes_only_unreferenced_bundles(mongo: Mongo) -> None:
    bundles = BundleStore(mongo, grace_s=0)
    kept = await upload(mongo, bundles, "t1", "f", "v0")
    orphan, data = content("orphan")  # stored, then the uploader crashed
    await bundles.save("t1", orphan, io.BytesIO(data))
    legacy, data = content("legacy")  # stored by an earlier release: no metadata
    await mongo.bundles.upload_from_stream_with_id(file_id("t2", legacy), legacy, data)
    assert await bundles.sweep() == 2
    assert await stored(mongo, "t1") == {kept}
    assert await stored(mongo, "t2") == set()
    assert await mongo.db["bundles.chunks"].count_documents({}) == 1
