"""The scheduler's bundle cache: least-recently-used eviction by size, never a bundle
a live container serves; over a fake bundle store and a temporary data folder."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import IO, cast

import pytest

from runtime.errors import NotFound
from runtime.scheduler.bundle_cache import BundleCache, Cached, evictions
from runtime.settings import MB, Settings
from runtime.store.bundles import BundleStore

# -- the policy ------------------------------------------------------------------


def entries(**sizes_and_uses: tuple[int, float]) -> dict[str, Cached]:
    return {key: Cached(size, used) for key, (size, used) in sizes_and_uses.items()}


def test_nothing_evicted_under_the_bound() -> None:
    assert evictions(entries(a=(10, 1), b=(10, 2)), 20, lambda k: False) == []


def test_least_recently_used_go_first_until_under_the_bound() -> None:
    found = entries(a=(10, 3), b=(10, 1), c=(10, 2), d=(10, 4))
    assert evictions(found, 25, lambda k: False) == ["b", "c"]


def test_needed_entries_are_skipped_and_the_next_oldest_goes() -> None:
    found = entries(a=(10, 3), b=(10, 1), c=(10, 2), d=(10, 4))
    assert evictions(found, 25, lambda k: k == "b") == ["c", "a"]


def test_the_total_stays_over_when_everything_is_needed() -> None:
    assert evictions(entries(a=(10, 1), b=(10, 2)), 5, lambda k: True) == []


def test_one_large_entry_frees_enough() -> None:
    found = entries(big=(100, 1), small=(1, 0))
    assert evictions(found, 50, lambda k: k == "small") == ["big"]


# -- the cache -------------------------------------------------------------------


def bundle(marker: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("main.py", f"def handler(e, c):\n    return {marker!r}\n")
        zf.writestr("blob.bin", os.urandom(size))
    return buffer.getvalue()


class FakeBundles:
    """Serves zips from a dict and counts downloads."""

    def __init__(self) -> None:
        self.zips: dict[tuple[str, str], bytes] = {}
        self.loads = 0

    def add(self, tenant: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.zips[(tenant, sha)] = data
        return sha

    async def load(self, tenant: str, sha256: str, dest: IO[bytes]) -> None:
        self.loads += 1
        if (tenant, sha256) not in self.zips:
            raise NotFound("no such bundle")
        dest.write(self.zips[(tenant, sha256)])


def folder_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store() -> FakeBundles:
    return FakeBundles()


def cache(tmp_path: Path, store: FakeBundles, mb: int, serving: set[tuple[str, str]]) -> BundleCache:
    settings = Settings(data_dir=tmp_path, bundle_cache_mb=mb)
    return BundleCache(
        settings, cast(BundleStore, store), in_use=lambda t, v: (t, v) in serving
    )


async def test_cache_stays_under_its_bound_evicting_the_least_recently_used(
    tmp_path: Path, store: FakeBundles
) -> None:
    shas = [store.add("acme", bundle(f"v{i}", MB // 2)) for i in range(6)]
    bundles = cache(tmp_path, store, 2, set())
    for sha in shas[:3]:
        await bundles.ensure("acme", sha)
    await bundles.ensure("acme", shas[0])  # used again: now the most recent
    for sha in shas[3:]:
        await bundles.ensure("acme", sha)
        assert folder_size(tmp_path / "bundles") <= 2 * MB
        assert bundles.size <= 2 * MB
    kept = {p.name for p in (tmp_path / "bundles" / "acme").iterdir()}
    # v1 and v2 were the least recently used; v0 was asked for again after them.
    assert shas[1] not in kept and shas[2] not in kept
    assert shas[5] in kept and shas[4] in kept
    assert bundles.evicted >= 3
    # An evicted bundle comes back from the store when asked for.
    loads = store.loads
    path = await bundles.ensure("acme", shas[1])
    assert (path / "main.py").read_text().endswith("'v1'\n")
    assert store.loads == loads + 1


async def test_a_bundle_a_live_container_serves_is_never_evicted(
    tmp_path: Path, store: FakeBundles
) -> None:
    shas = [store.add("acme", bundle(f"v{i}", MB // 2)) for i in range(5)]
    serving = {("acme", shas[0][:12])}
    bundles = cache(tmp_path, store, 1, serving)
    for sha in shas:
        await bundles.ensure("acme", sha)
    kept = {p.name for p in (tmp_path / "bundles" / "acme").iterdir()}
    assert shas[0] in kept  # the oldest, but served
    assert shas[4] in kept  # the newest, just fetched
    assert not kept & set(shas[1:4])


async def test_a_restarted_scheduler_knows_what_is_on_its_disk(
    tmp_path: Path, store: FakeBundles
) -> None:
    shas = [store.add("acme", bundle(f"v{i}", MB // 2)) for i in range(3)]
    first = cache(tmp_path, store, 4, set())
    for sha in shas:
        await first.ensure("acme", sha)
    (tmp_path / "bundles" / "acme" / ".leftover.tmp-1").mkdir()
    second = cache(tmp_path, store, 1, set())
    assert second.size >= 3 * (MB // 2)
    assert not (tmp_path / "bundles" / "acme" / ".leftover.tmp-1").exists()
    loads = store.loads
    await second.ensure("acme", shas[2])  # on disk: no download
    assert store.loads == loads
    new = store.add("acme", bundle("v3", MB // 2))
    await second.ensure("acme", new)
    assert folder_size(tmp_path / "bundles") <= 1 * MB
