"""A pooled container as an explicit state machine.

    STARTING -> STEM -> SPECIALISING -> READY <-> BUSY
        \\__________\\_________\\__________\\________\\--> REMOVING

A stem cell is a started agent bound to no function. Once specialised a
container serves one (tenant, function, version) only, one invocation at a
time, and is never handed back to the stem pool: when it idles past the
keep-alive period, crashes or times out, it is removed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.pool.agent import AgentConnection


class State(enum.Enum):
    STARTING = "starting"
    STEM = "stem"
    SPECIALISING = "specialising"
    READY = "ready"
    BUSY = "busy"
    REMOVING = "removing"


class StartKind(enum.Enum):
    WARM = "warm"  # a ready container of this function version
    STEM = "stem"  # a stem cell specialised on demand
    COLD = "cold"  # a container started for this invocation


@dataclass(frozen=True)
class FunctionKey:
    """What a specialised container is bound to; reuse only on an exact match.

    `revision` changes with every configuration change (env, handler, memory),
    so a container loaded with an older configuration is never reused.
    """

    tenant: str
    function: str
    version: str
    revision: int = 0


ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.STEM, State.SPECIALISING, State.REMOVING}),
    State.STEM: frozenset({State.SPECIALISING, State.REMOVING}),
    State.SPECIALISING: frozenset({State.BUSY, State.REMOVING}),
    State.READY: frozenset({State.BUSY, State.REMOVING}),
    State.BUSY: frozenset({State.READY, State.REMOVING}),
    State.REMOVING: frozenset(),
}


class TransitionError(RuntimeError):
    """A state change the machine does not allow: a bug, never user input."""


@dataclass(eq=False)
class Container:
    name: str
    cell_dir: Path
    memory_mb: int
    state: State = State.STARTING
    key: FunctionKey | None = None
    docker_id: str | None = None
    agent: AgentConnection | None = None
    created_at: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    invocations: int = 0
    retired: bool = False  # its function changed: remove it when it is released
    # Killed or removed outside the pool, or taken by the engine going down: whatever
    # it was running failed for the platform's sake, not the function's.
    lost: bool = False

    @property
    def run_dir(self) -> Path:
        return self.cell_dir / "run"

    @property
    def code_dir(self) -> Path:
        return self.cell_dir / "code"

    @property
    def short_id(self) -> str:
        return (self.docker_id or self.name)[:12]

    def to(self, state: State) -> None:
        if state not in ALLOWED[self.state]:
            raise TransitionError(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state
        if state is State.READY:
            self.idle_since = time.monotonic()

    def bind(self, key: FunctionKey) -> None:
        if self.key is not None and self.key != key:
            raise TransitionError(f"{self.name} is bound to {self.key}, not {key}")
        self.key = key
