"""What each SDK call sends and how it reads the answer, free of any I/O.

Every operation is a generator: it yields a `Call` (an HTTP request) or a `Sleep`, is
sent back the `Answer`, and returns its value. `Client` drives them with blocking
httpx and `AsyncClient` with asyncio, so both speak the API the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from fnhost import bundle
from fnhost.errors import FnhostError, FunctionError, PayloadTooLarge, TaskTimeout, from_answer

FINAL = frozenset({"Succeeded", "Failed", "Stopped", "Expired", "Invalid"})
BATCH_MAX_TASKS = 100  # the gateway's default FNHOST_BATCH_MAX_TASKS
BATCH_MAX_BYTES = 1024 * 1024  # its default async payload limit, which bounds a batch's body
POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    params: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None

    @property
    def is_json(self) -> bool:
        return "json" in self.headers.get("content-type", "")


@dataclass(frozen=True)
class TaskInput:
    """One task of `submit_many`: its payload, and optionally its id and delay."""

    payload: Any = None
    task_id: str | None = None
    delay_s: float | None = None


T = TypeVar("T")
Op = Generator[Call | Sleep, Answer | None, T]


def settings_from_env(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = url or os.environ.get("FNHOST_URL") or "http://127.0.0.1:8080"
    return url.rstrip("/"), api_key or os.environ.get("FNHOST_API_KEY") or None


def fn_path(name: str, tail: str = "") -> str:
    return f"/v1/functions/{quote(name, safe='')}{tail}"


def task_path(task_id: str, tail: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}{tail}"


def checked(answer: Answer) -> Answer:
    if answer.status >= 400:
        try:
            body = answer.json() if answer.is_json else None
        except ValueError:
            body = None
        raise from_answer(answer.status, body, answer.headers.get("retry-after"))
    return answer


def encode(payload: Any) -> tuple[bytes, str]:
    """The body and content type of a payload: bytes as they are, anything else as JSON."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), "application/octet-stream"
    return json.dumps(payload, separators=(",", ":")).encode(), "application/json"


def decode(answer: Answer) -> Any:
    """A result as the handler returned it: JSON decoded, text as str, else bytes."""
    if answer.is_json:
        return answer.json()
    return as_text(answer.content, answer.headers.get("content-type"))


def as_text(data: bytes, content_type: str | None) -> str | bytes:
    if content_type and content_type.startswith("text/"):
        return data.decode("utf-8", errors="replace")
    return data


def request(method: str, path: str, **kwargs: Any) -> Op[Any]:
    """One call whose answer must not be an error: its JSON, or its bytes when not JSON."""
    answer = yield Call(method, path, **kwargs)
    assert answer is not None
    checked(answer)
    return answer.json() if answer.is_json else answer.content


def document(method: str, path: str, **kwargs: Any) -> Op[dict[str, Any]]:
    """A call answered with a JSON object (a function, a task, a page)."""
    value = yield from request(method, path, **kwargs)
    if not isinstance(value, dict):
        raise FnhostError(f"{method} {path}: expected a JSON object, got {type(value).__name__}",
                          code="bad_answer")
    return value


def text(path: str) -> Op[str]:
    raw = yield from request("GET", path)
    return bytes(raw).decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


# ------------------------------------------------------------------ functions


def deploy(target: str | os.PathLike[str] | Callable[..., Any], name: str | None,
           config: dict[str, Any]) -> Op[dict[str, Any]]:
    if callable(target) and not isinstance(target, str | os.PathLike):
        data = bundle.from_callable(target, config.get("runtime", bundle.DEFAULT_RUNTIME))
        default = getattr(target, "__name__", "") or ""
    else:
        data, default = bundle.from_path(target)
    name = name or default.replace("_", "-")
    if not name:
        raise FnhostError("give the function a name (name=...)", code="bad_request", status=400)
    if config:
        files = {"code": ("bundle.zip", data, "application/zip"),
                 "config": ("config.json", json.dumps(config).encode(), "application/json")}
        return (yield from document("PUT", fn_path(name), files=files))
    return (yield from document("PUT", fn_path(name), content=data,
                               headers={"Content-Type": "application/zip"}))


# ------------------------------------------------------------------ invocations


def invoke(name: str, payload: Any, log_tail: bool) -> Op[Any]:
    body, content_type = encode(payload)
    headers = {"Content-Type": content_type}
    if log_tail:
        headers["X-Log-Type"] = "Tail"
    answer = yield Call("POST", fn_path(name, "/invocations"), headers=headers, content=body)
    assert answer is not None
    checked(answer)
    kind = answer.headers.get("x-function-error")
    if kind:
        error = answer.json() if answer.is_json else {"errorMessage": answer.content.decode(errors="replace")}
        raise FunctionError(error if isinstance(error, dict) else {}, kind=kind)
    return decode(answer)


