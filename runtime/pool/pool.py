"""The warm pool of one scheduler host.

Keeps idle agent containers (stem cells) ready, as many and of the memory sizes
its stem policy asks for (`stems.py`), hands out containers for invocations
(warm reuse, else a stem cell specialised on demand, else a cold start), bounds
containers per function (`max_concurrency`) and per host (`max_containers`, and
the sum of their memory limits within the host's budget, `memory.py`: idle
containers are evicted to make room), freezes warm containers while they idle
(`freezer.py`), and removes containers idle past the keep-alive period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import constants as c
from runtime.agent.protocol import SOCKET_NAME
from runtime.errors import Throttled, Unavailable
from runtime.pool import memory, select, share
from runtime.pool.agent import AgentBroke, AgentConnection, AgentGone, Answer, CellSocket
from runtime.pool.container import Container, FunctionKey, StartKind, State
from runtime.pool.engine import DockerEngine
from runtime.pool.events import EngineEvents
from runtime.pool.freezer import Freezer
from runtime.pool.stems import StemPolicy
from runtime.settings import Settings

log = logging.getLogger(__name__)
REFILL_DELAY_S = 0.05
# A warm container idle this long gives way to a missing stem cell: the reserve comes
# before keep-alive, but never takes a container from a burst still going on.
RESERVE_MIN_IDLE_S = 2.0
# How long start() waits to follow the engine's event stream.
ENGINE_FOLLOW_TIMEOUT_S = 30.0
# Wait after stem cells failed to start before the next try.
REFILL_RETRY_S = 1.0
# A start that failed this recently, and none succeeded since: not ready.
START_FAILURE_MEMORY_S = 10.0
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


@dataclass(frozen=True)
class Spec:
    """What it takes to specialise a container for one function version."""

    key: FunctionKey
    handler: str
    memory_mb: int
    max_concurrency: int
    timeout_s: float
    bundle: Callable[[], Awaitable[Path]]
    env: dict[str, str] = field(default_factory=dict)
    pickle: str | None = None


@dataclass
class Lease:
    container: Container
    start: StartKind
    init_ms: float = 0.0
    # Of init_ms, the time in Docker engine calls (container start, memory resize),
    # and whether that passed FNHOST_SLOW_START_MS: a capacity signal, since a slow
    # engine means a loaded host, where a slow handler import means a heavy function.
    engine_ms: float = 0.0
    slow: bool = False
    alongside: int = 1  # container starts the engine had in hand with this one's (itself included)


class InitError(Exception):
    """The function could not be loaded (its handler failed to import)."""

    def __init__(self, error: dict[str, Any], logs: bytes, start: StartKind) -> None:
        super().__init__(error.get("errorMessage", "init failed"))
        self.error = error
        self.logs = logs
        self.start = start


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link an unpacked bundle into a cell's code folder (copy across filesystems)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        target = dst / rel
        for name in dirs:
            (target / name).mkdir(exist_ok=True)
            os.chmod(target / name, 0o755)  # whatever the umask: the function's uid reads it
        for name in files:
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copy2(Path(root) / name, target / name)


def slow_start(engine_ms: float, alongside: int, slow_start_ms: float) -> bool:
    """Whether a start's engine time is a sign of a host under pressure. The engine
    serves concurrent starts in turn, so a start beside n others takes about n times
    as long: that is contention a burst made for itself, not a host short of capacity.
    Slow is slow per start."""
    return engine_ms / max(1, alongside) > slow_start_ms


def _removed(container: Container) -> bool:
    """Whether the container was discarded (its state can change across an await)."""
    return container.state is State.REMOVING


class Pool:
    def __init__(self, settings: Settings, engine: DockerEngine) -> None:
        self._settings = settings
        self._engine = engine
        self._cells_root = settings.data_dir / "cells" / settings.scheduler_id
        self._containers: dict[str, Container] = {}
        self._changed = asyncio.Condition()
        self._refill = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._seq = itertools.count(1)
        self._closing = False
        self.counters: Counter[str] = Counter()
        self._freezer = Freezer(settings, engine, self.counters)
        # Set while the engine answers and the pool has reconciled with what it runs;
        # no container is started while it is clear.
        self._up = asyncio.Event()
        self._engine_error: str | None = None
        self._start_error: tuple[float, str] | None = None  # when and why a start failed
        self._booting: dict[str, CellSocket] = {}
        self._reconciling = asyncio.Lock()
        self._events: EngineEvents | None = None
        self._stems = StemPolicy.from_settings(settings)
        self.memory_budget_mb = memory.budget_mb(settings)
        self.max_containers = memory.max_containers(settings, self.memory_budget_mb)
        self._host = share.Host(self.memory_budget_mb, self.max_containers)
        # Container starts in the engine now: concurrent starts share its time.
        self._starts_in_flight = 0
        # Acquires waiting for a stem cell that is starting, rather than starting one more.
        self._awaiting_stems = 0
        # Acquires waiting for room on this host, by tenant (runtime/pool/share.py).
        self._waiting: Counter[str] = Counter()
        # Acquires waiting, by function version: its warm containers are not evicted.
        self._wanted: Counter[FunctionKey] = Counter()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._check_socket_path()
        for left in await self._engine.owned():  # by an earlier run of this scheduler
            await self._engine.remove(left.docker_id)
        if self._cells_root.exists():
            await asyncio.to_thread(shutil.rmtree, self._cells_root, True)
        self._cells_root.mkdir(parents=True, exist_ok=True)
        self._events = EngineEvents(
            self._settings.scheduler_id, asyncio.get_running_loop(),
            on_up=self._on_engine_up, on_down=self._on_engine_down, on_event=self._on_engine_event,
        )
        self._events.start()
        self._background = [
            asyncio.create_task(self._refill_loop(), name="pool-refill"),
            asyncio.create_task(self._reap_loop(), name="pool-reaper"),
        ]
        self._refill.set()
        try:
            # Ready once it follows the engine's events (and has reconciled with it).
            await asyncio.wait_for(self._up.wait(), ENGINE_FOLLOW_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise RuntimeError(
                f"could not follow the Docker engine's events: {self._engine_error}"
            ) from None

    def _check_socket_path(self) -> None:
        # A unix socket path is at most 107 bytes on Linux; fail clearly at start-up
        # rather than with every stem cell failing in the background.
        longest = self._cells_root / f"{10**9}-{'f' * 6}" / "run" / SOCKET_NAME
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"container socket paths under {self._cells_root} would be longer than "
                f"{MAX_SOCKET_PATH} bytes: use a shorter FNHOST_DATA_DIR or FNHOST_SCHEDULER_ID"
            )

    async def close(self) -> None:
        self._closing = True
        if self._events is not None:
            self._events.close()
        for task in self._background:
            task.cancel()
        # Let cancelled stem-cell starts unwind first, so none of them outlives close().
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._freezer.close()
        for container in list(self._containers.values()):
            if container.state is not State.REMOVING:
                self.discard(container)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- views -------------------------------------------------------------

    @property
    def containers(self) -> list[Container]:
        return list(self._containers.values())

    def serves(self, tenant: str, version: str) -> bool:
        """Whether a live container is bound to `version` of one of `tenant`'s functions."""
        return any(
            c.key is not None and c.key.tenant == tenant and c.key.version == version
            and c.state is not State.REMOVING
            for c in self._containers.values()
        )

    def stats(self) -> dict[str, Any]:
        containers = self._containers.values()
        states = Counter(c.state.value for c in containers)
        idle = Counter(str(c.memory_mb) for c in containers if c.state is State.STEM)
        return {
            "containers": dict(states),
            "memory_mb": {"budget": self.memory_budget_mb, "live": select.memory_in_use(containers)},
            "max_containers": self.max_containers,
            "frozen": sum(1 for c in containers if self._freezer.frozen(c)),
            "stem_cells": {**self._stems.stats(), "idle": dict(idle)},
            **self.counters,
        }

    @property
    def engine_problem(self) -> str | None:
        """Why this pool cannot start containers now, or None when it can."""
        if not self._up.is_set():
            return f"the Docker engine is not reachable: {self._engine_error or 'reconnecting'}"
        if self._start_error is not None:
            failed_at, error = self._start_error
            # Stem cells missing are tried again every REFILL_RETRY_S: a failure this
            # old with none since means nothing was tried, not that starts still fail.
            if time.monotonic() - failed_at < START_FAILURE_MEMORY_S:
                return f"containers fail to start: {error}"
        return None

    async def wait_for_stem_cells(self, count: int, timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self._stem_count() >= count), timeout
            )

    def _stem_count(self) -> int:
        return sum(1 for c in self._containers.values() if c.state is State.STEM)

    # -- acquire / release -------------------------------------------------

    async def acquire(self, spec: Spec, wait_s: float) -> Lease:
        """A BUSY container bound to `spec.key`: warm, a specialised stem cell, or cold."""
        deadline = time.monotonic() + wait_s
        failures = 0
        while True:
            awaiting_stem = False
            if self._closing:
                raise Unavailable("this scheduler's pool is shutting down", retry_after_s=2)
            containers = self._containers.values()
            warm = select.warm(containers, spec.key)
            if warm is not None:
                warm.to(State.BUSY)
                if not await self._freezer.claim(warm):
                    self.discard(warm)  # frozen and could not be thawed: gone, or the engine is
                    continue
                self.counters["warm_starts"] += 1
                return Lease(warm, StartKind.WARM)
            at_limit = select.bound_count(containers, spec.key) >= spec.max_concurrency
            held_back = not at_limit and self._held_back(spec)
            if not at_limit and not held_back:
                stem = select.stem(containers, spec.memory_mb)
                container: Container | None = None
                kind = StartKind.STEM
                resize = False
                if stem is not None:
                    # A stem cell of another size is resized: a bigger one needs the room.
                    grow_mb = spec.memory_mb - stem.memory_mb
                    if self._make_room(spec.key, new=0, memory_mb=grow_mb, spare=stem):
                        resize = stem.memory_mb != spec.memory_mb
                        stem.to(State.SPECIALISING)
                        stem.bind(spec.key)
                        # Booked now, so that other acquires count the memory it will take.
                        stem.memory_mb = spec.memory_mb
                        container = stem
                        self._stems.on_claim(spec.memory_mb)
                        self._refill.set()
                elif self._starting_stems() > self._awaiting_stems:
                    # A stem cell already on its way is ready sooner than a container
                    # started now, and a second start would only slow both down: wait
                    # for it (the pool notifies when it is ready).
                    awaiting_stem = True
                elif self._up.is_set() and self._make_room(spec.key, new=1, memory_mb=spec.memory_mb):
                    container = self._new_container(spec.memory_mb, spec.key)
                    kind = StartKind.COLD
                    self._stems.on_claim(spec.memory_mb)  # the stem pool grows
                    self._refill.set()
                if container is not None:
                    try:
                        return await self._prepare(container, spec, kind, resize)
                    except AgentGone:
                        # A stem cell that died while idle: try the next one.
                        failures += 1
                        if failures >= 3:
                            raise Unavailable("containers keep failing to start") from None
                        continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not self._up.is_set():
                    raise Unavailable(str(self.engine_problem), retry_after_s=2)
                if select.bound_count(self._containers.values(), spec.key) >= spec.max_concurrency:
                    raise Throttled(
                        f"function {spec.key.function} is at its max_concurrency "
                        f"({spec.max_concurrency})"
                    )
                if held_back:
                    raise Throttled(
                        "this tenant holds its share of the host's containers while other "
                        "tenants wait (or FNHOST_TENANT_HOST_SHARE)"
                    )
                if awaiting_stem:
                    raise Unavailable(
                        f"no stem cell was ready within {wait_s:g} s (containers start slowly)",
                        retry_after_s=2,
                    )
                raise Unavailable(self._no_capacity(spec), retry_after_s=2)
            self._awaiting_stems += awaiting_stem
            wants_room = not at_limit  # a function at its own limit waits for itself
            self._waiting[spec.key.tenant] += wants_room
            self._wanted[spec.key] += 1
            try:
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
            finally:
                self._awaiting_stems -= awaiting_stem
                self._waiting[spec.key.tenant] -= wants_room
                if self._waiting[spec.key.tenant] <= 0:
                    del self._waiting[spec.key.tenant]
                self._wanted[spec.key] -= 1
                if self._wanted[spec.key] <= 0:
                    del self._wanted[spec.key]

    def _held_back(self, spec: Spec) -> bool:
        """Whether the tenant may start no new container now: it holds its share while
        other tenants wait, or FNHOST_TENANT_HOST_SHARE of the host."""
        tenant = spec.key.tenant
        if self._gives_way(tenant):
            return True
        host_share = self._settings.tenant_host_share
        return host_share < 1.0 and share.over_cap(
            tenant, self._host.part(spec.memory_mb),
            share.held(self._containers.values(), self._host), host_share,
        )

    def _gives_way(self, tenant: str) -> bool:
        """runtime/pool/share.py `gives_way`, counting the containers only when another
        tenant waits: on every release, the usual case costs nothing."""
        if not any(t != tenant for t in self._waiting):
            return False
        return share.gives_way(tenant, share.held(self._containers.values(), self._host), self._waiting)

    def _starting_stems(self) -> int:
        return sum(
            1 for c in self._containers.values() if c.key is None and c.state is State.STARTING
        )

    def _make_room(
        self, key: FunctionKey | None, *, new: int, memory_mb: int, spare: Container | None = None,
        reserve_before: float | None = None,
    ) -> bool:
        """Whether `new` more containers and `memory_mb` more MB fit on this host, once
        idle containers are evicted (none is, when that would still not do). For the
        stem-cell reserve (`reserve_before`): only warm containers idle since before
        then go, never stem cells, counted as `reserve_evictions`."""
        reserve = reserve_before is not None
        holding = share.held(self._containers.values(), self._host)
        chosen = select.victims(
            self._containers.values(), key, new=new, memory_mb=memory_mb,
            max_containers=self.max_containers, budget_mb=self.memory_budget_mb, spare=spare,
            stems=not reserve, idle_before=reserve_before,
            fair=(key.tenant if key else None, holding, self._host), wanted=self._wanted,
        )
        if chosen is None:
            return False
        for victim, reason in chosen:
            self.counters["reserve_evictions" if reserve else "evictions"] += 1
            self.counters[f"evictions_{reason}"] += 1
            if victim.state is State.STEM:
                self.counters["evicted_stem_cells"] += 1
            self.discard(victim)
        return True

    def _no_capacity(self, spec: Spec) -> str:
        containers = self._containers.values()
        if spec.memory_mb > self.memory_budget_mb:
            return (
                f"function {spec.key.function} needs {spec.memory_mb} MB, more than this host's "
                f"container memory budget ({self.memory_budget_mb} MB, FNHOST_HOST_MEMORY_MB)"
            )
        return (
            f"no container capacity on this host ({select.live_count(containers)} of "
            f"{self.max_containers} containers, {select.memory_in_use(containers)} of "
            f"{self.memory_budget_mb} MB in use)"
        )

    async def _prepare(self, container: Container, spec: Spec, kind: StartKind, resize: bool) -> Lease:
        started = time.perf_counter()
        engine_s = 0.0
        alongside = 1  # starts the engine served at once with this one's
        try:
            if kind is StartKind.COLD:
                alongside = await self._boot(container)
                engine_s = time.perf_counter() - started
                container.to(State.SPECIALISING)
            engine_s += await self._specialise(container, spec, kind, resize)
        except BaseException:
            if container.state is not State.REMOVING:
                self.discard(container)
            raise
        container.to(State.BUSY)
        self.counters[f"{kind.value}_starts"] += 1
        engine_ms = engine_s * 1000
        slow = slow_start(engine_ms, alongside, self._settings.slow_start_ms)
        if slow:
            self.counters["slow_starts"] += 1
        return Lease(container, kind, (time.perf_counter() - started) * 1000, engine_ms, slow, alongside)

    async def _specialise(self, container: Container, spec: Spec, kind: StartKind, resize: bool) -> float:
        """Load the function into the container; the seconds its memory resize took."""
        bundle_dir = await spec.bundle()
        await asyncio.to_thread(link_tree, bundle_dir, container.code_dir)
        resize_s = 0.0
        if resize:
            assert container.docker_id is not None
            begun = time.perf_counter()
            await self._engine.resize(container.docker_id, spec.memory_mb)
            resize_s = time.perf_counter() - begun
        assert container.agent is not None
        try:
            answer = await self._init(container.agent, spec)
        except AgentBroke as exc:
            # The function's import code runs in the agent's process: a broken answer is its.
            self.counters["init_errors"] += 1
            broke = {
                "errorType": "Runtime.AgentError",
                "errorMessage": f"the function's runtime broke the agent protocol: {exc}",
                "stackTrace": [],
            }
            raise InitError(broke, b"", kind) from None
        if not answer.header.get("ok"):
            self.counters["init_errors"] += 1
            error = answer.header.get("error")
            raise InitError(error if isinstance(error, dict) else {}, answer.logs, kind)
        return resize_s

    async def _init(self, agent: AgentConnection, spec: Spec) -> Answer:
        return await agent.call(
            {
                "op": "init",
                "handler": spec.handler,
                "pickle": spec.pickle,
                "code_dir": c.CONTAINER_CODE_DIR,
                "env": spec.env,
                "function": spec.key.function,
                "version": spec.key.version,
                "memory_mb": spec.memory_mb,
                "log_limit": self._settings.log_limit_bytes,
            },
            b"", result_limit=0, log_limit=self._settings.log_limit_bytes,
        )

    def expect(self, memory_mb: int, concurrency: int) -> None:
        """A function that may bring `concurrency` invocations at once was deployed or
        changed: hold as many stem cells for its first burst (within the policy's bounds)."""
        before = self._stems.target
        self._stems.expect(memory_mb, concurrency)
        if self._stems.target != before:
            self._refill.set()

    def release(self, container: Container) -> None:
        """Back to READY after an invocation that left the container healthy."""
        container.invocations += 1
        if container.retired or container.lost:
            self.discard(container)
        elif container.key is not None and self._gives_way(container.key.tenant):
            # Another tenant waits for room this tenant holds more than its share of.
            self.counters["fair_share_releases"] += 1
            self.discard(container)
        elif container.state is State.BUSY:
            container.to(State.READY)
            self._freezer.idle(container)
            self._notify()

    def retire(self, tenant: str, function: str, revision: int | None) -> int:
        """A function changed (or was deleted when `revision` is None): its older
        containers are removed now if idle, else as soon as they finish."""
        count = 0
        for container in list(self._containers.values()):
            key = container.key
            if key is None or key.tenant != tenant or key.function != function:
                continue
            if revision is not None and key.revision >= revision:
                continue
            count += 1
            if container.state is State.READY:
                self.discard(container)
            else:
                container.retired = True
        return count

    def discard(self, container: Container) -> None:
        """Remove a container (crashed, timed out, idle, or evicted); never reused."""
        if container.state is State.REMOVING:
            return
        container.to(State.REMOVING)
        self._freezer.forget(container)
        if container.agent is not None:
            container.agent.close()
        self._spawn(self._destroy(container))
        self._refill.set()
        self._notify()

    def _notify(self) -> None:
        self._spawn(self._notify_all())

    async def _notify_all(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- containers ---------------------------------------------------------

    def _new_container(self, memory_mb: int, key: FunctionKey | None = None) -> Container:
        cell = f"{next(self._seq)}-{secrets.token_hex(3)}"
        name = f"{self._settings.scheduler_id}-{cell}"
        # The cell folder is already under the scheduler's own root: a short name keeps
        # the unix socket path inside it below the kernel's 107-byte limit.
        container = Container(name=name, cell_dir=self._cells_root / cell, memory_mb=memory_mb)
        if key is not None:
            container.bind(key)
        self._containers[name] = container
        return container

    async def _boot(self, container: Container) -> int:
        """Start the container and wait for its agent's hello; the most starts (this one
        included) that the engine had in hand at once meanwhile."""
        for folder in (container.cell_dir, container.run_dir, container.code_dir):
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o755)  # whatever the umask: the function's uid reaches them
        socket = CellSocket(container.run_dir)
        await socket.listen()
        self._booting[container.name] = socket
        self._starts_in_flight += 1
        alongside = self._starts_in_flight
        try:
            run = asyncio.ensure_future(
                self._engine.run(container.name, container.cell_dir, container.memory_mb)
            )
            try:
                container.docker_id = await asyncio.shield(run)
            except asyncio.CancelledError:
                # The create goes on in the engine's thread: remove what it makes.
                self._spawn(self._remove_when_created(run))
                raise
            if _removed(container):
                # Discarded (the pool is closing) while Docker was creating it.
                self._spawn(self._engine.remove(container.docker_id))
                raise Unavailable("the container was removed while it started")
            alongside = max(alongside, self._starts_in_flight)
            container.agent = await socket.accept(self._settings.container_start_timeout_s)
            if _removed(container):
                container.agent.close()
                raise Unavailable("the container was removed while it started")
        except TimeoutError:
            error = f"container did not start within {self._settings.container_start_timeout_s:.0f} s"
            self._start_error = (time.monotonic(), error)
            raise Unavailable(error) from None
        except (Unavailable, AgentGone) as exc:
            if not self._closing:
                self._start_error = (time.monotonic(), str(exc))
            raise
        finally:
            self._starts_in_flight -= 1
            self._booting.pop(container.name, None)
            socket.close()
        self._start_error = None
        self._spawn(self._watch(container, container.agent))
        return alongside

    async def _watch(self, container: Container, agent: AgentConnection) -> None:
        """An idle container whose agent's connection closes has died (or was killed):
        never hand it out. A busy one's invocation sees the same and answers for it."""
        await agent.wait_closed()
        if container.agent is agent and container.state in (State.STEM, State.READY):
            self._lost(container, "its agent's connection closed")

    def _lost(self, container: Container, reason: str) -> None:
        """A container died or went away behind the pool's back."""
        if container.state is State.REMOVING:
            return
        if not container.lost:
            container.lost = True
            self.counters["lost"] += 1
            log.info("container %s (%s) lost: %s", container.name, container.state.value, reason)
        if container.state in (State.STEM, State.READY):
            self.discard(container)
        elif container.state is State.STARTING:
            socket = self._booting.get(container.name)
            if socket is not None:
                socket.abort(f"the container went away before its agent connected ({reason})")
        # SPECIALISING and BUSY: the request in flight fails as the agent goes.

    # -- the engine --------------------------------------------------------

    def _on_engine_down(self, reason: str) -> None:
        """The engine went away: its containers go with it (they are killed when it
        stops), so none is started until it is back and the pool has reconciled."""
        if self._closing:
            return
        self._up.clear()
        self._engine_error = reason
        for container in list(self._containers.values()):
            self._lost(container, "the Docker engine went away")
        self._notify()

    def _on_engine_up(self) -> None:
        if not self._closing:
            self._spawn(self._reconcile())

    def _on_engine_event(self, action: str, cell: str) -> None:
        container = self._containers.get(cell)
        if container is None or container.state is State.REMOVING:
            return
        # A busy container that dies on its own (a crash, the out-of-memory killer) is
        # its invocation's to explain; one killed or removed by someone else is lost.
        if action in ("kill", "destroy") or (action == "die" and container.state is not State.BUSY):
            self._lost(container, f"{action} event")

    async def _reconcile(self) -> None:
        """Make the pool agree with what the engine runs (after it came back, or its
        event stream was reopened): containers it does not run are lost, containers
        of this scheduler that the pool does not know are removed."""
        async with self._reconciling:
            try:
                found = await self._engine.owned()
            except Unavailable as exc:
                log.warning("could not reconcile the pool with the engine: %s", exc)
                return
            running = {item.cell for item in found if item.running}
            for item in found:
                if item.cell not in self._containers:
                    self._spawn(self._engine.remove(item.docker_id))
            for container in select.not_running(list(self._containers.values()), running):
                self._lost(container, "the engine does not run it")
            if not self._up.is_set():
                log.info("the Docker engine answers; pool reconciled (%d containers)", len(found))
            self._engine_error = None
            self._up.set()
            self._refill.set()
            self._notify()

    async def _remove_when_created(self, run: asyncio.Future[str]) -> None:
        with contextlib.suppress(Exception):
            await self._engine.remove(await run)

    async def _destroy(self, container: Container) -> None:
        try:
            if container.docker_id is not None:
                await self._engine.remove(container.docker_id)
            await asyncio.to_thread(shutil.rmtree, container.cell_dir, True)
        finally:
            self._containers.pop(container.name, None)
            self.counters["removed"] += 1

    async def _start_stem(self, memory_mb: int) -> None:
        container = self._new_container(memory_mb)
        try:
            await self._boot(container)
        except BaseException as exc:
            if not self._closing:
                log.warning("stem cell %s failed to start: %s", container.name, exc)
            self.discard(container)
            raise
        if container.state is State.STARTING:
            container.to(State.STEM)
            self._notify()

    async def _refill_loop(self) -> None:
        while not self._closing:
            await self._refill.wait()
            await self._up.wait()  # no start while the engine is away
            try:
                await self._refill_once()
            except Exception:
                # The loop must outlive any failure, or the pool never refills again.
                log.exception("stem-cell refill failed; trying again")
                await asyncio.sleep(REFILL_RETRY_S)
                self._refill.set()

    async def _refill_once(self) -> None:
        # Starting a container loads both cores for ~200 ms; let the invocation
        # that just claimed a stem cell finish its specialisation first.
        await asyncio.sleep(REFILL_DELAY_S)
        self._refill.clear()
        containers = list(self._containers.values())
        # The reserve comes before keep-alive: warm containers idle for a while give
        # way to missing stem cells (a new function's first start must not pay for the
        # idle containers of others), least recently used first. Stem cells are never
        # evicted for other stem cells.
        idle_before = time.monotonic() - RESERVE_MIN_IDLE_S
        reclaim = self._reclaimable(containers, idle_before)
        sizes = self._stems.to_start(
            self._spare_sizes(),
            free_slots=self.max_containers - select.live_count(containers) + len(reclaim),
            free_mb=self.memory_budget_mb - select.memory_in_use(containers)
            + sum(c.memory_mb for c in reclaim),
        )
        if not sizes:
            return
        if not self._make_room(None, new=len(sizes), memory_mb=sum(sizes), reserve_before=idle_before):
            return  # the room was counted size by size: the reaper sets the refill again
        results = await asyncio.gather(
            *(self._start_stem(size) for size in sizes), return_exceptions=True
        )
        if any(isinstance(r, BaseException) for r in results):
            await asyncio.sleep(REFILL_RETRY_S)
        self._refill.set()

    async def _reap_loop(self) -> None:
        keep_alive = self._settings.keep_alive_s
        interval = min(1.0, keep_alive / 4)
        while not self._closing:
            await asyncio.sleep(interval)
            for container in select.expired(self._containers.values(), time.monotonic(), keep_alive):
                self.counters["expired"] += 1
                self.discard(container)
            self._shrink_stems()
            if sum(self._spare_sizes().values()) < self._stems.target:
                # Short of the reserve: warm containers may have idled long enough to give way.
                self._refill.set()

    def _reclaimable(self, containers: list[Container], idle_before: float) -> list[Container]:
        """The warm containers that may give way to the stem-cell reserve: idle long
        enough, and of the tenant holding the most of the host."""
        holding = share.held(containers, self._host)
        out = []
        for idle in select.reclaimable(containers, idle_before):
            if idle.key is not None and share.may_evict(idle, None, holding, 0, self._host):
                holding[idle.key.tenant] -= self._host.part(idle.memory_mb)
                out.append(idle)
        return out

    def _spare_sizes(self) -> Counter[int]:
        """Stem cells, idle or starting, by memory size."""
        return Counter(
            c.memory_mb for c in self._containers.values()
            if c.key is None and c.state in (State.STEM, State.STARTING)
        )

    def _shrink_stems(self) -> None:
        """Remove idle stem cells beyond the policy's target (it shrinks while none is claimed)."""
        self._stems.tick()
        for size in self._stems.surplus(self._spare_sizes()):
            idle = next(
                (c for c in self._containers.values() if c.state is State.STEM and c.memory_mb == size),
                None,
            )
            if idle is not None:  # those of that size are all still starting: next time
                self.counters["stem_cells_shrunk"] += 1
                self.discard(idle)
