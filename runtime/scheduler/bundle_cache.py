"""Bundles unpacked on this host, one folder per (tenant, content hash).

Their total size is bounded: past it, the least recently used folders are
deleted, except those of a version a live container is bound to (its code
folder is linked from the bundle's while it specialises; the container serves
that version until it is removed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from runtime.bundles import BundleLimits, unpack_bundle
from runtime.settings import MB, Settings
from runtime.store.bundles import BundleStore

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass
class Cached:
    size: int  # bytes of its files
    used: float  # when last asked for (time.time())


def evictions(entries: Mapping[K, Cached], bound: int, keep: Callable[[K], bool]) -> list[K]:
    """The least recently used entries to delete so that the rest add up to at most
    `bound` bytes, skipping those `keep` says are needed (the total may then stay over)."""
    total = sum(entry.size for entry in entries.values())
    chosen: list[K] = []
    for key in sorted(entries, key=lambda k: entries[k].used):
        if total <= bound:
            break
        if keep(key):
            continue
        chosen.append(key)
        total -= entries[key].size
    return chosen


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def _prepare(dest: Path) -> bool:
    """Make `dest`'s parent; whether `dest` is already there (an earlier unpack)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.is_dir()


class BundleCache:
    def __init__(
        self,
        settings: Settings,
        store: BundleStore,
        in_use: Callable[[str, str], bool] = lambda tenant, version: False,
    ) -> None:
        self._root = settings.data_dir / "bundles"
        self._store = store
        self._in_use = in_use  # (tenant, version) -> a live container serves it
        self._bound = settings.bundle_cache_mb * MB
        self._limits = BundleLimits(
            max_bytes=settings.bundle_max_bytes,
            max_unpacked_bytes=settings.bundle_max_unpacked_bytes,
            max_entries=settings.bundle_max_entries,
        )
        self._inflight: dict[Path, asyncio.Task[Path]] = {}
        self._entries: dict[Path, Cached] = self._scan()
        self.evicted = 0

    def path(self, tenant: str, sha256: str) -> Path:
        return self._root / tenant / sha256

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    async def ensure(self, tenant: str, sha256: str) -> Path:
        """The unpacked bundle's folder, fetching it from GridFS once when missing."""
        dest = self.path(tenant, sha256)
        entry = self._entries.get(dest)
        if entry is not None and dest.is_dir():
            entry.used = time.time()
            return dest
        task = self._inflight.get(dest)
        if task is None:
            task = asyncio.create_task(self._fetch(tenant, sha256, dest))
            self._inflight[dest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(dest, None))
        return await asyncio.shield(task)

    async def _fetch(self, tenant: str, sha256: str, dest: Path) -> Path:
        if not await asyncio.to_thread(_prepare, dest):
            # Downloaded to a file, never held whole in memory.
            with tempfile.TemporaryFile(dir=self._root, prefix=".download-") as spool:
                await self._store.load(tenant, sha256, spool)
                await asyncio.to_thread(unpack_bundle, spool, dest, self._limits)
        size = await asyncio.to_thread(tree_size, dest)
        self._entries[dest] = Cached(size, time.time())
        await self._evict(dest)
        return dest

    async def _evict(self, fetched: Path) -> None:
        def keep(path: Path) -> bool:
            tenant, sha256 = path.parent.name, path.name
            return (
                path == fetched
                or path in self._inflight
                or self._in_use(tenant, sha256[:12])
            )

        for path in evictions(self._entries, self._bound, keep):
            del self._entries[path]
            # Renamed at once (no later ensure() finds it half deleted), deleted off the loop.
            trash = path.parent / f".evicted-{path.name}-{secrets.token_hex(4)}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            await asyncio.to_thread(shutil.rmtree, trash, True)
            self.evicted += 1
            log.info("evicted bundle %s/%s from the cache", path.parent.name, path.name[:12])

    def _scan(self) -> dict[Path, Cached]:
        """What an earlier run left here; leftovers of unfinished work are deleted."""
        found: dict[Path, Cached] = {}
        if not self._root.is_dir():
            return found
        for item in self._root.iterdir():
            if not item.is_dir():
                if item.name.startswith("."):
                    item.unlink(missing_ok=True)
                continue
            for folder in item.iterdir():
                if folder.name.startswith("."):
                    shutil.rmtree(folder, ignore_errors=True)
                elif folder.is_dir():
                    found[folder] = Cached(tree_size(folder), folder.stat().st_mtime)
        return found
