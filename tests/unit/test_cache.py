"""The function cache over a fake store: hits, revisions, invalidation, size bound."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runtime import constants as c
from runtime.cache import FunctionCache
from runtime.models import FunctionConfig
from runtime.store.functions import FunctionRecord, FunctionStore

WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def record(tenant: str = "acme", name: str = "resize", revision: int = 1) -> FunctionRecord:
    return FunctionRecord(
        tenant=tenant,
        name=name,
        config=FunctionConfig(),
        version=f"v{revision}",
        sha256="0" * 64,
        revision=revision,
        pickle=None,
        bundle_size=123,
        created_at=WHEN,
        updated_at=WHEN,
    )


class FakeStore:
    """Answers `get` from a dict and counts the calls."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], FunctionRecord] = {}
        self.calls: list[tuple[str, str]] = []

    def set(self, rec: FunctionRecord) -> None:
        self.records[(rec.tenant, rec.name)] = rec

    async def get(self, tenant: str, name: str) -> FunctionRecord | None:
        self.calls.append((tenant, name))
        return self.records.get((tenant, name))


def make_cache(store: FakeStore, max_entries: int = 10000) -> FunctionCache:
    fake: Any = store
    cache_store: FunctionStore = fake
    return FunctionCache(cache_store, max_entries=max_entries)


def function_event(tenant: str = "acme", name: str = "resize") -> dict[str, object]:
    return {"kind": c.CTL_FUNCTION, "tenant": tenant, "name": name}


async def test_miss_fetches_then_hit_does_not_call_store() -> None:
    store = FakeStore()
    store.set(record(revision=1))
    cache = make_cache(store)
    first = await cache.get("acme", "resize")
    assert first is not None and first.revision == 1
    assert store.calls == [("acme", "resize")]
    second = await cache.get("acme", "resize")
    assert second is first
    assert store.calls == [("acme", "resize")]


async def test_put_then_get_does_not_call_store() -> None:
    store = FakeStore()
    cache = make_cache(store)
    rec = record(revision=4)
    cache.put(rec)
    assert await cache.get("acme", "resize") is rec
    assert await cache.get("acme", "resize", min_revision=4) is rec
    assert store.calls == []


async def test_missing_function_returns_none() -> None:
    store = FakeStore()
    cache = make_cache(store)
    assert await cache.get("acme", "nope") is None
    assert store.calls == [("acme", "nope")]


async def test_keys_are_per_tenant() -> None:
    store = FakeStore()
    store.set(record(tenant="acme", revision=1))
    store.set(record(tenant="globex", revision=2))
    cache = make_cache(store)
    acme = await cache.get("acme", "resize")
    globex = await cache.get("globex", "resize")
    assert acme is not None and acme.tenant == "acme"
    assert globex is not None and globex.tenant == "globex"


async def test_min_revision_above_cached_refetches() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cache.put(record(revision=1))
    store.set(record(revision=2))
    fresh = await cache.get("acme", "resize", min_revision=2)
    assert fresh is not None and fresh.revision == 2
    assert store.calls == [("acme", "resize")]
    # The refetched record is now cached.
    assert await cache.get("acme", "resize", min_revision=2) is fresh
    assert len(store.calls) == 1


async def test_min_revision_at_or_below_cached_is_a_hit() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cached = record(revision=5)
    cache.put(cached)
    assert await cache.get("acme", "resize", min_revision=5) is cached
    assert await cache.get("acme", "resize", min_revision=1) is cached
    assert store.calls == []


async def test_function_event_invalidates() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cache.put(record(revision=1))
    store.set(record(revision=2))
    cache.on_control(function_event())
    fresh = await cache.get("acme", "resize")
    assert fresh is not None and fresh.revision == 2
    assert store.calls == [("acme", "resize")]


async def test_function_event_for_another_function_keeps_entry() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cached = record(revision=1)
    cache.put(cached)
    cache.on_control(function_event(name="thumbnail"))
    cache.on_control(function_event(tenant="globex"))
    assert await cache.get("acme", "resize") is cached
    assert store.calls == []


