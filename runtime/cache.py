"""Function metadata cached in every gateway and scheduler.

Entries are dropped when the control bus says a function changed. A sync
invocation also carries the function's revision, so a scheduler that has not
yet seen the broadcast refetches instead of running a stale version.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from runtime import constants as c
from runtime.store.functions import FunctionRecord, FunctionStore


class FunctionCache:
    def __init__(self, store: FunctionStore, max_entries: int = 10000) -> None:
        self._store = store
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], FunctionRecord] = OrderedDict()
        # Bumped on every invalidation: a fetch that started before it must not
        # put its (possibly stale) record back.
        self._generation = 0

    async def get(self, tenant: str, name: str, min_revision: int = 0) -> FunctionRecord | None:
        key = (tenant, name)
        record = self._entries.get(key)
        if record is not None and record.revision >= min_revision:
            return record
        generation = self._generation
        record = await self._store.get(tenant, name)
        if record is None:
            self._entries.pop(key, None)
        elif generation == self._generation:
            self.put(record)
        return record

    def put(self, record: FunctionRecord) -> None:
        key = (record.tenant, record.name)
        current = self._entries.get(key)
        if current is not None and current.revision > record.revision:
            return
        self._entries[key] = record
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, tenant: str, name: str) -> None:
        self._generation += 1
        self._entries.pop((tenant, name), None)

    def on_control(self, event: dict[str, Any]) -> None:
        if event.get("kind") == c.CTL_FUNCTION:
            self.invalidate(str(event["tenant"]), str(event["name"]))
        elif event.get("kind") == c.CTL_ROUTE:
            self.invalidate(str(event["tenant"]), str(event["function"]))
        elif event.get("kind") == c.CTL_RESYNC:
            # Back from a broker outage: invalidations may have been missed.
            self._generation += 1
            self._entries.clear()
