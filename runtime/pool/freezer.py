"""Freezing idle warm containers between invocations, as AWS Lambda does.

A handler may leave threads running after it returns (a busy loop, a writer to
its stdout). Frozen, a warm container's processes get no CPU while it waits for
its next invocation; it is thawed when it is claimed. The freeze is a write of
one file of the container's cgroup (v1 `freezer.state`, v2 `cgroup.freeze`),
microseconds on the event loop; where the scheduler cannot reach that file (it
runs in a container, rootless Docker), the engine's pause and unpause do it, a
round trip to the daemon each. Stem cells run no function code: never frozen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import Unavailable
from runtime.pool.container import Container, State
from runtime.pool.engine import DockerEngine
from runtime.settings import Settings

log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class FreezerFile:
    """A container's cgroup freezer file and what freezes and thaws it."""

    path: Path
    frozen: bytes
    thawed: bytes


# Where Docker puts a container's cgroup with the cgroupfs and the systemd drivers.
_CANDIDATES = (
    ("freezer/docker/{id}/freezer.state", b"FROZEN", b"THAWED"),  # v1, cgroupfs
    ("freezer/system.slice/docker-{id}.scope/freezer.state", b"FROZEN", b"THAWED"),  # v1, systemd
    ("docker/{id}/cgroup.freeze", b"1", b"0"),  # v2, cgroupfs
    ("system.slice/docker-{id}.scope/cgroup.freeze", b"1", b"0"),  # v2, systemd
)


def freezer_file(root: Path, docker_id: str) -> FreezerFile | None:
    """The freezer file of container `docker_id` under the cgroup mount `root`, if any."""
    for pattern, frozen, thawed in _CANDIDATES:
        path = root / pattern.format(id=docker_id)
        if path.exists():
            return FreezerFile(path, frozen, thawed)
    return None


def _write(path: Path, value: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        f.write(value)


# How a container was frozen (its thaw goes the same way).
BY_FILE = "cgroup"
BY_ENGINE = "docker"


class Freezer:
    """Freezes READY containers `after_s` after they went idle; thaws them on claim."""

    def __init__(
        self, settings: Settings, engine: DockerEngine, counters: Counter[str],
        root: Path = CGROUP_ROOT,
    ) -> None:
        self.mode = settings.freeze_idle
        self.after_s = settings.freeze_after_s
        self._engine = engine
        self._counters = counters
        self._root = root
        self._timers: dict[str, asyncio.TimerHandle] = {}  # by container name
        self._frozen: dict[str, str] = {}  # container name -> BY_FILE or BY_ENGINE
        self._pausing: dict[str, asyncio.Task[None]] = {}  # engine pauses in flight
        self._files: dict[str, FreezerFile | None] = {}
        self._told_fallback = False

    def idle(self, container: Container) -> None:
        """The container went READY: freeze it unless it is claimed within `after_s`."""
        if self.mode == "off" or container.docker_id is None:
            return
        self._cancel_timer(container)
        loop = asyncio.get_running_loop()
        self._timers[container.name] = loop.call_later(self.after_s, self._freeze, container)

    async def claim(self, container: Container) -> bool:
        """Make a claimed container runnable again; False when it could not be thawed
        (it is gone, or the engine does not answer): the caller discards it."""
        self._cancel_timer(container)
        pausing = self._pausing.get(container.name)
        if pausing is not None:
            await asyncio.shield(pausing)  # its unpause must come after it
        how = self._frozen.pop(container.name, None)
        if how is None:
            return True
        self._counters["thaws"] += 1
        try:
            if how == BY_FILE:
                file = self._files.get(container.docker_id or "")
                assert file is not None
                _write(file.path, file.thawed)
            else:
                await self._engine.unpause(container.docker_id or "")
        except (OSError, Unavailable) as exc:
            self._counters["thaw_failures"] += 1
            log.info("could not thaw container %s: %s", container.short_id, exc)
            return False
        return True

    def forget(self, container: Container) -> None:
        """The container is being removed (the engine removes it frozen or not)."""
        self._cancel_timer(container)
        self._frozen.pop(container.name, None)
        self._files.pop(container.docker_id or "", None)

    async def close(self) -> None:
        """Cancel the freezes to come and wait for the engine pauses in flight."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await asyncio.gather(*self._pausing.values(), return_exceptions=True)

    def frozen(self, container: Container) -> bool:
        return container.name in self._frozen

    def _cancel_timer(self, container: Container) -> None:
        timer = self._timers.pop(container.name, None)
        if timer is not None:
            timer.cancel()

    def _freeze(self, container: Container) -> None:
        self._timers.pop(container.name, None)
        # Only an idle warm container: never one loading its function or running an
        # invocation (its state would have changed and its timer been cancelled).
        if container.state is not State.READY or container.docker_id is None:
            return
        if container.name in self._frozen or container.name in self._pausing:
            return
        if self.mode in ("auto", "cgroup") and self._freeze_file(container, container.docker_id):
            return
        if self.mode in ("auto", "docker"):
            task = asyncio.ensure_future(self._pause(container, container.docker_id))
            self._pausing[container.name] = task

    def _freeze_file(self, container: Container, docker_id: str) -> bool:
        if docker_id not in self._files:
            self._files[docker_id] = freezer_file(self._root, docker_id)
        file = self._files[docker_id]
        try:
            if file is None:
                raise FileNotFoundError(f"no cgroup freezer file for it under {self._root}")
            _write(file.path, file.frozen)
        except OSError as exc:
            self._files[docker_id] = None
            self._fallback(container, exc)
            return False
        self._frozen[container.name] = BY_FILE
        self._counters["freezes"] += 1
        return True

    def _fallback(self, container: Container, exc: OSError) -> None:
        if self.mode == "cgroup":
            self._counters["freeze_failures"] += 1
            log.warning("could not freeze container %s: %s", container.short_id, exc)
        elif not self._told_fallback:
            self._told_fallback = True
            log.info(
                "cannot freeze containers through their cgroup (%s): pausing them through "
                "the Docker engine instead (FNHOST_FREEZE_IDLE)", exc,
            )

    async def _pause(self, container: Container, docker_id: str) -> None:
        try:
            await self._engine.pause(docker_id)
        except Unavailable as exc:
            self._counters["freeze_failures"] += 1
            log.info("could not pause container %s: %s", container.short_id, exc)
        else:
            if container.state is not State.REMOVING:
                self._frozen[container.name] = BY_ENGINE
            self._counters["freezes"] += 1
        finally:
            self._pausing.pop(container.name, None)
