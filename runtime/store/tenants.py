"""Tenants and their API keys; keys are stored as SHA-256 digests only.

A key's public id is the first 16 hex digits of its digest: shown in listings and
named in a revocation, it tells nothing of the key (the key is 256 random bits).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from runtime.errors import Conflict, NotFound
from runtime.store.mongo import Mongo

# Live keys one tenant may hold: enough to roll keys over (issue, deploy, revoke)
# across several clients, not a way to fill the database.
MAX_KEYS_PER_TENANT = 10
KEY_ID_LEN = 16
# How much of a key a listing shows, to tell keys apart ("fnk_<tenant>_" and 4 more).
SHOWN_SECRET_CHARS = 4


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key: never the key itself."""

    id: str
    tenant: str
    prefix: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prefix": self.prefix,
                "created_at": self.created_at.replace(tzinfo=UTC).isoformat()}


def hash_key(api_key: str) -> str:
    # Keys are 256-bit random tokens, so a fast digest is enough: there is
    # nothing to brute-force that a slow hash would protect.
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_id(digest: str) -> str:
    return digest[:KEY_ID_LEN]


def key_tenant(api_key: str) -> str | None:
    """The tenant id a key names (`fnk_<tenant>_<secret>`); unverified."""
    prefix, _, rest = api_key.partition("_")
    tenant, sep, _ = rest.partition("_")
    return tenant if prefix == "fnk" and sep and tenant else None


def _info(doc: dict[str, Any]) -> KeyInfo:
    return KeyInfo(key_id(doc["_id"]), doc["tenant"], doc.get("prefix"), doc["created_at"])


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
        api_key, _ = await self._insert_key(tenant.id, now)
        return tenant, api_key

    async def _insert_key(self, tenant_id: str, now: datetime) -> tuple[str, KeyInfo]:
        api_key = f"fnk_{tenant_id}_{secrets.token_urlsafe(32)}"
        prefix = api_key[: len(f"fnk_{tenant_id}_") + SHOWN_SECRET_CHARS]
        doc = {"_id": hash_key(api_key), "tenant": tenant_id, "created_at": now, "prefix": prefix}
        await self._mongo.api_keys.insert_one(doc)
        return api_key, _info(doc)

    async def delete(self, tenant_id: str) -> None:
        """Take back a tenant created a moment ago (its set-up failed): name and keys."""
        await self._mongo.api_keys.delete_many({"tenant": tenant_id})
        await self._mongo.tenants.delete_one({"_id": tenant_id})

    async def get(self, tenant_id: str) -> Tenant:
        doc = await self._mongo.tenants.find_one({"_id": tenant_id})
        if doc is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        return Tenant(id=doc["_id"], name=doc["name"])

    async def issue_key(self, tenant_id: str) -> tuple[str, KeyInfo]:
        """A new key for the tenant, besides the ones it has; returned once, never stored.
        Conflict past MAX_KEYS_PER_TENANT (revoke one first)."""
        if len(await self.keys(tenant_id)) >= MAX_KEYS_PER_TENANT:
            raise Conflict(f"tenant {tenant_id!r} has {MAX_KEYS_PER_TENANT} keys: revoke one first")
        return await self._insert_key(tenant_id, datetime.now(UTC))

    async def keys(self, tenant_id: str) -> list[KeyInfo]:
        """The tenant's keys, oldest first."""
        keys = [_info(doc) async for doc in self._mongo.api_keys.find({"tenant": tenant_id})]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, tenant_id: str, key: str) -> str:
        """Delete one of the tenant's keys by its id; returns its digest."""
        cursor = self._mongo.api_keys.find({"tenant": tenant_id}, {"_id": 1})
        digests = [doc["_id"] async for doc in cursor if key_id(doc["_id"]) == key]
        if not digests:
            raise NotFound(f"tenant {tenant_id!r} has no key {key!r}")
        await self._mongo.api_keys.delete_one({"_id": digests[0], "tenant": tenant_id})
        return str(digests[0])

    async def get_with_quotas(self, tenant_id: str) -> tuple[Tenant, dict[str, int]]:
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
        return await self.by_digest(hash_key(api_key))

    async def by_digest(self, digest: str) -> Tenant | None:
        doc = await self._mongo.api_keys.find_one({"_id": digest})
        if doc is None:
            return None
        tenant = await self._mongo.tenants.find_one({"_id": doc["tenant"]})
        return None if tenant is None else Tenant(id=tenant["_id"], name=tenant["name"])

    async def all_keys(self) -> dict[str, Tenant]:
        """Every key's digest and its tenant: what a gateway holds in memory."""
        tenants = {doc["_id"]: Tenant(doc["_id"], doc["name"])
                   async for doc in self._mongo.tenants.find({}, {"name": 1})}
        return {doc["_id"]: tenants[doc["tenant"]]
                async for doc in self._mongo.api_keys.find({}, {"tenant": 1})
                if doc["tenant"] in tenants}