def submit(name: str, payload: Any, task_id: str | None, delay_s: float | None) -> Op[str]:
    body, content_type = encode(payload)
    headers = {"Content-Type": content_type, "X-Invocation-Type": "Event"}
    if task_id is not None:
        headers["X-Task-Id"] = task_id
    if delay_s is not None:
        headers["X-Delay-Seconds"] = format(delay_s, "g")
    answer = yield Call("POST", fn_path(name, "/invocations"), headers=headers, content=body)
    assert answer is not None
    checked(answer)
    return str(answer.headers["x-task-id"])


def batch_entry(item: Any) -> dict[str, Any]:
    if not isinstance(item, TaskInput):
        item = TaskInput(payload=item)
    if isinstance(item.payload, bytes | bytearray | memoryview):
        raise FnhostError("a batch carries JSON payloads: submit bytes one by one with submit()",
                          code="bad_request", status=400)
    entry: dict[str, Any] = {"payload": item.payload}
    if item.task_id is not None:
        entry["task_id"] = item.task_id
    if item.delay_s is not None:
        entry["delay_s"] = item.delay_s
    return entry


def chunks(entries: Iterable[dict[str, Any]], max_tasks: int, max_bytes: int
           ) -> Iterator[list[tuple[dict[str, Any], bytes]]]:
    """Batches of at most `max_tasks` entries whose body stays under `max_bytes`."""
    current: list[tuple[dict[str, Any], bytes]] = []
    size = len(b'{"tasks":[]}')
    for entry in entries:
        encoded = json.dumps(entry, separators=(",", ":")).encode()
        if current and (len(current) >= max_tasks or size + len(encoded) + 1 > max_bytes):
            yield current
            current, size = [], len(b'{"tasks":[]}')
        current.append((entry, encoded))
        size += len(encoded) + 1
    if current:
        yield current


def submit_many(name: str, items: Iterable[Any], max_tasks: int, max_bytes: int
                ) -> Op[list[str | FnhostError]]:
    """Every item's task id, or the error that refused it, in order: one request per
    batch of up to `max_tasks` tasks, each accepted task durable before its answer."""
    out: list[str | FnhostError] = []
    for batch in chunks(map(batch_entry, items), max_tasks, max_bytes):
        if len(batch) == 1 and len(batch[0][1]) > max_bytes:
            out.append(PayloadTooLarge(f"the task's payload is over the batch limit of {max_bytes} bytes"))
            continue
        body = b'{"tasks":[' + b",".join(encoded for _, encoded in batch) + b"]}"
        results = yield from document("POST", fn_path(name, "/invocations/batch"), content=body,
                                     headers={"Content-Type": "application/json"})
        for r in results["results"]:
            if r.get("status") == 202:
                out.append(r["task_id"])
            else:
                out.append(from_answer(int(r.get("status") or 0), r))
    return out


# ------------------------------------------------------------------ tasks


def wait_final(task_id: str, timeout: float | None, clock: Callable[[], float]
               ) -> Op[dict[str, Any]]:
    """Poll the task until it is final (backing off to once a second): its record."""
    deadline = None if timeout is None else clock() + timeout
    pause = POLL_FIRST_S
    while True:
        doc = yield from document("GET", task_path(task_id))
        if doc["status"] in FINAL:
            return doc
        if deadline is not None and clock() >= deadline:
            raise TaskTimeout(f"task {task_id} is still {doc['status']} after {timeout} s",
                              body=doc)
        wait = pause if deadline is None else min(pause, max(0.0, deadline - clock()))
        yield Sleep(wait)
        pause = min(POLL_MAX_S, pause * 2)


def result(task_id: str, timeout: float | None, clock: Callable[[], float]) -> Op[Any]:
    doc = yield from wait_final(task_id, timeout, clock)
    if doc["status"] == "Succeeded":
        value = doc.get("result")
        if isinstance(value, dict) and set(value) == {"base64"}:
            import base64

            return as_text(base64.b64decode(value["base64"]), doc.get("result_type"))
        return value
    error = doc.get("error") or {"errorType": doc["status"], "errorMessage": f"task {doc['status']}"}
    raise FunctionError(error, kind=doc["status"], task=doc)


def page(filters: dict[str, Any], cursor: str | None, page_size: int) -> Op[dict[str, Any]]:
    params = {k: str(v) for k, v in filters.items() if v is not None}
    params["limit"] = str(page_size)
    if cursor:
        params["cursor"] = cursor
    return (yield from document("GET", "/v1/tasks", params=params))


def when(value: Any) -> str | None:
    """A `since`/`until` filter: a datetime, epoch seconds or an ISO 8601 string."""
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def patch(name: str, config: dict[str, Any]) -> Op[dict[str, Any]]:
    return (yield from document("PATCH", fn_path(name), content=json.dumps(config).encode(),
                               headers={"Content-Type": "application/json"}))
