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


# victims: what to evict so a new container fits


def room(containers: list[Container], *, new: int = 1, memory_mb: int = 256, max_containers: int = 100,
         budget_mb: int = 100_000, spare: Container | None = None) -> list[tuple[Container, str]] | None:
    return select.victims(
        containers, KEY, new=new, memory_mb=memory_mb, max_containers=max_containers,
        budget_mb=budget_mb, spare=spare,
    )


def test_victims_none_needed_when_it_fits(make: Make) -> None:
    pool = [make(State.READY, OTHER_FUNCTION), make(State.STEM)]
    assert room(pool, max_containers=3, budget_mb=768) == []
    assert room([], max_containers=1, budget_mb=256) == []


def test_victims_empty_pool_that_cannot_fit() -> None:
    assert room([], budget_mb=100) is None


def test_victims_by_count_pick_the_least_recently_used_of_another_key(make: Make) -> None:
    newer = make(State.READY, OTHER_FUNCTION, idle_since=20.0)
    oldest = make(State.READY, OTHER_TENANT, idle_since=5.0)
    newest = make(State.READY, OTHER_VERSION, idle_since=30.0)
    assert room([newer, oldest, newest], max_containers=3) == [(oldest, select.FOR_COUNT)]
    assert room([newest, newer, oldest], max_containers=3) == [(oldest, select.FOR_COUNT)]
    assert room([newest, newer, oldest], max_containers=2) == [
        (oldest, select.FOR_COUNT), (newer, select.FOR_COUNT),
    ]


def test_victims_never_the_same_key(make: Make) -> None:
    mine = make(State.READY, KEY, idle_since=1.0)
    other = make(State.READY, OTHER_VERSION, idle_since=50.0)
    assert room([mine, other], max_containers=2) == [(other, select.FOR_COUNT)]
    assert room([mine], max_containers=1) is None


IN_USE = [State.STARTING, State.SPECIALISING, State.BUSY]


@pytest.mark.parametrize("state", IN_USE, ids=lambda s: s.value)
def test_victims_never_a_container_in_use(make: Make, state: State) -> None:
    assert room([make(state, OTHER_FUNCTION, idle_since=0.0)], max_containers=1) is None
    assert room([make(state, None, idle_since=0.0)], budget_mb=300) is None


def test_victims_never_a_container_being_removed(make: Make) -> None:
    removing = make(State.REMOVING, OTHER_FUNCTION, idle_since=0.0)
    ready = make(State.READY, OTHER_FUNCTION, idle_since=5.0)
    assert room([removing, ready], max_containers=1) == [(ready, select.FOR_COUNT)]
    assert room([removing], max_containers=1, budget_mb=256) == []  # it takes no room


def test_victims_by_memory_until_it_fits(make: Make) -> None:
    old = make(State.READY, OTHER_FUNCTION, idle_since=1.0, memory_mb=128)
    mid = make(State.READY, OTHER_TENANT, idle_since=2.0, memory_mb=512)
    new = make(State.READY, OTHER_VERSION, idle_since=3.0, memory_mb=1024)
    busy = make(State.BUSY, OTHER_FUNCTION, memory_mb=1024)
    pool = [new, busy, mid, old]  # 2688 MB in use
    # 1024 more within 3072: 640 MB must go, the least recently used first.
    assert room(pool, memory_mb=1024, budget_mb=3072) == [
        (old, select.FOR_MEMORY), (mid, select.FOR_MEMORY),
    ]
    assert room(pool, memory_mb=1024, budget_mb=3712) == []
    # Even with every idle one gone it would not fit: none goes.
    assert room(pool, memory_mb=2048, budget_mb=3000) is None


