"""The stem-cell policy: target growth on cold starts, shrinking when idle, the split by memory size."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime.pool.stems import PEAK_WINDOW_S, RECENT_CLAIMS, StemPolicy, split
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
    p.on_claim(128)
    p.expect(128, 20)
    assert p.target == 0
    assert p.to_start({}, free_slots=10, free_mb=10_000) == []


def claims_apart(p: StemPolicy, clock: Clock, memory_mb: int, count: int) -> None:
    """`count` claims, each after the last one's burst is over."""
    for _ in range(count):
        clock.now += PEAK_WINDOW_S + 0.1
        p.on_claim(memory_mb)


def test_a_burst_raises_the_target_to_its_concurrency(clock: Clock) -> None:
    p = policy(clock, initial=2, maximum=5)
    p.on_claim(128)
    assert p.target == 2  # one claim: the stock did its job
    clock.now += PEAK_WINDOW_S / 2
    p.on_claim(128)
    p.on_claim(128)
    assert p.target == 3  # three claims within the window: a burst of three
    for _ in range(5):
        p.on_claim(128)
    assert p.target == 5  # up to the maximum only


def test_claims_further_apart_than_a_burst_do_not_add_up(clock: Clock) -> None:
    p = policy(clock, initial=2, maximum=8)
    claims_apart(p, clock, 128, 10)
    assert p.target == 2
    clock.now += PEAK_WINDOW_S + 0.1
    p.on_claim(128)
    clock.now += PEAK_WINDOW_S / 2
    p.on_claim(128)
    p.on_claim(128)
    assert p.target == 3
    clock.now += PEAK_WINDOW_S * 0.6  # the first of the three has left the window
    p.on_claim(128)
    assert p.target == 3


def test_a_deployed_function_reserves_its_max_concurrency(clock: Clock) -> None:
    p = policy(clock, initial=2, maximum=32)
    p.expect(256, 20)
    assert p.target == 20
    assert p.sizes() == {256: 20}  # its memory size, before it claimed anything
    p.expect(128, 4)
    assert p.target == 20  # a smaller function does not lower it
    p.expect(128, 500)
    assert p.target == 32


def test_expecting_restarts_the_quiet_period(clock: Clock) -> None:
    p = policy(clock, initial=4, minimum=1, idle_s=60)
    clock.now += 59
    p.expect(128, 4)
    clock.now += 59
    assert not p.tick() and p.target == 4


def test_shrinks_by_one_per_quiet_period_down_to_the_minimum(clock: Clock) -> None:
    p = policy(clock, initial=4, minimum=2, idle_s=60)
    clock.now += 59
    assert not p.tick() and p.target == 4
    clock.now += 1
    assert p.tick() and p.target == 3
    assert not p.tick()  # the next step waits another quiet period
    clock.now += 30
    p.on_claim(128)  # a claim restarts the quiet period
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
    claims_apart(p, clock, 256, 3)
    claims_apart(p, clock, 128, 1)
    assert p.sizes() == {256: 3, 128: 1}


def test_only_recent_claims_count(clock: Clock) -> None:
    p = policy(clock, initial=4)
    claims_apart(p, clock, 128, RECENT_CLAIMS)
    claims_apart(p, clock, 512, RECENT_CLAIMS)
    assert p.sizes() == {512: 4}


def test_to_start_fills_the_sizes_short_of_their_share(clock: Clock) -> None:
    p = policy(clock, initial=4)
    p.on_claim(256)
    p.on_claim(128)
    # Wanted: 2 x 128, 2 x 256; there are 3 x 128 (the claimed 256 one was a 128 cell).
    assert p.to_start(Counter({128: 3}), free_slots=10, free_mb=10_000) == [256]
    assert p.to_start(Counter({128: 1}), free_slots=10, free_mb=10_000) == [256, 128, 256]
    assert p.to_start(Counter({128: 2, 256: 2}), free_slots=10, free_mb=10_000) == []


def test_to_start_with_the_wrong_mix_starts_only_what_is_missing(clock: Clock) -> None:
    p = policy(clock, initial=2)
    p.on_claim(512)
    assert p.to_start(Counter({128: 2}), free_slots=10, free_mb=10_000) == []
    assert p.to_start(Counter({128: 1}), free_slots=10, free_mb=10_000) == [512]


def test_to_start_stays_within_the_free_room(clock: Clock) -> None:
    p = policy(clock, initial=4)
    p.on_claim(512)
    p.on_claim(128)
    assert p.to_start({}, free_slots=1, free_mb=10_000) == [128]
    assert p.to_start({}, free_slots=10, free_mb=900) == [128, 512, 128]
    assert p.to_start({}, free_slots=10, free_mb=100) == []


def test_surplus_takes_from_the_sizes_above_their_share(clock: Clock) -> None:
    p = policy(clock, initial=2)
    p.on_claim(256)
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
