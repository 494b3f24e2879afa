"""Choosing containers: warm reuse, stem cells, counts, eviction and expiry."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.pool import select
from runtime.pool.container import Container, FunctionKey, State

KEY = FunctionKey("acme", "resize", "v1")
OTHER_TENANT = FunctionKey("globex", "resize", "v1")
OTHER_FUNCTION = FunctionKey("acme", "thumbnail", "v1")
OTHER_VERSION = FunctionKey("acme", "resize", "v2")
NOT_READY = [s for s in State if s is not State.READY]

Make = Callable[..., Container]
_names = itertools.count()


@pytest.fixture
def make(tmp_path: Path) -> Make:
    def build(
        state: State,
        key: FunctionKey | None = None,
        *,
        idle_since: float = 0.0,
        memory_mb: int = 256,
    ) -> Container:
        name = f"cell-{next(_names)}"
        return Container(
            name=name,
            cell_dir=tmp_path / name,
            memory_mb=memory_mb,
            state=state,
            key=key,
            idle_since=idle_since,
        )

    return build


# warm


def test_warm_empty_pool() -> None:
    assert select.warm([], KEY) is None


def test_warm_picks_ready_container_of_same_key(make: Make) -> None:
    ready = make(State.READY, KEY)
    assert select.warm([ready], KEY) is ready


@pytest.mark.parametrize(
    "other", [OTHER_TENANT, OTHER_FUNCTION, OTHER_VERSION], ids=["tenant", "function", "version"]
)
def test_warm_never_picks_another_key(make: Make, other: FunctionKey) -> None:
    containers = [make(State.READY, other, idle_since=float(i)) for i in range(3)]
    assert select.warm(containers, KEY) is None


def test_warm_never_picks_an_unbound_container(make: Make) -> None:
    assert select.warm([make(State.READY, None)], KEY) is None


@pytest.mark.parametrize("state", NOT_READY, ids=lambda s: s.value)
def test_warm_never_picks_a_container_that_is_not_ready(make: Make, state: State) -> None:
    assert select.warm([make(state, KEY, idle_since=100.0)], KEY) is None


def test_warm_picks_the_most_recently_idle(make: Make) -> None:
    old = make(State.READY, KEY, idle_since=10.0)
    newest = make(State.READY, KEY, idle_since=30.0)
    middle = make(State.READY, KEY, idle_since=20.0)
    assert select.warm([old, newest, middle], KEY) is newest
    assert select.warm([middle, old, newest], KEY) is newest


def test_warm_in_a_mixed_pool(make: Make) -> None:
    mine = make(State.READY, KEY, idle_since=1.0)
    pool = [
        make(State.READY, OTHER_TENANT, idle_since=50.0),
        make(State.READY, OTHER_FUNCTION, idle_since=50.0),
        make(State.READY, OTHER_VERSION, idle_since=50.0),
        make(State.BUSY, KEY, idle_since=50.0),
        make(State.REMOVING, KEY, idle_since=50.0),
        make(State.STEM, None, idle_since=50.0),
        mine,
    ]
    assert select.warm(pool, KEY) is mine


def test_warm_accepts_any_iterable(make: Make) -> None:
    ready = make(State.READY, KEY)
    assert select.warm(iter([ready]), KEY) is ready


# stem


def test_stem_empty_pool() -> None:
    assert select.stem([], 256) is None


def test_stem_prefers_matching_memory(make: Make) -> None:
    small = make(State.STEM, memory_mb=128)
    match = make(State.STEM, memory_mb=512)
    large = make(State.STEM, memory_mb=1024)
    assert select.stem([small, match, large], 512) is match
    assert select.stem([large, small, match], 512) is match


def test_stem_falls_back_to_another_memory_size(make: Make) -> None:
    first = make(State.STEM, memory_mb=128)
    second = make(State.STEM, memory_mb=1024)
    assert select.stem([first, second], 512) is first


@pytest.mark.parametrize("state", [s for s in State if s is not State.STEM], ids=lambda s: s.value)
def test_stem_only_picks_stem_cells(make: Make, state: State) -> None:
    assert select.stem([make(state, memory_mb=256)], 256) is None


def test_stem_skips_non_stem_with_matching_memory(make: Make) -> None:
    starting = make(State.STARTING, memory_mb=256)
    stem_cell = make(State.STEM, memory_mb=128)
    assert select.stem([starting, stem_cell], 256) is stem_cell


# counts


def test_bound_count(make: Make) -> None:
    pool = [
        make(State.STARTING, KEY),
        make(State.SPECIALISING, KEY),
        make(State.READY, KEY),
        make(State.BUSY, KEY),
        make(State.REMOVING, KEY),
        make(State.READY, OTHER_TENANT),
        make(State.BUSY, OTHER_FUNCTION),
        make(State.READY, OTHER_VERSION),
        make(State.STEM, None),
    ]
    assert select.bound_count(pool, KEY) == 4
    assert select.bound_count(pool, OTHER_VERSION) == 1
    assert select.bound_count([], KEY) == 0


def test_live_count(make: Make) -> None:
    pool = [make(state, KEY) for state in State] + [make(State.STEM), make(State.REMOVING)]
    assert select.live_count(pool) == len(State) - 1 + 1
    assert select.live_count([]) == 0


def test_live_excludes_only_removing() -> None:
    assert set(State) - select.LIVE == {State.REMOVING}


# evictable


def test_evictable_empty_pool() -> None:
    assert select.evictable([], KEY) is None


def test_evictable_picks_least_recently_used_of_another_key(make: Make) -> None:
    newer = make(State.READY, OTHER_FUNCTION, idle_since=20.0)
    oldest = make(State.READY, OTHER_TENANT, idle_since=5.0)
    newest = make(State.READY, OTHER_VERSION, idle_since=30.0)
    assert select.evictable([newer, oldest, newest], KEY) is oldest
    assert select.evictable([newest, newer, oldest], KEY) is oldest


def test_evictable_never_picks_the_same_key(make: Make) -> None:
    mine = make(State.READY, KEY, idle_since=1.0)
    other = make(State.READY, OTHER_VERSION, idle_since=50.0)
    assert select.evictable([mine, other], KEY) is other
    assert select.evictable([mine], KEY) is None


@pytest.mark.parametrize("state", NOT_READY, ids=lambda s: s.value)
def test_evictable_only_picks_ready(make: Make, state: State) -> None:
    assert select.evictable([make(state, OTHER_FUNCTION, idle_since=0.0)], KEY) is None


# expired


def test_expired_respects_keep_alive(make: Make) -> None:
    fresh = make(State.READY, KEY, idle_since=950.0)
    on_the_edge = make(State.READY, KEY, idle_since=900.0)
    stale = make(State.READY, OTHER_FUNCTION, idle_since=899.0)
    very_stale = make(State.READY, OTHER_TENANT, idle_since=0.0)
    result = select.expired([fresh, on_the_edge, stale, very_stale], now=1000.0, keep_alive_s=100.0)
    assert result == [stale, very_stale]


@pytest.mark.parametrize("state", NOT_READY, ids=lambda s: s.value)
def test_expired_only_ready(make: Make, state: State) -> None:
    assert select.expired([make(state, KEY, idle_since=0.0)], now=1000.0, keep_alive_s=1.0) == []


def test_expired_empty_pool() -> None:
    assert select.expired([], now=1000.0, keep_alive_s=1.0) == []


def test_not_running_lists_live_containers_the_engine_does_not_run(make: Make) -> None:
    alive = make(State.READY, KEY)
    died = make(State.BUSY, KEY)
    stem = make(State.STEM)
    creating = make(State.STARTING)  # no docker id yet: not listed by the engine
    started = make(State.STARTING)
    started.docker_id = "abc"
    removing = make(State.REMOVING, KEY)
    running = {alive.name}
    lost = select.not_running([alive, died, stem, creating, started, removing], running)
    assert lost == [died, stem, started]
    assert select.not_running([alive], running) == []