def test_victims_count_then_memory(make: Make) -> None:
    first = make(State.READY, OTHER_FUNCTION, idle_since=1.0, memory_mb=128)
    second = make(State.READY, OTHER_TENANT, idle_since=2.0, memory_mb=128)
    third = make(State.READY, OTHER_VERSION, idle_since=3.0, memory_mb=512)
    chosen = room([first, second, third], memory_mb=512, max_containers=3, budget_mb=640)
    assert chosen == [
        (first, select.FOR_COUNT), (second, select.FOR_MEMORY), (third, select.FOR_MEMORY),
    ]


def test_victims_take_idle_stem_cells_after_warm_ones_largest_first(make: Make) -> None:
    warm_one = make(State.READY, OTHER_FUNCTION, idle_since=100.0, memory_mb=128)
    small = make(State.STEM, memory_mb=128)
    large = make(State.STEM, memory_mb=512)
    starting = make(State.STARTING, memory_mb=512)
    pool = [small, large, warm_one, starting]  # 1280 MB
    assert room(pool, memory_mb=256, budget_mb=1420) == [(warm_one, select.FOR_MEMORY)]
    assert room(pool, memory_mb=256, budget_mb=1200) == [
        (warm_one, select.FOR_MEMORY), (large, select.FOR_MEMORY),
    ]


def test_victims_spare_the_stem_cell_being_claimed(make: Make) -> None:
    claimed = make(State.STEM, memory_mb=128)
    other = make(State.STEM, memory_mb=128)
    # Resizing the claimed cell from 128 to 512 MB: 384 MB more, no new container.
    assert room([claimed, other], new=0, memory_mb=384, budget_mb=512, spare=claimed) == [
        (other, select.FOR_MEMORY),
    ]
    assert room([claimed], new=0, memory_mb=384, budget_mb=256, spare=claimed) is None


def test_memory_in_use_counts_live_containers(make: Make) -> None:
    pool = [make(state, KEY, memory_mb=100) for state in State] + [make(State.STEM, memory_mb=1000)]
    assert select.memory_in_use(pool) == 100 * (len(State) - 1) + 1000
    assert select.memory_in_use([]) == 0


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


# the stem-cell reserve: idle warm containers give way to it


def test_reclaimable_are_ready_ones_idle_long_enough_least_recent_first(make: Make) -> None:
    old = make(State.READY, OTHER_FUNCTION, idle_since=5.0)
    older = make(State.READY, KEY, idle_since=1.0)
    fresh = make(State.READY, OTHER_TENANT, idle_since=9.5)
    others = [make(state, OTHER_VERSION, idle_since=0.0) for state in State if state is not State.READY]
    assert select.reclaimable([old, fresh, *others, older], idle_before=8.0) == [older, old]
    assert select.reclaimable([fresh], idle_before=8.0) == []


def test_victims_for_the_reserve_spare_stem_cells_and_recent_containers(make: Make) -> None:
    stem = make(State.STEM, None, memory_mb=128)
    recent = make(State.READY, OTHER_FUNCTION, idle_since=9.0, memory_mb=128)
    idle = make(State.READY, KEY, idle_since=1.0, memory_mb=128)
    pool = [stem, recent, idle]
    chosen = select.victims(pool, None, new=1, memory_mb=128, max_containers=3, budget_mb=10_000,
                            stems=False, idle_before=8.0)
    assert chosen == [(idle, select.FOR_COUNT)]  # of any function, KEY's too (key None)
    # Two more: only one container may go (the stem cell and the recent one stay).
    assert select.victims(pool, None, new=2, memory_mb=256, max_containers=3, budget_mb=10_000,
                          stems=False, idle_before=8.0) is None


def test_a_start_is_slow_per_start_not_per_burst() -> None:
    from runtime.pool.pool import slow_start

    assert slow_start(1500, 1, 1000)
    assert not slow_start(900, 1, 1000)
    assert not slow_start(8000, 10, 1000)  # ten at once: 800 ms each
    assert slow_start(12000, 10, 1000)
    assert slow_start(1500, 0, 1000)  # never divided by zero
