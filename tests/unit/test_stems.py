"""The stem-cell policy: target growth on cold starts, shrinking when idle, the split by memory size."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime.pool.stems import RECENT_CLAIMS, StemPolicy, split
from runtime.settings import SettingsError, load_settings
from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(500.0)


def policy(
    clock: Clock, initial: int = 4, minimum: int = 1, maximum: int = 8, idle_s: float = 60.0
) -> StemPolicy:
    return StemPolicy(
        initial=initial, minimum=minimum, maximum=maximum, default_mb=128, idle_s=idle_s, clock=clock
    )


# split


def test_split_in_proportion() -> None:
    assert split(4, {128: 1, 256: 1}) == {128: 2, 256: 2}
    assert split(4, {128: 3, 256: 1}) == {128: 3, 256: 1}
    assert split(8, {128: 1}) == {128: 8}


def test_split_gives_the_remainder_to_the_largest_fraction() -> None:
    assert split(3, {128: 5, 256: 3, 512: 2}) == {128: 1, 256: 1, 512: 1}  # 1.5, 0.9, 0.6
    assert split(3, {128: 6, 256: 3, 512: 1}) == {128: 2, 256: 1}  # 1.8, 0.9, 0.3
    assert split(5, {128: 1, 256: 1}) == {128: 3, 256: 2}  # a tie: the smaller size


def test_split_of_nothing() -> None:
    assert split(0, {128: 3}) == {}
    assert split(3, {}) == {}


@pytest.mark.parametrize("total", range(1, 12))
def test_split_always_adds_up(total: int) -> None:
    assert sum(split(total, {128: 7, 256: 3, 512: 1, 1024: 2}).values()) == total


# the target


def test_starts_at_the_initial_size_within_bounds(clock: Clock) -> None:
    assert policy(clock, initial=4).target == 4
    assert policy(clock, initial=20, maximum=8).target == 8
    assert policy(clock, initial=1, minimum=2).target == 2


def test_zero_turns_stem_cells_off(clock: Clock) -> None:
    p = policy(clock, initial=0, minimum=1, maximum=8)
    assert (p.target, p.minimum, p.maximum) == (0, 0, 0)
    p.on_claim(128, found=False)
    assert p.target == 0
    assert p.to_start({}, free_slots=10, free_mb=10_000) == []


def test_cold_starts_grow_the_target_up_to_the_maximum(clock: Clock) -> None:
    p = policy(clock, initial=2, maximum=5)
    p.on_claim(128, found=True)
    assert p.target == 2  # a claim that found a stem cell: the stock did its job
    for expected in (3, 4, 5, 5, 5):
        p.on_claim(128, found=False)
        assert p.target == expected


def test_shrinks_by_one_per_quiet_period_down_to_the_minimum(clock: Clock) -> None:
    p = policy(clock, initial=4, minimum=2, idle_s=60)
    clock.now += 59
    assert not p.tick() and p.target == 4
    clock.now += 1
    assert p.tick() and p.target == 3
    assert not p.tick()  # the next step waits another quiet period
    clock.now += 30
    p.on_claim(128, found=True)  # a claim restarts the quiet period
    clock.now += 59
    assert not p.tick() and p.target == 3
    clock.now += 1
    assert p.tick() and p.target == 2
    clock.now += 600
    assert not p.tick() and p.target == 2


# sizes


def test_sizes_default_before_any_claim(clock: Clock) -> None:
    assert policy(clock, initial=3).sizes() == {128: 3}


def test_sizes_follow_recent_claims(clock: Clock) -> None:
    p = policy(clock, initial=4)
    for _ in range(3):
        p.on_claim(256, found=True)
    p.on_claim(128, found=True)
    assert p.sizes() == {256: 3, 128: 1}


def test_only_recent_claims_count(clock: Clock) -> None:
    p = policy(clock, initial=4)
    for _ in range(RECENT_CLAIMS):
        p.on_claim(128, found=True)
    for _ in range(RECENT_CLAIMS):
        p.on_claim(512, found=True)
    assert p.sizes() == {512: 4}


def test_to_start_fills_the_sizes_short_of_their_share(clock: Clock) -> None:
    p = policy(clock, initial=4)
    p.on_claim(256, found=True)
    p.on_claim(128, found=True)
    # Wanted: 2 x 128, 2 x 256; there are 3 x 128 (the claimed 256 one was a 128 cell).
    assert p.to_start(Counter({128: 3}), free_slots=10, free_mb=10_000) == [256]
    assert p.to_start(Counter({128: 1}), free_slots=10, free_mb=10_000) == [256, 128, 256]
    assert p.to_start(Counter({128: 2, 256: 2}), free_slots=10, free_mb=10_000) == []


def test_to_start_with_the_wrong_mix_starts_only_what_is_missing(clock: Clock) -> None:
    p = policy(clock, initial=2)
    p.on_claim(512, found=True)
    assert p.to_start(Counter({128: 2}), free_slots=10, free_mb=10_000) == []
    assert p.to_start(Counter({128: 1}), free_slots=10, free_mb=10_000) == [512]


def test_to_start_stays_within_the_free_room(clock: Clock) -> None:
    p = policy(clock, initial=4)
    p.on_claim(512, found=True)
    p.on_claim(128, found=True)
    assert p.to_start({}, free_slots=1, free_mb=10_000) == [128]
    assert p.to_start({}, free_slots=10, free_mb=900) == [128, 512, 128]
    assert p.to_start({}, free_slots=10, free_mb=100) == []


def test_surplus_takes_from_the_sizes_above_their_share(clock: Clock) -> None:
    p = policy(clock, initial=2)
    p.on_claim(256, found=True)
    assert p.surplus(Counter({128: 2, 256: 2})) == [128, 128]
    assert p.surplus(Counter({256: 3})) == [256]
    assert p.surplus(Counter({128: 1, 256: 1})) == []
    assert p.surplus({}) == []


def test_stats(clock: Clock) -> None:
    p = policy(clock, initial=3, minimum=1, maximum=8)
    assert p.stats() == {"target": 3, "min": 1, "max": 8, "sizes": {"128": 3}}


def test_from_settings() -> None:
    settings = load_settings(stem_cells=3, stem_cells_min=2, stem_cells_max=6, stem_memory_mb=256)
    p = StemPolicy.from_settings(settings)
    assert (p.target, p.minimum, p.maximum, p.sizes()) == (3, 2, 6, {256: 3})


def test_a_maximum_below_the_minimum_is_refused() -> None:
    with pytest.raises(SettingsError, match="FNHOST_STEM_CELLS_MAX"):
        load_settings(stem_cells_min=4, stem_cells_max=2)
