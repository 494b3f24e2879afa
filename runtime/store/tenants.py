"""Tenants and their API keys; keys are stored as SHA-256 digests only."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from runtime.errors import Conflict, NotFound
from runtime.store.mongo import Mongo


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast digest is enough: there is
    # nothing to brute-force that a slow hash would protect.
    return hashlib.sha256(api_key.encode()).hexdigest()


class TenantStore:
    def __init__(self, mongo: Mongo) -> None:
        self._mongo = mongo

    async def create(self, name: str) -> tuple[Tenant, str]:
        """Create a tenant and its first key; the key is returned once, never stored."""
        tenant = Tenant(id="t" + secrets.token_hex(6), name=name)
        now = datetime.now(UTC)
        try:
            await self._mongo.tenants.insert_one(
                {"_id": tenant.id, "name": name, "created_at": now}
            )
        except DuplicateKeyError:
            raise Conflict(f"tenant {name!r} already exists") from None
        api_key = f"fnk_{tenant.id}_{secrets.token_urlsafe(32)}"
        await self._mongo.api_keys.insert_one(
            {"_id": hash_key(api_key), "tenant": tenant.id, "created_at": now}
        )
        return tenant, api_key

    async def delete(self, tenant_id: str) -> None:
        """Take back a tenant created a moment ago (its set-up failed): name and keys."""
        await self._mongo.api_keys.delete_many({"tenant": tenant_id})
        await self._mongo.tenants.delete_one({"_id": tenant_id})

    async def get(self, tenant_id: str) -> tuple[Tenant, dict[str, int]]:
        """A tenant and its quota overrides (the admin's; missing names take the defaults)."""
        doc = await self._mongo.tenants.find_one({"_id": tenant_id})
        if doc is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return Tenant(id=doc["_id"], name=doc["name"]), dict(doc.get("quotas") or {})

    async def quotas(self, tenant_id: str) -> dict[str, int]:
        """The tenant's quota overrides ({} when none, or when the tenant is gone)."""
        doc = await self._mongo.tenants.find_one({"_id": tenant_id}, {"quotas": 1})
        return dict((doc or {}).get("quotas") or {})

    async def set_quotas(self, tenant_id: str, changes: dict[str, int | None]) -> dict[str, int]:
        """Set quota overrides (None: back to the default); returns them all."""
        update: dict[str, dict[str, object]] = {}
        for name, value in changes.items():
            if value is None:
                update.setdefault("$unset", {})[f"quotas.{name}"] = ""
            else:
                update.setdefault("$set", {})[f"quotas.{name}"] = value
        result = await self._mongo.tenants.update_one({"_id": tenant_id}, update)
        if result.matched_count != 1:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return await self.quotas(tenant_id)

    async def by_key(self, api_key: str) -> Tenant | None:
        doc = await self._mongo.api_keys.find_one({"_id": hash_key(api_key)})
        if doc is None:
            return None
        tenant = await self._mongo.tenants.find_one({"_id": doc["tenant"]})
        return None if tenant is None else Tenant(id=tenant["_id"], name=tenant["name"])
