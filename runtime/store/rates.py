"""Each function's `max_rate` bucket in MongoDB, shared by every gateway.

One small document per function that has a max_rate, `{_id: "<tenant>/<function>",
tat}` (the GCRA state of runtime/flow/rate.py, in Unix seconds), changed only by
compare-and-set on its `_id`: `update_one({_id, tat: <as read>}, {$set: {tat}})`.
The embedded MongoDB-wire server answers point `_id` filters from its index, where a
findAndModify would scan. A gateway that loses the race reads the new value and
tries again, a few times at most.
"""

from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from runtime.flow.rate import Grant, take
from runtime.store.mongo import Doc, Mongo

COLLECTION = "rates"
# Compare-and-set attempts before giving up on one request (it is refused).
MAX_ATTEMPTS = 5


def rate_key(tenant: str, function: str) -> str:
    return f"{tenant}/{function}"


class RateStore:
    def __init__(self, mongo: Mongo) -> None:
        self._rates = mongo.db.get_collection(COLLECTION)

    async def take(self, key: str, rate: float, want: int, now: float, seen: float | None) -> Grant:
        """Take up to `want` tokens at `now` (Unix seconds). `seen` is the stored tat as
        this gateway last saw it (None: read it first). A refusal computed from it
        needs no read: the stored tat only moves forward, so it cannot be lower."""
        tat, known = seen, seen is not None
        for _ in range(MAX_ATTEMPTS):
            if not known:
                doc: Doc | None = await self._rates.find_one({"_id": key})
                tat, known = (None if doc is None else float(doc["tat"])), True
            grant = take(tat, now, rate, want)
            if grant.tokens == 0:
                return grant
            if tat is None:
                try:
                    await self._rates.insert_one({"_id": key, "tat": grant.tat})
                    return grant
                except DuplicateKeyError:
                    known = False  # another gateway made it first
                    continue
            result = await self._rates.update_one({"_id": key, "tat": tat}, {"$set": {"tat": grant.tat}})
            if result.matched_count == 1:
                return grant
            known = False  # another gateway moved it: read it again
        # Lost every race: refuse this one, and ask again at the next request.
        return Grant(0, now if tat is None else tat, 0.0)
