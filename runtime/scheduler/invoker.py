"""Runs one invocation in the pool: acquire, invoke with a deadline, release or discard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runtime.errors import Unavailable
from runtime.pool.agent import AgentBroke, AgentGone, Answer
from runtime.pool.container import Container, FunctionKey, StartKind, State
from runtime.pool.engine import DockerEngine, ExitInfo
from runtime.pool.pool import InitError, Lease, Pool, Spec
from runtime.scheduler.bundle_cache import BundleCache
from runtime.store.functions import FunctionRecord

OK = "ok"
FUNCTION_ERROR = "function_error"
TIMEOUT = "timeout"
# How long a crashed container may take to be recorded as exited (exit code, OOM kill).
EXIT_WAIT_S = 2.0


def _discarded(container: Container) -> bool:
    """Whether the pool removed the container (its state can change across an await)."""
    return container.state is State.REMOVING


@dataclass
class Outcome:
    """What happened to one invocation, as the gateway or a task record needs it."""

    status: str
    body: bytes
    content_type: str
    logs: bytes = b""
    start: StartKind = StartKind.WARM
    container: str = ""
    init_ms: float = 0.0
    run_ms: float = 0.0
    retryable: bool = True
    error: dict[str, Any] | None = field(default=None)
    # A sign the host is short of capacity (a timeout, an out-of-memory kill, a slow
    # start): the function's dispatch window shrinks when such signs pile up.
    capacity_error: bool = False

    @classmethod
    def failed(cls, status: str, error: dict[str, Any], **kwargs: Any) -> Outcome:
        return cls(status, orjson.dumps(error), "application/json", error=error, **kwargs)


@dataclass(frozen=True)
class Invocation:
    request_id: str
    payload: bytes
    content_type: str
    task_id: str | None = None
    attempt: int = 1


def too_large(result_len: int, limit: int) -> dict[str, Any]:
    return {
        "errorType": "Runtime.ResponseSizeTooLarge",
        "errorMessage": f"the function's result of {result_len} bytes is over the limit of {limit} bytes",
        "stackTrace": [],
    }


class Invoker:
    def __init__(
        self, pool: Pool, engine: DockerEngine, bundles: BundleCache, wait_s: float,
        *, result_limit: int, log_limit: int,
    ):
        self._pool = pool
        self._engine = engine
        self._bundles = bundles
        self._wait_s = wait_s
        # Enforced here on what the agent sends, whatever it reports: the agent runs
        # in the function's process, and its function can change it.
        self._result_limit = result_limit
        self._log_limit = log_limit

    def spec(self, record: FunctionRecord) -> Spec:
        config = record.config

        async def bundle() -> Path:
            return await self._bundles.ensure(record.tenant, record.sha256)

        return Spec(
            key=FunctionKey(record.tenant, record.name, record.version, record.revision),
            handler=config.handler,
            memory_mb=config.memory_mb,
            max_concurrency=config.max_concurrency,
            timeout_s=config.timeout_s,
            bundle=bundle,
            env=dict(config.env),
            pickle=record.pickle,
        )

    async def invoke(
        self,
        record: FunctionRecord,
        invocation: Invocation,
        on_start: Callable[[Lease], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Run it; raises only for platform errors (no capacity, Docker down).

        `on_start` runs once a container is bound to the invocation (the task
        is Running from then on)."""
        spec = self.spec(record)
        try:
            lease = await self._pool.acquire(spec, self._wait_s)
        except InitError as exc:
            return Outcome.failed(
                FUNCTION_ERROR, exc.error, logs=exc.logs, start=exc.start, retryable=False
            )
        container = lease.container
        if on_start is not None:
            try:
                await on_start(lease)
            except BaseException:
                self._pool.release(container)
                raise
        if container.agent is None or container.state is not State.BUSY:
            # Killed before it started (a stop request): nothing ran.
            error = {"errorType": "Stopped", "errorMessage": "stopped before it ran", "stackTrace": []}
            return Outcome.failed(FUNCTION_ERROR, error, start=lease.start, retryable=False)
        timeout = spec.timeout_s
        header = {
            "op": "invoke",
            "request_id": invocation.request_id,
            "task_id": invocation.task_id,
            "deadline_ms": int(time.time() * 1000 + timeout * 1000),
            "attempt": invocation.attempt,
            "content_type": invocation.content_type,
        }
        common: dict[str, Any] = {
            "start": lease.start, "container": container.short_id, "init_ms": lease.init_ms
        }
        started = time.perf_counter()
        try:
            # A timeout scope, not wait_for: wait_for wraps the request in a task of
            # its own, one more task and turn of the event loop on every invocation.
            async with asyncio.timeout(timeout):
                answer = await container.agent.call(
                    header, invocation.payload,
                    result_limit=self._result_limit, log_limit=self._log_limit,
                )
        except TimeoutError:
            self._pool.discard(container)
            error = {
                "errorType": "Timeout",
                "errorMessage": f"Task timed out after {timeout:.2f} seconds",
                "stackTrace": [],
            }
            return Outcome.failed(
                TIMEOUT, error, run_ms=timeout * 1000, capacity_error=True, **common
            )
        except AgentBroke as exc:
            self._pool.discard(container)
            error = {
                "errorType": "Runtime.AgentError",
                "errorMessage": f"the function's runtime broke the agent protocol: {exc}",
                "stackTrace": [],
            }
            run_ms = (time.perf_counter() - started) * 1000
            return Outcome.failed(FUNCTION_ERROR, error, run_ms=run_ms, retryable=False, **common)
        except AgentGone:
            run_ms = (time.perf_counter() - started) * 1000
            killed_here = _discarded(container) and not container.lost  # a stop
            try:
                info = await self._engine.exit_info(container.docker_id or "", wait_s=EXIT_WAIT_S)
            except Unavailable:
                info = None  # the engine is away, and took the container with it
            finally:
                self._pool.discard(container)
            if not killed_here and (info is None or info.gone or container.lost):
                # Killed or removed behind the pool's back, or by the engine going down:
                # the platform failed, not the function. A sync caller gets 503; an
                # async task is retried as a capacity error.
                raise Unavailable(
                    "the function's container was lost (the Docker engine restarted, or the "
                    "container was removed) while it ran", retry_after_s=2,
                ) from None
            if info is None:
                info = ExitInfo(None, False)
            if info.oom_killed:
                message = f"the function ran out of memory ({spec.memory_mb} MB) and was killed"
            else:
                message = f"the function's process exited (exit code {info.exit_code})"
            error = {"errorType": "Runtime.ExitError", "errorMessage": message, "stackTrace": []}
            return Outcome.failed(
                FUNCTION_ERROR, error, run_ms=run_ms, capacity_error=info.oom_killed, **common
            )
        run_ms = (time.perf_counter() - started) * 1000
        self._pool.release(container)
        return self._outcome(answer, run_ms, common)

    def _outcome(self, answer: Answer, run_ms: float, common: dict[str, Any]) -> Outcome:
        header, logs = answer.header, answer.logs
        if answer.result_dropped:
            error = too_large(answer.result_len, self._result_limit)
            return Outcome.failed(
                FUNCTION_ERROR, error, logs=logs, run_ms=run_ms, retryable=False, **common
            )
        if header.get("ok"):
            return Outcome(
                OK, answer.result, str(header.get("content_type")), logs=logs,
                run_ms=run_ms, **common,
            )
        reported = header.get("error")
        return Outcome.failed(
            FUNCTION_ERROR, reported if isinstance(reported, dict) else {}, logs=logs, run_ms=run_ms,
            retryable=bool(header.get("retryable", True)), **common,
        )
