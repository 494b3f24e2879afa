"""The Docker engine, called off the event loop (the Docker SDK is synchronous)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from runtime import constants as c
from runtime.errors import Unavailable
from runtime.settings import Settings

# How long an exit by SIGKILL is re-read for Docker's out-of-memory flag.
OOM_FLAG_WAIT_S = 0.5
# What the Docker SDK raises when the engine is down, overloaded or refuses a request.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def _engine_failure(doing: str) -> Iterator[None]:
    """The engine's failure as Unavailable: not the function's fault, so an async
    task waits and tries again (durably) rather than failing or crash-looping."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise Unavailable(f"the Docker engine could not {doing}: {exc!s:.300}") from None


def log_config(max_bytes: int) -> dict[str, Any]:
    """The log driver of a function container: one json-file log of at most `max_bytes`
    (Docker rotates it away when full), or none at all for 0."""
    if max_bytes == 0:
        return {"Type": "none", "Config": {}}
    return {"Type": "json-file", "Config": {"max-size": str(max_bytes), "max-file": "1"}}


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int | None
    oom_killed: bool
    gone: bool = False  # the engine has no such container (removed)


@dataclass(frozen=True)
class OwnedContainer:
    docker_id: str
    cell: str
    running: bool


class DockerEngine:
    """Starts, resizes, kills and removes hardened function containers."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(settings.docker_threads, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None
        # Docker 20.10's network controller can deadlock when many containers are
        # torn down at once (every container, even with network "none", has a
        # network sandbox): tear down and start at most two at a time.
        self._removals = asyncio.Semaphore(2)
        self._starts = asyncio.Semaphore(2)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient.from_env(version="auto", timeout=60)
        return self._client

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self.client.ping()))
        except Exception:
            return False

    def _run(self, name: str, cell_dir: Path, memory_mb: int) -> str:
        s = self._settings
        memory = f"{memory_mb}m"
        container = self.client.api.create_container(
            s.runtime_image,
            name=f"fnhost-{name}",
            user=c.CONTAINER_USER,
            labels={c.LABEL_ROLE: "function", c.LABEL_SCHEDULER: s.scheduler_id, c.LABEL_CELL: name},
            # A container frozen through its cgroup (freezer.py) cannot take a SIGTERM
            # until thawed, and Docker does not know it is frozen: `docker stop`, and the
            # engine's own shutdown, would wait their whole timeout. The agent's SIGTERM
            # handler only exits, so SIGKILL loses nothing.
            stop_signal="SIGKILL",
            host_config=self.client.api.create_host_config(
                binds={
                    str(cell_dir / "run"): {"bind": c.CONTAINER_RUN_DIR, "mode": "ro"},
                    str(cell_dir / "code"): {"bind": c.CONTAINER_CODE_DIR, "mode": "ro"},
                },
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={s.container_tmpfs_mb}m,mode=1777"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=s.container_pids,
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=int(s.container_cpus * 1e9),
                network_mode="none",
                init=False,
                # Bounded here, not by the daemon's defaults (json-file without a cap):
                # output a function writes around the agent's capture must not fill
                # the disk that Docker shares with the broker and the database.
                log_config=log_config(s.container_log_bytes),
            ),
        )
        docker_id: str = container["Id"]
        try:
            self.client.api.start(docker_id)
        except BaseException:
            # A created container that failed to start (its cell folder gone, no
            # resources) belongs to nobody: remove it rather than leave it behind.
            with contextlib.suppress(Exception):
                self._remove(docker_id)
            raise
        return docker_id

    async def run(self, name: str, cell_dir: Path, memory_mb: int) -> str:
        """Create and start a hardened container for a cell; returns its id."""
        with _engine_failure("start a container"):
            async with self._starts:
                return str(await self._call(self._run, name, cell_dir, memory_mb))

    async def resize(self, docker_id: str, memory_mb: int) -> None:
        memory = f"{memory_mb}m"
        # Raising the limit must raise memory+swap first, lowering the other way round.
        with _engine_failure("resize a container"):
            await self._call(
                self.client.api.update_container, docker_id, mem_limit=memory, memswap_limit=memory
            )

    def _remove(self, docker_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(docker_id, force=True)

    async def remove(self, docker_id: str) -> None:
        """Kill and remove; a container already gone is fine. Never raises: a container
        the engine could not remove (it is down) is removed when the pool reconciles."""
        try:
            async with self._removals:
                await self._call(self._remove, docker_id)
        except docker.errors.APIError as exc:
            if "removal of container" in str(exc) and "already in progress" in str(exc):
                return
            log.warning("could not remove container %s: %s", docker_id[:12], exc)
        except ENGINE_ERRORS as exc:
            log.info("could not remove container %s: %s", docker_id[:12], exc)

    async def pause(self, docker_id: str) -> None:
        """Freeze a container through the engine (its cgroup freezer, on the engine's side)."""
        with _engine_failure("pause a container"):
            await self._call(self.client.api.pause, docker_id)

    async def unpause(self, docker_id: str) -> None:
        with _engine_failure("unpause a container"):
            await self._call(self.client.api.unpause, docker_id)

    async def kill(self, docker_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            await self._call(self.client.api.kill, docker_id)

    async def exit_info(self, docker_id: str, wait_s: float = 0.0) -> ExitInfo:
        """How the container ended; first waits up to `wait_s` for it to stop.

        The agent's socket closes a moment before Docker records the exit, so
        without the wait a crash reads as still running (no exit code). Raises
        Unavailable when the engine does not answer.
        """
        if wait_s > 0:
            with contextlib.suppress(Exception):  # still running after wait_s, or gone
                await self._call(self.client.api.wait, docker_id, timeout=wait_s)
        deadline = time.monotonic() + OOM_FLAG_WAIT_S
        while True:
            try:
                with _engine_failure("inspect a container"):
                    attrs = await self._call(self.client.api.inspect_container, docker_id)
            except docker.errors.NotFound:
                return ExitInfo(None, False, gone=True)
            state = attrs.get("State", {})
            running = state.get("Running", False)
            info = ExitInfo(None if running else state.get("ExitCode"), bool(state.get("OOMKilled")))
            # Killed (137) but not (yet) flagged: Docker records the OOM event apart
            # from the exit, sometimes a moment after it.
            if info.exit_code != 137 or info.oom_killed or time.monotonic() > deadline:
                return info
            await asyncio.sleep(0.05)

    async def owned(self) -> list[OwnedContainer]:
        """This scheduler's containers as the engine sees them, running or not."""
        filters = {"label": [f"{c.LABEL_SCHEDULER}={self._settings.scheduler_id}"]}
        with _engine_failure("list containers"):
            found = await self._call(self.client.api.containers, all=True, filters=filters)
        return [
            OwnedContainer(
                str(item["Id"]),
                str((item.get("Labels") or {}).get(c.LABEL_CELL, "")),
                item.get("State") in ("running", "paused"),  # paused: frozen while idle
            )
            for item in found
        ]

    async def image_present(self) -> bool:
        try:
            await self._call(self.client.api.inspect_image, self._settings.runtime_image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
