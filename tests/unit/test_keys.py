"""The gateway's API key digests in memory (gateway/keys.py), with a stand-in store
and a fake clock: unknown keys cost no lookup, revocations stand."""

from __future__ import annotations

import secrets

from gateway.keys import KeyRing
from runtime import constants as c
from runtime.store.tenants import Tenant, hash_key

ACME = Tenant("tacme0000001", "acme")


def new_key(tenant: Tenant = ACME) -> str:
    return f"fnk_{tenant.id}_{secrets.token_urlsafe(32)}"


class Store:
    """The TenantStore calls a KeyRing makes, counted; `snapshot` is what a reload reads."""

    def __init__(self, keys: dict[str, Tenant]) -> None:
        self.keys = dict(keys)
        self.snapshot: dict[str, Tenant] | None = None
        self.lookups = 0

    async def all_keys(self) -> dict[str, Tenant]:
        return dict(self.snapshot if self.snapshot is not None else self.keys)

    async def by_digest(self, digest: str) -> Tenant | None:
        self.lookups += 1
        return self.keys.get(digest)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ring_with(*keys: str) -> tuple[KeyRing, Store, Clock]:
    store, clock = Store({hash_key(k): ACME for k in keys}), Clock()
    ring = KeyRing(store, refresh_s=60, clock=clock)  # type: ignore[arg-type]
    await ring.load()
    return ring, store, clock


async def test_known_keys_need_no_lookup_and_made_up_ones_none_either() -> None:
    key = new_key()
    ring, store, _ = await ring_with(key)
    assert await ring.tenant_for(key) == ACME
    for _ in range(1000):
        assert await ring.tenant_for(secrets.token_urlsafe(40)) is None
        assert await ring.tenant_for(new_key(Tenant("tnobody00001", "x"))) is None
    assert store.lookups == 0


async def test_a_key_naming_a_known_tenant_is_looked_up_once_a_second_at_most() -> None:
    ring, store, clock = await ring_with(new_key())
    for _ in range(100):
        assert await ring.tenant_for(new_key()) is None
    assert store.lookups == 1
    clock.now += 1.0
    issued_elsewhere = new_key()  # issued on another gateway, its event not here yet
    store.keys[hash_key(issued_elsewhere)] = ACME
    assert await ring.tenant_for(issued_elsewhere) == ACME
    assert store.lookups == 2
    assert await ring.tenant_for(issued_elsewhere) == ACME  # in memory now
    assert store.lookups == 2


async def test_key_events_add_and_revoke() -> None:
    old, new = new_key(), new_key()
    ring, store, _ = await ring_with(old)
    await ring.on_control({"kind": c.CTL_KEY, "digest": hash_key(new), "tenant": ACME.id, "name": "acme"})
    assert await ring.tenant_for(new) == ACME
    await ring.on_control({"kind": c.CTL_KEY, "digest": hash_key(old), "tenant": ACME.id, "revoked": True})
    assert await ring.tenant_for(old) is None
    assert store.lookups == 0  # a revoked key is not looked up either


async def test_a_reload_that_read_before_a_revocation_does_not_bring_the_key_back() -> None:
    key = new_key()
    ring, store, clock = await ring_with(key)
    store.snapshot = dict(store.keys)  # read before the key was deleted
    del store.keys[hash_key(key)]
    ring.revoke(hash_key(key))
    await ring.load()
    assert await ring.tenant_for(key) is None
    clock.now += 30
    await ring.on_control({"kind": c.CTL_KEY, "digest": hash_key(key), "tenant": ACME.id})  # late
    assert await ring.tenant_for(key) is None
    # Long after, the tombstone goes; the database no longer has the key either.
    store.snapshot = None
    clock.now += 1000
    await ring.load()
    assert await ring.tenant_for(key) is None


async def test_a_resync_reloads_what_events_would_have_said() -> None:
    gone, issued = new_key(), new_key()
    ring, store, _ = await ring_with(gone)
    del store.keys[hash_key(gone)]
    store.keys[hash_key(issued)] = ACME
    await ring.on_control({"kind": c.CTL_RESYNC})
    assert await ring.tenant_for(issued) == ACME
    assert store.lookups == 0
    assert await ring.tenant_for(gone) is None


async def test_a_reload_that_read_before_a_key_was_issued_keeps_it() -> None:
    ring, store, clock = await ring_with(new_key())
    issued = new_key()
    store.snapshot = dict(store.keys)  # read before the key was stored

    async def read_then_hear_the_event() -> dict[str, Tenant]:
        snapshot = dict(store.snapshot or {})
        clock.now += 0.01
        await ring.on_control({"kind": c.CTL_KEY, "digest": hash_key(issued), "tenant": ACME.id,
                               "name": ACME.name})
        return snapshot

    store.all_keys = read_then_hear_the_event  # type: ignore[method-assign]
    await ring.load()
    assert await ring.tenant_for(issued) == ACME
    assert store.lookups == 0
