"""The container state machine: allowed transitions, idle timer, binding."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from runtime.pool.container import ALLOWED, Container, FunctionKey, State, TransitionError

KEY = FunctionKey("acme", "resize", "v1")
PAIRS = list(itertools.product(State, State))
ALLOWED_PAIRS = [(a, b) for a, b in PAIRS if b in ALLOWED[a]]
REFUSED_PAIRS = [(a, b) for a, b in PAIRS if b not in ALLOWED[a]]


def make(tmp_path: Path, state: State = State.STARTING) -> Container:
    return Container(name="cell-1", cell_dir=tmp_path / "cell-1", memory_mb=256, state=state)


def pair_id(pair: tuple[State, State]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_every_state_has_an_entry() -> None:
    assert set(ALLOWED) == set(State)


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=pair_id)
def test_allowed_transition(tmp_path: Path, pair: tuple[State, State]) -> None:
    source, target = pair
    container = make(tmp_path, source)
    container.to(target)
    assert container.state is target


@pytest.mark.parametrize("pair", REFUSED_PAIRS, ids=pair_id)
def test_refused_transition(tmp_path: Path, pair: tuple[State, State]) -> None:
    source, target = pair
    container = make(tmp_path, source)
    with pytest.raises(TransitionError, match=f"{source.value} -> {target.value}"):
        container.to(target)
    assert container.state is source


def test_pairs_cover_every_combination() -> None:
    assert len(ALLOWED_PAIRS) + len(REFUSED_PAIRS) == len(State) ** 2
    assert ALLOWED_PAIRS, "the machine allows no transition at all"


def test_removing_is_terminal(tmp_path: Path) -> None:
    assert ALLOWED[State.REMOVING] == frozenset()
    container = make(tmp_path, State.REMOVING)
    for target in State:
        with pytest.raises(TransitionError):
            container.to(target)
        assert container.state is State.REMOVING


def test_every_live_state_can_be_removed() -> None:
    for state in State:
        if state is not State.REMOVING:
            assert State.REMOVING in ALLOWED[state], state


def test_ready_resets_idle_since(tmp_path: Path) -> None:
    container = make(tmp_path, State.BUSY)
    container.idle_since = 0.0
    before = time.monotonic()
    container.to(State.READY)
    assert before <= container.idle_since <= time.monotonic()


def test_other_states_keep_idle_since(tmp_path: Path) -> None:
    container = make(tmp_path, State.READY)
    container.idle_since = 0.0
    container.to(State.BUSY)
    assert container.idle_since == 0.0
    container.to(State.REMOVING)
    assert container.idle_since == 0.0


def test_full_lifecycle(tmp_path: Path) -> None:
    container = make(tmp_path)
    for state in (State.STEM, State.SPECIALISING, State.BUSY, State.READY, State.BUSY,
                  State.READY, State.REMOVING):
        container.to(state)
    assert container.state is State.REMOVING


def test_bind_sets_key(tmp_path: Path) -> None:
    container = make(tmp_path)
    assert container.key is None
    container.bind(KEY)
    assert container.key == KEY


def test_bind_same_key_again_is_allowed(tmp_path: Path) -> None:
    container = make(tmp_path)
    container.bind(KEY)
    container.bind(FunctionKey("acme", "resize", "v1"))
    assert container.key == KEY


@pytest.mark.parametrize(
    "other",
    [
        FunctionKey("other", "resize", "v1"),
        FunctionKey("acme", "thumbnail", "v1"),
        FunctionKey("acme", "resize", "v2"),
    ],
    ids=["tenant", "function", "version"],
)
def test_bind_refuses_another_key(tmp_path: Path, other: FunctionKey) -> None:
    container = make(tmp_path)
    container.bind(KEY)
    with pytest.raises(TransitionError):
        container.bind(other)
    assert container.key == KEY


def test_paths_and_short_id(tmp_path: Path) -> None:
    container = make(tmp_path)
    assert container.run_dir == tmp_path / "cell-1" / "run"
    assert container.code_dir == tmp_path / "cell-1" / "code"
    assert container.short_id == "cell-1"
    container.docker_id = "0123456789abcdef0123"
    assert container.short_id == "0123456789ab"


def test_containers_compare_by_identity(tmp_path: Path) -> None:
    assert make(tmp_path) != make(tmp_path)
