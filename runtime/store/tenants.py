"""Tenants and their API keys; keys are stored as SHA-256 digests only."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from runtime.errors import Conflict
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

    async def by_key(self, api_key: str) -> Tenant | None:
        doc = await self._mongo.api_keys.find_one({"_id": hash_key(api_key)})
        if doc is None:
            return None
        tenant = await self._mongo.tenants.find_one({"_id": doc["tenant"]})
        return None if tenant is None else Tenant(id=tenant["_id"], name=tenant["name"])
