"""Every API key digest in memory, so that an unknown key costs no database lookup.

Loaded at start, kept current by the control bus's key events (a key issued or
revoked on any gateway), reloaded after a broker outage (`resync`) and every
`refresh_s` as a backstop. A key that is not in memory is looked up in the
database only when it names a known tenant, and at most once per `miss_s` per
tenant: a key issued on another gateway an instant ago works at once, while a
flood of made-up keys costs the database nothing, and one naming a real tenant
one lookup a second.

A revoked digest stays a tombstone for a while, so that a reload or a lookup
that read the database before the revocation cannot bring the key back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.metrics import KEY_LOOKUPS
from runtime import constants as c
from runtime.store.tenants import Tenant, TenantStore, hash_key, key_tenant

log = logging.getLogger(__name__)
# A tenant whose unknown keys were looked up this recently gets no other lookup.
MISS_LOOKUP_S = 1.0
# Entries of the per-tenant lookup times before they are cleared (a bound, not a policy).
MAX_MISS_ENTRIES = 100_000


class KeyRing:
    def __init__(self, tenants: TenantStore, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = tenants
        self._refresh_s = refresh_s
        self._clock = clock
        self._keys: dict[str, Tenant] = {}
        self._tenants: dict[str, Tenant] = {}
        self._revoked: dict[str, float] = {}  # digest -> when it was revoked
        self._added: dict[str, float] = {}  # digest -> when an event or lookup added it
        self._looked_up: dict[str, float] = {}  # tenant id -> last lookup of a missing key
        self._task: asyncio.Task[None] | None = None
        self.lookups = 0  # database lookups of keys not in memory

    def __len__(self) -> int:
        return len(self._keys)

    async def start(self) -> None:
        await self.load()
        self._task = asyncio.create_task(self._refresh_loop(), name="key-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def load(self) -> None:
        """Replace the set with the database's; keys issued and revoked meanwhile stand."""
        started = self._clock()
        snapshot = await self._store.all_keys()
        self._forget_tombstones()
        added = {d: self._keys[d] for d, at in self._added.items() if at >= started and d in self._keys}
        self._added = {d: at for d, at in self._added.items() if at >= started}
        self._keys = {d: t for d, t in (snapshot | added).items() if d not in self._revoked}
        self._tenants = {t.id: t for t in snapshot.values()} | self._tenants

    def _forget_tombstones(self) -> None:
        # Kept well past any read that could have started before the revocation.
        horizon = self._clock() - 2 * self._refresh_s - 60
        self._revoked = {d: at for d, at in self._revoked.items() if at > horizon}

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.load()
            except Exception as exc:
                log.warning("could not reload the API keys (%s); keeping the %d known", exc, len(self))

    async def tenant_for(self, api_key: str) -> Tenant | None:
        digest = hash_key(api_key)
        tenant = self._keys.get(digest)
        if tenant is not None or digest in self._revoked:
            return tenant
        named = key_tenant(api_key)
        if named is None or named not in self._tenants:
            return None
        now = self._clock()
        if now - self._looked_up.get(named, float("-inf")) < MISS_LOOKUP_S:
            return None
        if len(self._looked_up) >= MAX_MISS_ENTRIES:
            self._looked_up.clear()
        self._looked_up[named] = now
        self.lookups += 1
        KEY_LOOKUPS.inc()
        tenant = await self._store.by_digest(digest)
        if tenant is not None and digest not in self._revoked:
            self.add(digest, tenant)
            return tenant
        return None

    def add(self, digest: str, tenant: Tenant) -> None:
        if digest in self._revoked:
            return  # an event that overtook its revocation: keys are never issued twice
        self._keys[digest] = tenant
        self._added[digest] = self._clock()
        self._tenants[tenant.id] = tenant

    def revoke(self, digest: str) -> None:
        self._keys.pop(digest, None)
        self._revoked[digest] = self._clock()

    async def on_control(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == c.CTL_KEY:
            digest, tenant = event.get("digest"), event.get("tenant")
            if not isinstance(digest, str) or not isinstance(tenant, str):
                return
            if event.get("revoked"):
                self.revoke(digest)
            else:
                self.add(digest, Tenant(tenant, str(event.get("name") or tenant)))
        elif kind == c.CTL_RESYNC:
            try:
                await self.load()
            except Exception as exc:
                log.warning("could not reload the API keys after a broker outage (%s)", exc)
