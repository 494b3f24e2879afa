"""Idle warm containers are frozen after a delay and thawed on claim; nothing else is.

The cgroup tree is a temporary folder standing in for /sys/fs/cgroup; the engine a
fake that records pauses. The real freezer is exercised in tests/hostile/.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Literal

import pytest

from runtime.errors import Unavailable
from runtime.pool.container import Container, FunctionKey, State
from runtime.pool.freezer import Freezer, freezer_file
from runtime.settings import Settings

ID = "c0ffee" * 10 + "abcd"


class Engine:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def pause(self, docker_id: str) -> None:
        await asyncio.sleep(0.01)
        self.calls.append("pause")
        if self.fail:
            raise Unavailable("the engine is away")

    async def unpause(self, docker_id: str) -> None:
        self.calls.append("unpause")
        if self.fail:
            raise Unavailable("the engine is away")


def v1_tree(root: Path) -> Path:
    folder = root / "freezer" / "docker" / ID
    folder.mkdir(parents=True)
    (folder / "freezer.state").write_text("THAWED")
    return folder / "freezer.state"


def ready(name: str = "c1") -> Container:
    container = Container(name=name, cell_dir=Path("/nowhere"), memory_mb=128, docker_id=ID)
    container.state = State.BUSY
    container.bind(FunctionKey("t", "f", "v"))
    container.to(State.READY)
    return container


Mode = Literal["auto", "cgroup", "docker", "off"]


def freezer(root: Path, engine: Engine, mode: Mode = "auto", after_s: float = 0.02) -> Freezer:
    settings = Settings(freeze_idle=mode, freeze_after_s=after_s)
    return Freezer(settings, engine, Counter(), root=root)  # type: ignore[arg-type]


def test_the_freezer_file_of_each_cgroup_layout(tmp_path: Path) -> None:
    assert freezer_file(tmp_path, ID) is None
    for relative, frozen in [
        (f"freezer/system.slice/docker-{ID}.scope/freezer.state", b"FROZEN"),
        (f"system.slice/docker-{ID}.scope/cgroup.freeze", b"1"),
        (f"docker/{ID}/cgroup.freeze", b"1"),
    ]:
        root = tmp_path / relative.replace("/", "_")
        (root / relative).parent.mkdir(parents=True)
        (root / relative).write_bytes(b"0")
        found = freezer_file(root, ID)
        assert found is not None and found.path == root / relative and found.frozen == frozen


async def test_an_idle_container_is_frozen_after_the_delay_and_thawed_on_claim(tmp_path: Path) -> None:
    state = v1_tree(tmp_path)
    f, container = freezer(tmp_path, Engine()), ready()
    f.idle(container)
    assert state.read_text() == "THAWED"  # not before the delay
    await asyncio.sleep(0.05)
    assert state.read_text() == "FROZEN" and f.frozen(container)
    container.to(State.BUSY)
    assert await f.claim(container)
    assert state.read_text() == "THAWED" and not f.frozen(container)


async def test_a_container_claimed_within_the_delay_is_never_frozen(tmp_path: Path) -> None:
    state = v1_tree(tmp_path)
    f, container = freezer(tmp_path, Engine()), ready()
    f.idle(container)
    container.to(State.BUSY)
    assert await f.claim(container)
    await asyncio.sleep(0.05)
    assert state.read_text() == "THAWED" and not f.frozen(container)


async def test_a_container_no_longer_ready_is_not_frozen(tmp_path: Path) -> None:
    state = v1_tree(tmp_path)
    f, container = freezer(tmp_path, Engine()), ready()
    f.idle(container)
    container.to(State.BUSY)  # claimed behind the freezer's back: the timer must not freeze it
    await asyncio.sleep(0.05)
    assert state.read_text() == "THAWED"


async def test_off_freezes_nothing(tmp_path: Path) -> None:
    state = v1_tree(tmp_path)
    engine = Engine()
    f, container = freezer(tmp_path, engine, mode="off"), ready()
    f.idle(container)
    await asyncio.sleep(0.05)
    assert state.read_text() == "THAWED" and engine.calls == []


async def test_auto_pauses_through_the_engine_without_a_freezer_file(tmp_path: Path) -> None:
    engine = Engine()
    f, container = freezer(tmp_path, engine), ready()
    f.idle(container)
    await asyncio.sleep(0.03)  # the delay passed, the pause is in flight
    container.to(State.BUSY)
    assert await f.claim(container)  # waits for the pause, then unpauses
    assert engine.calls == ["pause", "unpause"]


async def test_cgroup_mode_never_uses_the_engine(tmp_path: Path) -> None:
    engine = Engine()
    f, container = freezer(tmp_path, engine, mode="cgroup"), ready()
    f.idle(container)
    await asyncio.sleep(0.05)
    assert engine.calls == [] and not f.frozen(container)


async def test_a_thaw_that_fails_says_so(tmp_path: Path) -> None:
    engine = Engine()
    f, container = freezer(tmp_path, engine, mode="docker"), ready()
    f.idle(container)
    await asyncio.sleep(0.05)
    assert f.frozen(container)
    engine.fail = True
    container.to(State.BUSY)
    assert not await f.claim(container)  # the pool discards it


@pytest.mark.parametrize("mode", ["auto", "docker"])
async def test_a_removed_container_is_forgotten(tmp_path: Path, mode: Mode) -> None:
    v1_tree(tmp_path)
    f, container = freezer(tmp_path, Engine(), mode=mode), ready()
    f.idle(container)
    await asyncio.sleep(0.05)
    assert f.frozen(container)
    container.to(State.REMOVING)
    f.forget(container)
    assert not f.frozen(container)
