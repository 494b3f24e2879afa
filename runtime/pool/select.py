"""Choosing containers: pure functions over the pool's containers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from runtime.pool import share
from runtime.pool.container import Container, FunctionKey, State

LIVE = frozenset({State.STARTING, State.STEM, State.SPECIALISING, State.READY, State.BUSY})


def warm(containers: Iterable[Container], key: FunctionKey) -> Container | None:
    """The most recently used READY container of exactly this function version.

    Most recent first keeps a small set hot and lets the rest idle out.
    """
    best: Container | None = None
    for container in containers:
        if container.state is State.READY and container.key == key:
            if best is None or container.idle_since > best.idle_since:
                best = container
    return best


def stem(containers: Iterable[Container], memory_mb: int) -> Container | None:
    """An idle stem cell, preferring one already started with this memory size."""
    fallback: Container | None = None
    for container in containers:
        if container.state is State.STEM:
            if container.memory_mb == memory_mb:
                return container
            fallback = fallback or container
    return fallback


def bound_count(containers: Iterable[Container], key: FunctionKey) -> int:
    """Containers that hold (or are becoming) an instance of this function version."""
    return sum(1 for c in containers if c.key == key and c.state in LIVE)


def live_count(containers: Iterable[Container]) -> int:
    return sum(1 for c in containers if c.state in LIVE)


def memory_in_use(containers: Iterable[Container]) -> int:
    """The memory limits of the live containers, in MB (stem cells included)."""
    return sum(c.memory_mb for c in containers if c.state in LIVE)


# Why a container was evicted: the host's container count, or its memory budget.
FOR_COUNT = "count"
FOR_MEMORY = "memory"


def victims(
    containers: Iterable[Container],
    key: FunctionKey | None,
    *,
    new: int,
    memory_mb: int,
    max_containers: int,
    budget_mb: int,
    spare: Container | None = None,
    stems: bool = True,
    idle_before: float | None = None,
    fair: tuple[str | None, Mapping[str, float], share.Host] | None = None,
    wanted: Mapping[FunctionKey, int] | None = None,
) -> list[tuple[Container, str]] | None:
    """Idle containers to remove so that `new` more containers and `memory_mb` more MB
    fit within `max_containers` and `budget_mb`, each with the reason it goes; None
    when removing every idle one would still not make room (then none should go).

    READY containers of other function versions (`key`; None: of any function) go
    first, least recently used first, and only those idle since before `idle_before`
    when it is given; then, if `stems`, idle stem cells, largest first (the refill
    starts them again when there is room). `spare`, the stem cell being claimed, is
    never chosen. With `fair` (the requesting tenant, or None for the stem-cell
    reserve; each tenant's part of the host; the host), the tenants holding the most
    give way first, and a container goes only as runtime/pool/share.py `may_evict` allows.
    A warm container of a function in `wanted` (one with acquires waiting, which will
    take it in a moment) is never chosen: evicting it would trade a warm start for two
    cold ones.
    """
    items = list(containers)
    count = live_count(items) + new
    memory = memory_in_use(items) + memory_mb
    holding = defaultdict(float, fair[1] if fair is not None else {})
    warm_ones = sorted(
        (c for c in items if c.state is State.READY and c.key != key
         and (idle_before is None or c.idle_since < idle_before)
         and (wanted is None or c.key not in wanted)),
        key=lambda c: (-holding[c.key.tenant] if c.key else 0, c.idle_since),
    )
    stem_cells = sorted(
        (c for c in items if stems and c.state is State.STEM and c is not spare),
        key=lambda c: -c.memory_mb,
    )
    chosen: list[tuple[Container, str]] = []
    for victim in [*warm_ones, *stem_cells]:
        if count <= max_containers and memory <= budget_mb:
            break
        if fair is not None and victim.key is not None:
            requester, _, host = fair
            need = host.part(memory_mb, new) if new else memory_mb / max(1, host.budget_mb)
            if not share.may_evict(victim, requester, holding, need, host):
                continue
            holding[victim.key.tenant] -= host.part(victim.memory_mb)
        chosen.append((victim, FOR_COUNT if count > max_containers else FOR_MEMORY))
        count -= 1
        memory -= victim.memory_mb
    if count > max_containers or memory > budget_mb:
        return None
    return chosen


def reclaimable(containers: Iterable[Container], idle_before: float) -> list[Container]:
    """READY containers idle since before `idle_before`, least recently used first: those
    that give way to the stem-cell reserve."""
    return sorted(
        (c for c in containers if c.state is State.READY and c.idle_since < idle_before),
        key=lambda c: c.idle_since,
    )


def expired(containers: Iterable[Container], now: float, keep_alive_s: float) -> list[Container]:
    """READY containers idle for longer than the keep-alive period."""
    return [
        c for c in containers if c.state is State.READY and now - c.idle_since > keep_alive_s
    ]


def not_running(containers: Iterable[Container], running: set[str]) -> list[Container]:
    """Containers the pool holds that the engine does not run (by cell name): they died
    or were removed behind the pool's back. One still being created is not listed yet."""
    return [
        c for c in containers
        if c.state in LIVE and c.name not in running
        and not (c.state is State.STARTING and c.docker_id is None)
    ]
