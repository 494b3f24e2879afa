"""Task records (task mode): status history, payload, outcome, timings.

One document per (tenant, function, task id); the `_id` makes a caller-chosen
task id unique per function across every gateway. Records expire through a
TTL index on `expire_at`.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure

from runtime.errors import Conflict
from runtime.store.batch import BatchReader, BatchWriter
from runtime.store.mongo import Doc, Mongo
from runtime.tasks import status as st

TASK_IDS = "task_ids"  # ids claimed by functions without task mode (no record)

# `TaskStore.list` reads the index in time windows, newest first: the first one
# this wide, each next one this many times wider, and past the last width the
# rest of the history at once.
LIST_FIRST_WINDOW = timedelta(seconds=2)
LIST_WINDOW_GROWTH = 4
LIST_LAST_WINDOW = timedelta(days=30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
# `_id`s per bulk update or delete by key.
BULK_KEYS = 1000


def task_key(tenant: str, function: str, task_id: str) -> str:
    # Unique per (tenant, function, task id); a task is found by id through `_id`
    # point lookups, one per function of the tenant (no secondary index on ids).
    return f"{tenant}/{task_id}/{function}"


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


def _status_update(
    to: str,
    entries: list[tuple[str, datetime]],
    fields: dict[str, Any] | None = None,
    inc: dict[str, int] | None = None,
    sort: bool = False,
    updated_at: datetime | None = None,
) -> dict[str, Any]:
    """The update that sets status `to` and appends `entries` to the history
    (in time order with `sort`, for entries older than those stored)."""
    push: dict[str, Any] = {"$each": [{"status": s, "at": t} for s, t in entries]}
    if sort:
        push["$sort"] = {"at": 1}
    update: dict[str, Any] = {
        "$set": {"status": to, "updated_at": updated_at or now(), **(fields or {})},
        "$push": {"history": push},
    }
    if inc:
        update["$inc"] = inc
    return update


class TaskStore:
    def __init__(self, mongo: Mongo, retention_s: float) -> None:
        self._tasks = mongo.db["tasks"]
        self._versions = mongo.versions
        self._ids = mongo.db[TASK_IDS]
        self._retention = timedelta(seconds=retention_s)
        self._task_writes = BatchWriter(self._tasks)
        self._id_writes = BatchWriter(self._ids)
        self._status_reads = BatchReader(self._tasks, {"status": 1})

    async def ensure_indexes(self) -> None:
        """The indexes every query of this store is answered from (see `list`).

        Two secondary indexes besides the expiry one, none on `status`: on the
        embedded server every index costs each insert and each update alike, whatever
        fields the update changes (measured: one more index, even a partial one that
        a successful task never enters, took 20% off both). A task is found by id
        through `_id` point lookups; filters on status and on the id prefix are
        applied to the candidates of a bounded time window."""
        await self._tasks.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
        # Ascending: `GET /v1/tasks` sorts newest first all the same (an index is read
        # either way). The embedded MongoDB-wire server reads `$gte` on a descending
        # index key as `$gt`, which dropped the tasks created exactly at `since`.
        await self._tasks.create_index(
            [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
        )
        await self._tasks.create_index(
            [("tenant", ASCENDING), ("function", ASCENDING), ("created_at", ASCENDING)]
        )
        for earlier in ("tenant_1_created_at_-1__id_-1", "tenant_1_status_1_created_at_1_failures"):
            with contextlib.suppress(OperationFailure):  # indexes of earlier versions
                await self._tasks.drop_index(earlier)
        await self._ids.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)

    # -- creation ------------------------------------------------------------

    def record(
        self,
        *,
        tenant: str,
        function: str,
        task_id: str,
        request_id: str,
        payload: bytes,
        content_type: str | None,
        created_at: datetime,
        due_at: datetime | None,
    ) -> Doc:
        """The record of a new task, Enqueued: what `create` and `create_many` insert."""
        return {
            "_id": task_key(tenant, function, task_id),
            "tenant": tenant,
            "function": function,
            "task_id": task_id,
            "request_id": request_id,
            "status": st.ENQUEUED,
            "history": [{"status": st.ENQUEUED, "at": created_at}],
            "attempts": 0,
            "invoke_count": 0,
            "created_at": created_at,
            "updated_at": created_at,
            "due_at": due_at,
            "expire_at": created_at + self._retention,
            "payload": Binary(payload),
            "content_type": content_type,
        }

    async def create(self, **fields: Any) -> None:
        """Insert an Enqueued task (`fields` as `record` takes them); 409 naming the
        existing task when the id is taken."""
        await self.insert(self.record(**fields))

    async def insert(self, doc: Doc) -> None:
        """Insert a task's `record`; 409 naming the existing task when the id is taken."""
        try:
            await self._task_writes.insert(doc)
        except DuplicateKeyError:
            raise (await self._conflicts([doc]))[0] from None

    async def create_many(self, docs: list[Doc]) -> list[BaseException | None]:
        """Insert the `record`s of several tasks in one bulk write; for each, None, a
        Conflict naming the existing task (its id is taken), or the write's error."""
        errors = await self._task_writes.insert_many(docs)
        taken = [doc for doc, error in zip(docs, errors, strict=True)
                 if isinstance(error, DuplicateKeyError)]
        if not taken:
            return errors
        conflicts = iter(await self._conflicts(taken))
        return [next(conflicts) if isinstance(e, DuplicateKeyError) else e for e in errors]

    async def _conflicts(self, docs: list[Doc]) -> list[Conflict]:
        """409s for records whose ids are taken, naming each existing task's status
        (read in one query; "unknown" when the read fails: the 409 stands, and the
        caller must not take it for a failed insert of its own)."""
        state: dict[str, str] = {}
        with contextlib.suppress(ConnectionFailure):
            found = self._tasks.find({"_id": {"$in": [d["_id"] for d in docs]}}, {"status": 1})
            state = {d["_id"]: d["status"] async for d in found}
        return [
            Conflict(f"task {d['task_id']!r} of function {d['function']!r} already exists "
                     f"(status {state.get(d['_id'], 'unknown')})")
            for d in docs
        ]

    async def claim_id(self, tenant: str, function: str, task_id: str, created_at: datetime) -> None:
        """Reserve a caller-chosen id for a function without task mode (no record kept)."""
        key = task_key(tenant, function, task_id)
        try:
            await self._id_writes.insert({"_id": key, "expire_at": created_at + self._retention})
        except DuplicateKeyError:
            raise _id_taken(function, task_id) from None

    async def claim_ids(
        self, tenant: str, function: str, task_ids: list[str], created_at: datetime
    ) -> list[BaseException | None]:
        """`claim_id` for several ids in one bulk write; for each, None, a Conflict, or
        the write's error."""
        expire_at = created_at + self._retention
        errors = await self._id_writes.insert_many(
            [{"_id": task_key(tenant, function, t), "expire_at": expire_at} for t in task_ids]
        )
        return [
            _id_taken(function, t) if isinstance(e, DuplicateKeyError) else e
            for t, e in zip(task_ids, errors, strict=True)
        ]

    async def forget(self, tenant: str, function: str, task_id: str) -> None:
        """Undo a create whose publish was not confirmed, so the caller can retry the id."""
        key = task_key(tenant, function, task_id)
        await self._tasks.delete_one({"_id": key, "status": st.ENQUEUED})
        await self._ids.delete_one({"_id": key})

    # -- transitions ---------------------------------------------------------

    async def transition(
        self,
        key: str,
        to: str,
        *,
        when: frozenset[str] | None = None,
        fields: dict[str, Any] | None = None,
        inc: dict[str, int] | None = None,
    ) -> Doc | None:
        """Move a task to `to` (recorded in its history) if its status is in `when`.

        Returns the updated document, or None when the task is gone or its
        status did not allow the move (stopped meanwhile, already final).
        """
        query: dict[str, Any] = {"_id": key}
        if when is not None:
            query["status"] = {"$in": sorted(when)}
        at = now()
        update = _status_update(to, [(to, at)], fields, inc, updated_at=at)
        # An update, then a read, rather than findAndModify: the embedded server
        # writes a findAndModify through `{_id, $and: [query]}`, which it answers by
        # reading every document of the collection (4x slower at 5,000 records).
        result = await self._tasks.update_one(query, update)
        if result.modified_count != 1:
            return None
        doc: Doc | None = await self._tasks.find_one({"_id": key})
        return doc

    async def advance(
        self,
        key: str,
        to: str,
        *,
        when: frozenset[str],
        fields: dict[str, Any] | None = None,
        inc: dict[str, int] | None = None,
        earlier: list[tuple[str, datetime]] | None = None,
        at: datetime | None = None,
    ) -> bool:
        """`transition` for the hot path: batched with other writes, returns only
        whether it applied. `earlier` adds statuses passed on the way (with their
        times) to the history before `to`, in the same write; `at` is when `to`
        happened (now by default)."""
        entries = [*(earlier or []), (to, at or now())]
        return await self._task_writes.update(
            {"_id": key, "status": {"$in": sorted(when)}}, _status_update(to, entries, fields, inc)
        )

    async def status(self, key: str) -> str | None:
        """The task's status (None when it is gone); batched with other reads."""
        doc = await self._status_reads.get(key)
        return None if doc is None else str(doc["status"])

    async def overrule_stop(
        self,
        key: str,
        to: str,
        *,
        fields: dict[str, Any],
        inc: dict[str, int] | None,
        earlier: list[tuple[str, datetime]],
    ) -> bool:
        """A task marked Stopped as queued while a scheduler was starting it: store
        what really happened (it ran), its history kept in time order."""
        at = now()
        entries = earlier if to == st.STOPPED else [*earlier, (to, at)]
        update = _status_update(to, entries, fields, inc, sort=True, updated_at=at)
        result = await self._tasks.update_one({"_id": key, "status": st.STOPPED}, update)
        return result.modified_count == 1

    async def delete_expired(self, at: datetime | None = None) -> int:
        """Delete the records (and claimed ids) whose `expire_at` has passed.

        The TTL index does this on MongoDB; the embedded MongoDB-wire server's TTL
        monitor scans the whole collection under a lock instead, so fnhost runs it
        with that monitor off and sweeps by this range query on the index."""
        query = {"expire_at": {"$lt": at or now()}}
        deleted = await self._tasks.delete_many(query)
        await self._ids.delete_many(query)
        return int(deleted.deleted_count)

    async def undo_redrive(self, before: Doc) -> None:
        """Put back a task moved to Enqueued by a retry whose message was not queued."""
        restored = {k: before.get(k) for k in ("created_at", "expire_at", "due_at", "destination", "error")}
        await self._tasks.update_one(
            {"_id": before["_id"], "status": st.ENQUEUED},
            {
                "$set": {"status": before["status"], "updated_at": now(), **restored},
                "$pop": {"history": 1},
            },
        )

    async def set_fields(self, key: str, fields: dict[str, Any]) -> None:
        await self._tasks.update_one({"_id": key}, {"$set": fields})

    async def get(self, key: str) -> Doc | None:
        doc: Doc | None = await self._tasks.find_one({"_id": key})
        return doc

    async def find(self, tenant: str, task_id: str, function: str | None = None) -> Doc | None:
        """A task by id (the newest when several functions used the same id).

        Without `function`: one `_id` point lookup per function the tenant ever
        had (its versions outlive a deleted function, whose tasks stay readable),
        so the cost follows the tenant's functions, never the number of tasks."""
        if function:
            doc: Doc | None = await self._tasks.find_one({"_id": task_key(tenant, function, task_id)})
            return doc
        names = {v["function"] async for v in self._versions.find({"tenant": tenant}, {"function": 1})}
        if not names:
            return None
        keys = sorted(task_key(tenant, name, task_id) for name in names)
        docs = await self._tasks.find({"_id": {"$in": keys}}).to_list(None)
        return max(docs, key=lambda d: d["created_at"]) if docs else None

    async def list(
        self,
        tenant: str,
        *,
        function: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        prefix: str | None = None,
        limit: int = 50,
        cursor: tuple[datetime, str] | None = None,
    ) -> list[Doc]:
        """Newest first; `cursor` is the (created_at, _id) of the last task of the previous page.

        The MongoDB-wire server reads every candidate an index range yields before
        it sorts and limits, so a tenant's (or function's) whole history would be
        read for one page. Instead the index is read in time windows going back
        from the newest end, each `LIST_WINDOW_GROWTH` times wider than the last,
        until the page is full: a page costs about what its own tasks cost. Status
        and id-prefix filters are applied to each window's candidates (small
        projected documents), then the page is read by `_id`."""
        query: dict[str, Any] = {"tenant": tenant}
        if function:
            query["function"] = function
        residual = status is not None or prefix is not None  # applied to the candidates
        projection: dict[str, int]
        if residual:
            projection = {"_id": 1, "created_at": 1, "status": 1, "task_id": 1}
        else:
            projection = {"payload": 0, "logs": 0, "result": 0}
        upper, upper_inclusive = (cursor[0], True) if cursor is not None else (until, False)
        if cursor is not None and until is not None and until <= cursor[0]:
            upper, upper_inclusive = until, False
        floor = since
        width = LIST_FIRST_WINDOW
        top = upper if upper is not None else now()
        page: list[Doc] = []
        while True:
            # Never below the epoch: no task is older, and a date cannot go below year 1.
            lower: datetime | None = top - width if top - EPOCH > width else EPOCH
            if floor is not None and lower is not None and lower <= floor:
                lower = floor
            if width >= LIST_LAST_WINDOW and floor is None:
                lower = None  # the rest of the history in one read
            created: dict[str, Any] = {}
            if lower is not None:
                created["$gte"] = lower
            if upper is not None:
                # `$lte t` as `$lt t + 1 ms` (BSON dates are whole milliseconds): on a
                # compound index the embedded server reads `$lte` as `$lt`.
                created["$lt"] = upper + MILLISECOND if upper_inclusive else upper
            found = self._tasks.find({**query, "created_at": created}, projection).sort(
                [("created_at", DESCENDING), ("_id", DESCENDING)]
            )
            ties = cursor if upper_inclusive else None  # the cursor's own instant: skip up to its key
            if not residual and ties is None:
                found = found.limit(limit - len(page))
            for doc in await found.to_list(None):
                if ties is not None and doc["created_at"] == ties[0] and doc["_id"] >= ties[1]:
                    continue
                if status is not None and doc.get("status") != status:
                    continue
                if prefix is not None and not str(doc.get("task_id", "")).startswith(prefix):
                    continue
                page.append(doc)
                if len(page) == limit:
                    break
            if (len(page) >= limit or lower is None or lower <= EPOCH
                    or (floor is not None and lower <= floor)):
                break
            upper, upper_inclusive, top = lower, False, lower
            width *= LIST_WINDOW_GROWTH
        if residual and page:
            wanted = [d["_id"] for d in page]
            full = {
                d["_id"]: d
                async for d in self._tasks.find(
                    {"_id": {"$in": wanted}}, {"payload": 0, "logs": 0, "result": 0}
                )
            }
            page = [full[key] for key in wanted if key in full]
        return page

    async def _function_task_batches(
        self, tenant: str, function: str, when: frozenset[str]
    ) -> builtins.list[dict[str, Any]]:
        """Filters of at most BULK_KEYS of a function's tasks whose status is in `when`,
        by `_id` (found through the function's index), the status checked again."""
        found = self._tasks.find({"tenant": tenant, "function": function}, {"status": 1})
        keys = [d["_id"] async for d in found if d.get("status") in when]
        return [
            {"_id": {"$in": keys[start : start + BULK_KEYS]}, "status": {"$in": sorted(when)}}
            for start in range(0, len(keys), BULK_KEYS)
        ]

    async def delete_function_tasks(self, tenant: str, function: str, when: frozenset[str]) -> int:
        deleted = 0
        for query in await self._function_task_batches(tenant, function, when):
            deleted += int((await self._tasks.delete_many(query)).deleted_count)
        return deleted

    async def mark_function_tasks(self, tenant: str, function: str, when: frozenset[str], to: str) -> int:
        """Bulk status change of a function's tasks (delete -> Invalid; batch stop)."""
        at = now()
        update = _status_update(to, [(to, at)], updated_at=at)
        marked = 0
        for query in await self._function_task_batches(tenant, function, when):
            marked += int((await self._tasks.update_many(query, update)).modified_count)
        return marked


