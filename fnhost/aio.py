"""The asyncio client: `AsyncClient(url, api_key)` and its `AsyncTask` handles, with the
methods of `Client` as coroutines (the requests themselves are built in fnhost.calls)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx

from fnhost import calls
from fnhost.calls import Answer, Call, Op, Sleep, T
from fnhost.client import transport_error
from fnhost.errors import FnhostError


class AsyncTask:
    """An async task: its id, and coroutines that read or act on it."""

    def __init__(self, client: AsyncClient, task_id: str) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncTask({self.id!r})"

    async def get(self) -> dict[str, Any]:
        return await self.client._run(calls.document("GET", calls.task_path(self.id)))

    async def status(self) -> str:
        return str((await self.get())["status"])

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return await self.client._run(calls.wait_final(self.id, timeout, time.monotonic))

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client._run(calls.result(self.id, timeout, time.monotonic))

    async def stop(self) -> dict[str, Any]:
        return await self.client._run(calls.document("POST", calls.task_path(self.id, "/stop")))

    async def retry(self) -> dict[str, Any]:
        return await self.client._run(calls.document("POST", calls.task_path(self.id, "/retry")))

    async def logs(self) -> str:
        return await self.client._run(calls.text(calls.task_path(self.id, "/logs")))


class AsyncClient:
    """`Client` for asyncio: the same arguments and methods, awaited."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, batch_max_tasks: int = calls.BATCH_MAX_TASKS,
                 batch_max_bytes: int = calls.BATCH_MAX_BYTES) -> None:
        self.url, self.api_key = calls.settings_from_env(url, api_key)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self._batch = (batch_max_tasks, batch_max_bytes)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(await self._send(step))
        except StopIteration as done:
            value: T = done.value
            return value

    async def _send(self, call: Call) -> Answer:
        try:
            r = await self._http.request(call.method, call.path, headers=call.headers,
                                         content=call.content, params=call.params,
                                         files=call.files)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.url) from exc
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    async def deploy(self, path_or_callable: str | os.PathLike[str] | Callable[..., Any],
                     name: str | None = None, **config: Any) -> dict[str, Any]:
        return await self._run(calls.deploy(path_or_callable, name, config))

    async def functions(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = (await self._run(calls.document("GET", "/v1/functions")))["functions"]
        return listed

    async def function(self, name: str) -> dict[str, Any]:
        return await self._run(calls.document("GET", calls.fn_path(name)))

    async def configure(self, name: str, **config: Any) -> dict[str, Any]:
        return await self._run(calls.patch(name, config))

    async def delete(self, name: str) -> None:
        await self._run(calls.request("DELETE", calls.fn_path(name)))

    async def pause(self, name: str) -> dict[str, Any]:
        return await self._run(calls.document("POST", calls.fn_path(name, "/pause")))

    async def resume(self, name: str) -> dict[str, Any]:
        return await self._run(calls.document("POST", calls.fn_path(name, "/resume")))

    async def invoke(self, name: str, payload: Any = None, *, log_tail: bool = False) -> Any:
        return await self._run(calls.invoke(name, payload, log_tail))

    async def submit(self, name: str, payload: Any = None, task_id: str | None = None,
                     delay_s: float | None = None) -> AsyncTask:
        return AsyncTask(self, await self._run(calls.submit(name, payload, task_id, delay_s)))

    async def submit_many(self, name: str, items: Iterable[Any]) -> list[AsyncTask | FnhostError]:
        ids = await self._run(calls.submit_many(name, items, *self._batch))
        return [i if isinstance(i, FnhostError) else AsyncTask(self, i) for i in ids]

    def task(self, task_id: str) -> AsyncTask:
        return AsyncTask(self, task_id)

    async def tasks(self, function: str | None = None, status: str | None = None,
                    since: Any = None, until: Any = None, prefix: str | None = None,
                    page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        filters = {"function": function, "status": status, "since": calls.when(since),
                   "until": calls.when(until), "prefix": prefix}
        cursor: str | None = None
        while True:
            page = await self._run(calls.page(filters, cursor, page_size))
            for task in page["tasks"]:
                yield task
            cursor = page.get("next_cursor")
            if not cursor:
                return
