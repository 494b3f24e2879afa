"""Durable timers in MongoDB: delayed tasks, retry backoff, parked (paused) tasks, and
the outbox's destination records waiting for their next attempt.

A timer holds the whole invocation message; when it is due, a scheduler
claims it (a lease, so two schedulers do not both publish it), publishes it
to the tenant's queue with a confirm, then deletes it. It survives restarts
of every component; a scheduler dying after publishing and before deleting
causes a duplicate, never a loss. An outbox timer (kind OUTBOX) holds a
destination record instead, which the claiming scheduler delivers
(runtime/outbox.py), then deletes or puts back for a later attempt.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, ReplaceOne

from runtime.store.mongo import Doc, Mongo

DELAY, RETRY, PARK = "delay", "retry", "park"
OUTBOX = "outbox"  # a destination record, not a message: see `hold`


def timer(
    due_at: datetime,
    *,
    kind: str,
    tenant: str,
    function: str,
    headers: dict[str, Any],
    body: bytes,
    content_type: str | None,
) -> Doc:
    """A timer holding an invocation message, due at `due_at`, not leased."""
    return {
        "due_at": due_at,
        "kind": kind,
        "tenant": tenant,
        "function": function,
        "headers": headers,
        "body": Binary(body),
        "content_type": content_type,
        "lease_until": None,
        "lease": None,
    }


class TimerStore:
    def __init__(self, mongo: Mongo) -> None:
        self._timers = mongo.db["timers"]

    async def ensure_indexes(self) -> None:
        await self._timers.create_index([("due_at", ASCENDING)])
        await self._timers.create_index([("tenant", ASCENDING), ("function", ASCENDING), ("kind", ASCENDING)])

    async def schedule(self, key: str, due_at: datetime, **fields: Any) -> None:
        """Store (or replace) the timer `key`: `fields` as `timer` takes them."""
        await self.put(key, timer(due_at, **fields))

    async def put(self, key: str, doc: Doc) -> None:
        """Store (or replace) the timer `key`, a `timer(...)`."""
        await self._timers.replace_one({"_id": key}, doc, upsert=True)

    async def schedule_many(self, timers: dict[str, Doc]) -> None:
        """`schedule` for several timers (key -> `timer(...)`), in one bulk write."""
        await self._timers.bulk_write(
            [ReplaceOne({"_id": key}, doc, upsert=True) for key, doc in timers.items()],
            ordered=False,
        )

    async def hold(
        self, timer_id: str, due_at: datetime, *, tenant: str, function: str, delivery: dict[str, Any]
    ) -> None:
        """An outbox timer: `delivery` holds what the outbox needs to deliver the record."""
        await self._timers.insert_one({
            "_id": timer_id,
            "due_at": due_at,
            "kind": OUTBOX,
            "tenant": tenant,
            "function": function,
            "delivery": delivery,
            "lease_until": None,
            "lease": None,
        })

    async def put_back(self, doc: Doc, due_at: datetime, changes: dict[str, Any] | None = None) -> bool:
        """Release a claimed timer, due again at `due_at`, with `changes` set; False when
        its lease was lost (another claim took it, or it was replaced)."""
        result = await self._timers.update_one(
            {"_id": doc["_id"], "lease": doc["lease"]},
            {"$set": {"due_at": due_at, "lease": None, "lease_until": None, **(changes or {})}},
        )
        return result.modified_count == 1

    async def renew(self, doc: Doc, lease_s: float) -> bool:
        """Keep a claimed timer leased `lease_s` from now (an outbox record waiting for a
        slot); False when its lease was lost."""
        result = await self._timers.update_one(
            {"_id": doc["_id"], "lease": doc["lease"]},
            {"$set": {"lease_until": datetime.now(UTC) + timedelta(seconds=lease_s)}},
        )
        return result.modified_count == 1

    async def claim_due(self, limit: int, lease_s: float) -> list[Doc]:
        """Due timers, each leased to this caller for `lease_s`."""
        now = datetime.now(UTC)
        # By the `due_at` index alone (an `$or` on the lease would make the
        # MongoDB-wire server read every timer): the leased ones are few (those
        # being published right now) and are skipped here.
        due: list[Doc] = []
        async with self._timers.find({"due_at": {"$lte": now}}).sort("due_at", ASCENDING) as found:
            async for doc in found:
                lease_until = doc.get("lease_until")
                if lease_until is None or lease_until < now:
                    due.append(doc)
                    if len(due) == limit:
                        break
        claimed = []
        for doc in due:
            lease = secrets.token_hex(8)
            result = await self._timers.update_one(
                {"_id": doc["_id"], "lease": doc.get("lease")},
                {"$set": {"lease": lease, "lease_until": now + timedelta(seconds=lease_s)}},
            )
            if result.modified_count == 1:
                doc["lease"] = lease
                claimed.append(doc)
        return claimed

    async def done(self, doc: Doc) -> None:
        await self._timers.delete_one({"_id": doc["_id"], "lease": doc["lease"]})

    async def cancel(self, key: str) -> bool:
        result = await self._timers.delete_one({"_id": key})
        return result.deleted_count == 1

    async def fire_now(self, key: str) -> bool:
        result = await self._timers.update_one({"_id": key}, {"$set": {"due_at": datetime.now(UTC)}})
        return result.modified_count == 1

    async def release_parked(self, tenant: str, function: str) -> int:
        """A function was resumed: its parked tasks are due now."""
        result = await self._timers.update_many(
            {"tenant": tenant, "function": function, "kind": PARK},
            {"$set": {"due_at": datetime.now(UTC)}},
        )
        return int(result.modified_count)