def _id_taken(function: str, task_id: str) -> Conflict:
    return Conflict(
        f"task {task_id!r} of function {function!r} already exists (no record: task mode is off)"
    )


def describe(doc: Doc, *, with_payload: bool = False) -> dict[str, Any]:
    """A task as the API shows it (contract fields first)."""
    out: dict[str, Any] = {
        "task_id": doc["task_id"],
        "request_id": doc.get("request_id"),
        "function": doc["function"],
        "version": doc.get("version"),
        "status": doc["status"],
        "attempts": doc.get("attempts", 0),
        "approximate_invoke_count": doc.get("invoke_count", 0),
        "created_at": iso(doc.get("created_at")),
        "updated_at": iso(doc.get("updated_at")),
        "due_at": iso(doc.get("due_at")),
        "history": [{"status": h["status"], "at": iso(h["at"])} for h in doc.get("history", [])],
        "timings": doc.get("timings", {}),
        "container": doc.get("container"),
        "destination": doc.get("destination"),
    }
    if "error" in doc and doc["error"] is not None:
        out["error"] = doc["error"]
    if doc.get("result") is not None:
        out["result"] = _payload_view(bytes(doc["result"]), doc.get("result_type"))
        out["result_type"] = doc.get("result_type")
    if with_payload and doc.get("payload") is not None:
        out["payload"] = _payload_view(bytes(doc["payload"]), doc.get("content_type"))
    return out


def _payload_view(data: bytes, content_type: str | None) -> Any:
    import orjson

    if content_type and "json" in content_type:
        try:
            return orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            pass
    return {"base64": base64.b64encode(data).decode()}
