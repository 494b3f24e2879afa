"""Bundles unpacked on this host, one folder per (tenant, content hash)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.bundles import BundleLimits, unpack_bundle
from runtime.settings import Settings
from runtime.store.functions import FunctionStore


class BundleCache:
    def __init__(self, settings: Settings, store: FunctionStore) -> None:
        self._root = settings.data_dir / "bundles"
        self._store = store
        self._limits = BundleLimits(
            max_bytes=settings.bundle_max_bytes,
            max_unpacked_bytes=settings.bundle_max_unpacked_bytes,
            max_entries=settings.bundle_max_entries,
        )
        self._inflight: dict[Path, asyncio.Task[Path]] = {}

    def path(self, tenant: str, sha256: str) -> Path:
        return self._root / tenant / sha256

    async def ensure(self, tenant: str, sha256: str) -> Path:
        """The unpacked bundle's folder, fetching it from GridFS once when missing."""
        dest = self.path(tenant, sha256)
        if dest.is_dir():
            return dest
        task = self._inflight.get(dest)
        if task is None:
            task = asyncio.create_task(self._fetch(tenant, sha256, dest))
            self._inflight[dest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(dest, None))
        return await asyncio.shield(task)

    async def _fetch(self, tenant: str, sha256: str, dest: Path) -> Path:
        data = await self._store.load_bundle(tenant, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(unpack_bundle, data, dest, self._limits)
        return dest
