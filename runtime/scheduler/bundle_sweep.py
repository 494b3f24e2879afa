"""Deletes the bundles in GridFS that no function or kept version references, every
`interval_s` (see BundleStore.sweep): the backstop of collection at upload and delete,
for what a crash between their writes left. Every scheduler runs it; deletes are
idempotent."""

from __future__ import annotations

import asyncio
import logging

from runtime.store.bundles import BundleStore

log = logging.getLogger(__name__)


class BundleSweep:
    def __init__(self, store: BundleStore, interval_s: float) -> None:
        self._store = store
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="bundle-sweep")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                deleted = await self._store.sweep()
                if deleted:
                    log.info("deleted %d unreferenced bundles", deleted)
            except Exception:
                log.exception("sweeping unreferenced bundles failed; will try again")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
