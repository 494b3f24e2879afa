"""The pool following the Docker engine: containers lost behind its back, the engine
going down and coming back (a fake engine; no Docker here)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from runtime.errors import Unavailable
from runtime.pool.agent import AgentGone, CellSocket
from runtime.pool.container import Container, FunctionKey, State
from runtime.pool.engine import OwnedContainer
from runtime.pool.pool import Pool, Spec
from runtime.settings import load_settings

KEY = FunctionKey("acme", "resize", "v1")


class FakeEngine:
    """Records removals; lists what a test says the engine runs."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.listing: list[OwnedContainer] = []
        self.runs = 0

    async def remove(self, docker_id: str) -> None:
        self.removed.append(docker_id)

    async def owned(self) -> list[OwnedContainer]:
        return list(self.listing)

    async def run(self, name: str, cell_dir: Path, memory_mb: int) -> str:
        self.runs += 1
        raise Unavailable("the Docker engine could not start a container: down")


def make_pool(tmp_path: Path) -> tuple[Pool, FakeEngine]:
    settings = load_settings(data_dir=tmp_path, scheduler_id="unit-" + secrets.token_hex(2))
    engine = FakeEngine()
    pool = Pool(settings, engine)  # type: ignore[arg-type]
    pool._up.set()  # as after start(): following the engine
    pool._cells_root.mkdir(parents=True)
    return pool, engine


def add(pool: Pool, state: State, key: FunctionKey | None = None) -> Container:
    container = pool._new_container(128, key)
    container.state = state
    container.docker_id = "id-" + container.name
    return container


def spec() -> Spec:
    async def bundle() -> Path:
        raise AssertionError("no container should be specialised")

    return Spec(key=KEY, handler="main.handler", memory_mb=128, max_concurrency=4,
                timeout_s=3, bundle=bundle)


async def settle(pool: Pool) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    if pool._tasks:
        await asyncio.gather(*pool._tasks, return_exceptions=True)


@pytest.mark.parametrize("action", ["kill", "die", "destroy"])
async def test_an_idle_container_killed_behind_the_pools_back_is_discarded(
    tmp_path: Path, action: str
) -> None:
    pool, engine = make_pool(tmp_path)
    stem = add(pool, State.STEM)
    warm = add(pool, State.READY, KEY)
    pool._on_engine_event(action, stem.name)
    pool._on_engine_event(action, warm.name)
    assert stem.lost and warm.lost
    await settle(pool)
    assert pool.containers == []
    assert sorted(engine.removed) == sorted(["id-" + stem.name, "id-" + warm.name])
    assert pool.counters["lost"] == 2
    assert pool._refill.is_set()  # stem cells are started again


async def test_a_busy_container_that_dies_on_its_own_is_its_invocations_to_explain(
    tmp_path: Path,
) -> None:
    pool, _ = make_pool(tmp_path)
    crashed = add(pool, State.BUSY, KEY)
    pool._on_engine_event("die", crashed.name)  # a crash or the OOM killer: the function's
    assert not crashed.lost and crashed.state is State.BUSY
    pool._on_engine_event("kill", crashed.name)  # killed by someone else: the platform's
    assert crashed.lost and crashed.state is State.BUSY  # its invocation discards it


async def test_events_of_unknown_or_removing_containers_are_ignored(tmp_path: Path) -> None:
    pool, _ = make_pool(tmp_path)
    removing = add(pool, State.REMOVING, KEY)
    pool._on_engine_event("kill", removing.name)
    pool._on_engine_event("kill", "no-such-cell")
    assert not removing.lost and pool.counters["lost"] == 0


async def test_the_engine_going_down_stops_starts_and_marks_every_container_lost(
    tmp_path: Path,
) -> None:
    pool, engine = make_pool(tmp_path)
    stem = add(pool, State.STEM)
    busy = add(pool, State.BUSY, KEY)
    assert pool.engine_problem is None
    pool._on_engine_down("the event stream ended")
    problem = pool.engine_problem
    assert problem is not None and "not reachable" in problem and "stream ended" in problem
    assert stem.state is State.REMOVING and busy.lost and busy.state is State.BUSY
    # No container is started while the engine is away: the invocation waits, bounded.
    with pytest.raises(Unavailable, match="Docker engine is not reachable"):
        await pool.acquire(spec(), wait_s=0.2)
    assert engine.runs == 0
    await settle(pool)


async def test_a_starting_container_lost_fails_its_start_at_once(tmp_path: Path) -> None:
    pool, _ = make_pool(tmp_path)
    starting = add(pool, State.STARTING)
    starting.cell_dir.mkdir(parents=True)
    starting.run_dir.mkdir()
    socket = CellSocket(starting.run_dir)
    await socket.listen()
    pool._booting[starting.name] = socket
    accept = asyncio.ensure_future(socket.accept(30))
    pool._on_engine_event("die", starting.name)
    with pytest.raises(AgentGone, match="went away"):
        await asyncio.wait_for(accept, 2)
    socket.close()


async def test_reconcile_finds_what_the_engine_lost_and_removes_what_the_pool_forgot(
    tmp_path: Path,
) -> None:
    pool, engine = make_pool(tmp_path)
    alive = add(pool, State.READY, KEY)
    gone = add(pool, State.STEM)
    pool._up.clear()  # the event stream is being opened again
    engine.listing = [
        OwnedContainer("id-" + alive.name, alive.name, running=True),
        OwnedContainer("id-leftover", "someone-else", running=False),
    ]
    await pool._reconcile()
    await settle(pool)
    assert pool.engine_problem is None and pool._up.is_set()
    assert alive.state is State.READY and not alive.lost
    assert gone.lost and gone not in pool.containers
    assert "id-leftover" in engine.removed



async def test_a_failing_start_makes_the_pool_not_ready(tmp_path: Path) -> None:
    pool, engine = make_pool(tmp_path)
    with pytest.raises(Unavailable, match="could not start a container"):
        await pool.acquire(spec(), wait_s=1)  # no stem cell: a cold start, which fails
    assert engine.runs == 1
    problem = pool.engine_problem
    assert problem is not None and "fail to start" in problem
    await settle(pool)


async def test_a_lost_container_is_not_reused_after_its_invocation(tmp_path: Path) -> None:
    pool, _ = make_pool(tmp_path)
    busy = add(pool, State.BUSY, KEY)
    pool._on_engine_down("restarting")  # it finished its invocation all the same
    pool.release(busy)
    assert busy.state is State.REMOVING
    await settle(pool)


def test_linked_code_folders_are_readable_by_the_functions_user_whatever_the_umask(
    tmp_path: Path,
) -> None:
    """The function runs as another uid: its code folders must be 0755 even when the
    scheduler runs with a strict umask."""
    import os

    from runtime.pool.pool import link_tree

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "sub" / "m.py").write_text("x = 1\n")
    dst.mkdir()
    old = os.umask(0o077)
    try:
        link_tree(src, dst)
    finally:
        os.umask(old)
    for folder in (dst / "pkg", dst / "pkg" / "sub"):
        assert folder.stat().st_mode & 0o777 == 0o755, oct(folder.stat().st_mode)


def test_the_log_driver_is_bounded_in_the_create_call() -> None:
    from runtime.pool.engine import log_config

    assert log_config(1 << 20) == {
        "Type": "json-file", "Config": {"max-size": str(1 << 20), "max-file": "1"}
    }
    assert log_config(0) == {"Type": "none", "Config": {}}
