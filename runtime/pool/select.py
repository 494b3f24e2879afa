"""Choosing containers: pure functions over the pool's containers."""

from __future__ import annotations

from collections.abc import Iterable

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


def evictable(containers: Iterable[Container], key: FunctionKey) -> Container | None:
    """The least recently used idle container of another function, to make room."""
    best: Container | None = None
    for container in containers:
        if container.state is State.READY and container.key != key:
            if best is None or container.idle_since < best.idle_since:
                best = container
    return best


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
