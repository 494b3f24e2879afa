"""The blocking client: `Client(url, api_key)` and the `Task` handles it returns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from fnhost import calls
from fnhost.calls import Answer, Call, Op, Sleep, T
from fnhost.errors import FnhostError, Unavailable


def transport_error(exc: httpx.HTTPError, url: str) -> FnhostError:
    return Unavailable(f"cannot reach fnhost at {url}: {type(exc).__name__}: {exc}",
                       code="unreachable")


class Task:
    """An async task: its id, and calls that read or act on it."""

    def __init__(self, client: Client, task_id: str) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def get(self) -> dict[str, Any]:
        """The task's record: status, history, timings, result or error, destination."""
        return self.client._run(calls.document("GET", calls.task_path(self.id)))

    def status(self) -> str:
        return str(self.get()["status"])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The record once the task is final; `TaskTimeout` after `timeout` seconds."""
        return self.client._run(calls.wait_final(self.id, timeout, time.monotonic))

    def result(self, timeout: float | None = None) -> Any:
        """The function's result once it succeeded; `FunctionError` if it ended otherwise."""
        return self.client._run(calls.result(self.id, timeout, time.monotonic))

    def stop(self) -> dict[str, Any]:
        return self.client._run(calls.document("POST", calls.task_path(self.id, "/stop")))

    def retry(self) -> dict[str, Any]:
        return self.client._run(calls.document("POST", calls.task_path(self.id, "/retry")))

    def logs(self) -> str:
        return self.client._run(calls.text(calls.task_path(self.id, "/logs")))


class Client:
    """fnhost's API from Python. `url` and `api_key` default to `FNHOST_URL` and
    `FNHOST_API_KEY`; one connection pool is kept (close it, or use `with`)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, batch_max_tasks: int = calls.BATCH_MAX_TASKS,
                 batch_max_bytes: int = calls.BATCH_MAX_BYTES) -> None:
        self.url, self.api_key = calls.settings_from_env(url, api_key)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._batch = (batch_max_tasks, batch_max_bytes)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(self._send(step))
        except StopIteration as done:
            value: T = done.value
            return value

    def _send(self, call: Call) -> Answer:
        try:
            r = self._http.request(call.method, call.path, headers=call.headers,
                                   content=call.content, params=call.params, files=call.files)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.url) from exc
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    # -------------------------------------------------------------- functions
    def deploy(self, path_or_callable: str | os.PathLike[str] | Callable[..., Any],
               name: str | None = None, **config: Any) -> dict[str, Any]:
        """Upload a directory, a zip or a callable as function `name` (by default the
        directory's, zip's or callable's name); `config` keys as in the API."""
        return self._run(calls.deploy(path_or_callable, name, config))

    def functions(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self._run(calls.document("GET", "/v1/functions"))["functions"]
        return listed

    def function(self, name: str) -> dict[str, Any]:
        return self._run(calls.document("GET", calls.fn_path(name)))

    def configure(self, name: str, **config: Any) -> dict[str, Any]:
        """Change only the named config keys (PATCH)."""
        return self._run(calls.patch(name, config))

    def delete(self, name: str) -> None:
        self._run(calls.request("DELETE", calls.fn_path(name)))

    def pause(self, name: str) -> dict[str, Any]:
        return self._run(calls.document("POST", calls.fn_path(name, "/pause")))

    def resume(self, name: str) -> dict[str, Any]:
        return self._run(calls.document("POST", calls.fn_path(name, "/resume")))

    # -------------------------------------------------------------- invocations
    def invoke(self, name: str, payload: Any = None, *, log_tail: bool = False) -> Any:
        """A synchronous call: the function's result (JSON decoded, else bytes), or
        `FunctionError` when it raised or timed out."""
        return self._run(calls.invoke(name, payload, log_tail))

    def submit(self, name: str, payload: Any = None, task_id: str | None = None,
               delay_s: float | None = None) -> Task:
        """An async task, durable once this returns."""
        return Task(self, self._run(calls.submit(name, payload, task_id, delay_s)))

    def submit_many(self, name: str, items: Iterable[Any]) -> list[Task | FnhostError]:
        """Many async tasks in as few requests as the batch limit allows: for each item
        (a JSON payload or a `TaskInput`), its `Task`, or the error that refused it
        (for example `Throttled` with `retry_after_s`, or `Conflict` for a repeated id)."""
        ids = self._run(calls.submit_many(name, items, *self._batch))
        return [i if isinstance(i, FnhostError) else Task(self, i) for i in ids]

    # -------------------------------------------------------------- tasks
    def task(self, task_id: str) -> Task:
        return Task(self, task_id)

    def tasks(self, function: str | None = None, status: str | None = None,
              since: Any = None, until: Any = None, prefix: str | None = None,
              page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every task the filters select, newest first, fetched a page at a time."""
        filters = {"function": function, "status": status, "since": calls.when(since),
                   "until": calls.when(until), "prefix": prefix}
        cursor: str | None = None
        while True:
            page = self._run(calls.page(filters, cursor, page_size))
            yield from page["tasks"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
