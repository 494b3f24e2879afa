"""runtime/store/batch.py BatchWriter.insert_many with an in-memory collection: the
documents go out in one bulk write, and each gets its own answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pymongo import InsertOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from runtime.store.batch import BatchWriter


@dataclass
class Result:
    matched_count: int


class Collection:
    """Enough of a collection for inserts: unique `_id`s, bulk writes counted."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.bulk_writes = 0

    async def bulk_write(self, requests: list[Any], ordered: bool) -> Result:
        self.bulk_writes += 1
        errors = []
        for index, request in enumerate(requests):
            assert isinstance(request, InsertOne)
            doc = request._doc
            if doc["_id"] in self.docs:
                errors.append({"index": index, "code": 11000, "errmsg": "duplicate key"})
            else:
                self.docs[doc["_id"]] = dict(doc)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nMatched": 0})
        return Result(0)


async def test_insert_many_one_bulk_write_each_its_answer() -> None:
    c = Collection()
    c.docs["b"] = {"_id": "b"}
    w = BatchWriter(cast(AsyncCollection[dict[str, Any]], c))
    errors = await w.insert_many([{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], DuplicateKeyError)
    assert c.bulk_writes == 1 and set(c.docs) == {"a", "b", "c"}
    assert await w.insert_many([]) == []
    assert c.bulk_writes == 1