async def test_other_control_events_are_ignored() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cached = record(revision=1)
    cache.put(cached)
    cache.on_control({"kind": c.CTL_HEARTBEAT, "scheduler": "s1", "tenant": "acme", "name": "resize"})
    cache.on_control({"kind": c.CTL_SCHEDULER_DOWN, "scheduler": "s1"})
    assert await cache.get("acme", "resize") is cached
    assert store.calls == []


async def test_invalidate_unknown_entry_is_harmless() -> None:
    cache = make_cache(FakeStore())
    cache.invalidate("acme", "nope")
    cache.on_control(function_event(name="nope"))


async def test_deleted_function_drops_entry() -> None:
    store = FakeStore()
    cache = make_cache(store)
    cache.put(record(revision=1))
    # The store no longer has it; a higher revision forces the refetch.
    assert await cache.get("acme", "resize", min_revision=2) is None
    assert store.calls == [("acme", "resize")]
    # The entry is gone: the next lookup asks the store again.
    assert await cache.get("acme", "resize") is None
    assert len(store.calls) == 2


async def test_deleted_after_invalidation_returns_none() -> None:
    store = FakeStore()
    store.set(record(revision=1))
    cache = make_cache(store)
    assert await cache.get("acme", "resize") is not None
    del store.records[("acme", "resize")]
    cache.on_control(function_event())
    assert await cache.get("acme", "resize") is None


async def test_stale_put_is_ignored() -> None:
    store = FakeStore()
    cache = make_cache(store)
    newer = record(revision=5)
    cache.put(newer)
    cache.put(record(revision=4))
    assert await cache.get("acme", "resize") is newer
    assert store.calls == []


async def test_put_with_same_or_higher_revision_replaces() -> None:
    cache = make_cache(FakeStore())
    cache.put(record(revision=5))
    same = record(revision=5)
    cache.put(same)
    assert await cache.get("acme", "resize") is same
    higher = record(revision=6)
    cache.put(higher)
    assert await cache.get("acme", "resize") is higher


async def test_size_bound_evicts_the_oldest() -> None:
    store = FakeStore()
    cache = make_cache(store, max_entries=3)
    records = [record(name=f"f{i}") for i in range(4)]
    for rec in records:
        cache.put(rec)
    for rec in records[1:]:
        assert await cache.get("acme", rec.name) is rec
    assert store.calls == []
    # f0 was evicted: the store is asked (and has nothing).
    assert await cache.get("acme", "f0") is None
    assert store.calls == [("acme", "f0")]


async def test_refreshing_an_entry_makes_it_newest() -> None:
    store = FakeStore()
    cache = make_cache(store, max_entries=2)
    cache.put(record(name="a", revision=1))
    cache.put(record(name="b", revision=1))
    cache.put(record(name="a", revision=2))
    cache.put(record(name="c", revision=1))
    a = await cache.get("acme", "a")
    assert a is not None and a.revision == 2
    assert store.calls == []
    assert await cache.get("acme", "b") is None
    assert store.calls == [("acme", "b")]


async def test_size_bound_applies_to_fetched_records() -> None:
    store = FakeStore()
    for i in range(3):
        store.set(record(name=f"f{i}"))
    cache = make_cache(store, max_entries=2)
    for i in range(3):
        await cache.get("acme", f"f{i}")
    assert len(store.calls) == 3
    await cache.get("acme", "f2")
    await cache.get("acme", "f1")
    assert len(store.calls) == 3
    await cache.get("acme", "f0")
    assert len(store.calls) == 4


async def test_resync_after_a_broker_outage_drops_every_entry() -> None:
    store = FakeStore()
    store.set(record("acme", "resize", revision=1))
    store.set(record("acme", "thumb", revision=1))
    cache = make_cache(store)
    await cache.get("acme", "resize")
    await cache.get("acme", "thumb")
    # Changed while the invalidation could not be broadcast.
    store.set(record("acme", "resize", revision=2))
    cache.on_control({"kind": c.CTL_RESYNC})
    assert (await cache.get("acme", "resize")) == record("acme", "resize", revision=2)
    await cache.get("acme", "thumb")
    assert store.calls.count(("acme", "resize")) == 2
    assert store.calls.count(("acme", "thumb")) == 2
