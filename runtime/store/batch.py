"""Coalescing writes: everything asked for while one round trip is in flight goes
out together in the next `bulk_write`.

A MongoDB-wire server pays mostly per round trip and per index touched, so at
high rates one bulk write of 200 operations costs about as much as a few single
ones. Under light load a write goes out at once (a batch of one); under heavy
load batches grow by themselves, with no timer to tune.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from runtime.store.mongo import Doc

MARK = "_w"  # a per-operation token, to tell which conditional updates matched


@dataclass
class _Op:
    request: InsertOne[Doc] | UpdateOne
    future: asyncio.Future[bool]
    key: Any = None
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BatchWriter:
    def __init__(self, collection: AsyncCollection[Doc], max_batch: int = 500) -> None:
        self._collection = collection
        self._max = max_batch
        self._pending: list[_Op] = []
        self._flushing: asyncio.Task[None] | None = None

    async def insert(self, doc: Doc) -> None:
        """Insert one document; DuplicateKeyError if its _id exists."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(InsertOne(doc), future))
        self._kick()
        await future

    async def insert_many(self, docs: list[Doc]) -> list[BaseException | None]:
        """Insert documents, all in the next bulk write (one round trip for a batch
        of them); for each, None or its error (DuplicateKeyError when its _id exists)."""
        if not docs:
            return []
        loop = asyncio.get_running_loop()
        ops = [_Op(InsertOne(doc), loop.create_future()) for doc in docs]
        self._pending.extend(ops)
        self._kick()
        await asyncio.wait([op.future for op in ops])
        return [op.future.exception() for op in ops]

    async def update(self, query: Doc, update: Doc) -> bool:
        """One conditional update by _id; True when it matched (and so was applied)."""
        token = secrets.token_hex(6)
        update = {**update, "$set": {**update.get("$set", {}), MARK: token}}
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Op(UpdateOne(query, update), future, key=query["_id"], token=token))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush_all())

    async def _flush_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                await self._flush(batch)
            except Exception as exc:
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(exc)

    async def _flush(self, batch: list[_Op]) -> None:
        failed: dict[int, Exception] = {}
        try:
            result = await self._collection.bulk_write([op.request for op in batch], ordered=False)
            matched = result.matched_count
        except BulkWriteError as exc:
            details = exc.details
            for error in details.get("writeErrors", []):
                code = error.get("code")
                message = error.get("errmsg", "write error")
                failed[int(error["index"])] = (
                    DuplicateKeyError(message, code) if code == 11000 else Exception(message)
                )
            matched = int(details.get("nMatched", 0))
        updates = [op for i, op in enumerate(batch) if op.token is not None and i not in failed]
        applied: set[Any] | None = None
        if updates and matched < len(updates):
            # Some conditional updates did not match: find out which ones did.
            keys = [op.key for op in updates]
            found = self._collection.find({"_id": {"$in": keys}}, {MARK: 1})
            tokens = {doc["_id"]: doc.get(MARK) async for doc in found}
            applied = {op.key for op in updates if tokens.get(op.key) == op.token}
        for i, op in enumerate(batch):
            if op.future.done():
                continue
            if i in failed:
                op.future.set_exception(failed[i])
            elif op.token is None:
                op.future.set_result(True)
            else:
                op.future.set_result(applied is None or op.key in applied)


class BatchReader:
    """Coalescing point reads: every `get` asked for while one `find` is in flight
    goes out together in the next `find({_id: {$in: [...]}})`. A batch of fifty
    costs the server about what two single reads do."""

    def __init__(
        self, collection: AsyncCollection[Doc], projection: Doc, max_batch: int = 500
    ) -> None:
        self._collection = collection
        self._projection = projection
        self._max = max_batch
        self._pending: dict[Any, list[asyncio.Future[Doc | None]]] = {}
        self._reading: asyncio.Task[None] | None = None

    async def get(self, key: Any) -> Doc | None:
        future: asyncio.Future[Doc | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_all())
        return await future

    async def _read_all(self) -> None:
        while self._pending:
            keys = list(self._pending)[: self._max]
            waiting = {key: self._pending.pop(key) for key in keys}
            try:
                found = self._collection.find({"_id": {"$in": keys}}, self._projection)
                docs = {doc["_id"]: doc async for doc in found}
            except Exception as exc:
                for futures in waiting.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for key, futures in waiting.items():
                for future in futures:
                    if not future.done():
                        future.set_result(docs.get(key))
