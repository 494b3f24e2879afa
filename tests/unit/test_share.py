"""Sharing a host between tenants (runtime/pool/share.py) and eviction under it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from runtime.pool import select, share
from runtime.pool.container import Container, FunctionKey, State

A1 = FunctionKey("a", "one", "v1")
A2 = FunctionKey("a", "two", "v1")
B = FunctionKey("b", "echo", "v1")
C = FunctionKey("c", "echo", "v1")
HOST = share.Host(budget_mb=1024, max_containers=8)  # 8 containers of 128 MB, either way
_names = itertools.count()


def cell(state: State, key: FunctionKey | None, idle_since: float = 0.0, mb: int = 128) -> Container:
    name = f"cell-{next(_names)}"
    return Container(name=name, cell_dir=Path("/nonexistent") / name, memory_mb=mb, state=state,
                     key=key, idle_since=idle_since)


def fair(requester: str | None, pool: list[Container], host: share.Host = HOST
         ) -> tuple[str | None, dict[str, float], share.Host]:
    return requester, share.held(pool, host), host


def test_a_container_takes_the_larger_of_its_memory_and_its_slot() -> None:
    assert HOST.part(128) == pytest.approx(1 / 8)
    assert HOST.part(512) == pytest.approx(0.5)
    assert share.Host(budget_mb=100_000, max_containers=10).part(128) == pytest.approx(0.1)


def test_held_counts_bound_containers_by_tenant() -> None:
    pool = [cell(State.BUSY, A1), cell(State.READY, A2), cell(State.SPECIALISING, B),
            cell(State.STEM, None), cell(State.REMOVING, B), cell(State.STARTING, B, mb=256)]
    assert share.held(pool, HOST) == pytest.approx({"a": 0.25, "b": 0.375})


def test_equal_share_counts_holders_and_waiters() -> None:
    assert share.equal_share({"a": 0.9}, {}) == 1.0
    assert share.equal_share({"a": 0.9, "b": 0.0}, {"b": 1}) == 0.5
    assert share.equal_share({"a": 0.8, "b": 0.1}, {"c": 2}) == pytest.approx(1 / 3)


def test_a_tenant_alone_never_gives_way() -> None:
    assert not share.gives_way("a", {"a": 1.0}, {})
    assert not share.gives_way("a", {"a": 1.0}, {"a": 5})  # its own waiters


def test_the_tenant_over_its_share_gives_way_to_a_waiter() -> None:
    holding = {"a": 0.8, "b": 0.1}
    assert share.gives_way("a", holding, {"b": 1})
    assert not share.gives_way("b", holding, {"a": 1})
    # Under an equal share, a tenant keeps what it holds even while others wait.
    assert not share.gives_way("a", {"a": 0.4, "b": 0.1}, {"b": 1})


def test_the_cap_holds_a_tenant_alone() -> None:
    assert share.over_cap("a", 0.125, {"a": 0.5}, 0.5)
    assert not share.over_cap("a", 0.125, {"a": 0.375}, 0.5)
    assert not share.over_cap("a", 0.125, {"a": 1.0}, 1.0)


def test_a_bigger_tenant_cannot_evict_a_smaller_ones_warm_container() -> None:
    b_idle = cell(State.READY, B, idle_since=1.0)
    pool = [*(cell(State.BUSY, A1) for _ in range(7)), b_idle]
    # The host is full (8 of 8): A's new container would need B's only container.
    assert select.victims(pool, A2, new=1, memory_mb=128, max_containers=8, budget_mb=1024,
                          fair=fair("a", pool)) is None
    # Without fairness (as before), B's warm container went.
    assert select.victims(pool, A2, new=1, memory_mb=128, max_containers=8, budget_mb=1024) == [
        (b_idle, select.FOR_COUNT)]


def test_a_smaller_tenant_evicts_the_biggest_holders_idle_first() -> None:
    a_idle = [cell(State.READY, A1, idle_since=t) for t in (5.0, 3.0)]
    c_idle = cell(State.READY, C, idle_since=1.0)  # least recently used, but C holds little
    pool = [*(cell(State.BUSY, A2) for _ in range(4)), *a_idle, c_idle, cell(State.BUSY, C)]
    chosen = select.victims(pool, B, new=1, memory_mb=128, max_containers=8, budget_mb=1024,
                            fair=fair("b", pool))
    assert chosen == [(a_idle[1], select.FOR_COUNT)]


def test_the_count_limit_counts_when_memory_is_plenty() -> None:
    host = share.Host(budget_mb=100_000, max_containers=8)
    b_idle = cell(State.READY, B)
    pool = [*(cell(State.BUSY, A1) for _ in range(7)), b_idle]
    assert select.victims(pool, A2, new=1, memory_mb=128, max_containers=8, budget_mb=100_000,
                          fair=fair("a", pool, host)) is None


def test_two_tenants_do_not_take_turns() -> None:
    # A holds 3, B holds 2: B taking one of A's would leave A below B.
    a_idle = cell(State.READY, A1)
    pool = [a_idle, cell(State.BUSY, A1), cell(State.BUSY, A2), cell(State.BUSY, B), cell(State.BUSY, B)]
    host = share.Host(budget_mb=640, max_containers=5)
    assert select.victims(pool, B, new=1, memory_mb=128, max_containers=5, budget_mb=640,
                          fair=fair("b", pool, host)) is None


def test_the_reserve_takes_only_from_the_tenant_holding_the_most() -> None:
    a_idle = cell(State.READY, A1)
    b_idle = cell(State.READY, B)
    pool = [a_idle, *(cell(State.BUSY, A2) for _ in range(5)), b_idle]
    holding = share.held(pool, HOST)
    assert share.may_evict(a_idle, None, holding, 0, HOST)
    assert not share.may_evict(b_idle, None, holding, 0, HOST)
    alone = [a_idle, cell(State.BUSY, A2)]
    assert share.may_evict(a_idle, None, share.held(alone, HOST), 0, HOST)


def test_a_warm_container_its_own_function_waits_for_is_not_evicted() -> None:
    # A released container of A1 while an acquire of A1 waits: it will be taken warm in
    # a moment, so A2's start must not evict it (two cold starts for one warm one).
    a1_idle = cell(State.READY, A1)
    pool = [a1_idle, *(cell(State.BUSY, A2) for _ in range(7))]
    assert select.victims(pool, A2, new=1, memory_mb=128, max_containers=8, budget_mb=1024,
                          fair=fair("a", pool), wanted={A1: 1}) is None
    assert select.victims(pool, A2, new=1, memory_mb=128, max_containers=8, budget_mb=1024,
                          fair=fair("a", pool), wanted={}) == [(a1_idle, select.FOR_COUNT)]
