"""What a caller says about its async tasks: a task's id and delay, and a batch of tasks.

One set of rules for both ways of submitting: the `X-Task-Id` / `X-Delay-Seconds`
headers of a single Event invocation, and the `task_id` / `delay_s` fields of each
entry of `POST /v1/functions/{name}/invocations/batch`. Pure: no I/O.

A batch body is judged as a whole first (JSON, an object with a non-empty `tasks`
list of at most the bound: else the request is a 400), then entry by entry: a bad
entry, or a task id already given earlier in the same batch, is that entry's own
error and takes nothing from the others.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from runtime.errors import BadRequest, Conflict, FnhostError

TASK_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
TASK_ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . : -"
MAX_DELAY_S = 86400
# What an entry of a batch may hold; the body itself holds `tasks` only.
ENTRY_FIELDS = frozenset({"payload", "task_id", "delay_s"})
BATCH_CONTENT_TYPE = "application/json"  # what each task of a batch is stored and run with
MAX_SHOWN = 64  # characters of a caller's field name an error shows


def task_id(raw: str | None, field: str) -> str | None:
    """A caller-chosen task id (None: the caller chose none)."""
    if raw is None:
        return None
    if not TASK_ID_RE.fullmatch(raw):
        raise BadRequest(f"{field} must be {TASK_ID_RULE}", field=field)
    return raw


def delay_s(value: float, field: str) -> float:
    """A delay in seconds, from 0 to MAX_DELAY_S (NaN and infinities are not numbers here)."""
    if not (math.isfinite(value) and 0 <= value <= MAX_DELAY_S):
        raise BadRequest(f"{field} must be a number from 0 to {MAX_DELAY_S}", field=field)
    return value


def delay_header(raw: str | None, field: str) -> float:
    """`X-Delay-Seconds` (absent: no delay)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    return delay_s(value, field)


@dataclass(frozen=True)
class Entry:
    """One valid task of a batch: its payload as JSON bytes."""

    payload: bytes
    task_id: str | None
    delay_s: float


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class NumberOutOfRange:
    """A number too large for a float (`1e400`), which the encoder below refuses, rather
    than infinity, which it would send on as `null`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> float | NumberOutOfRange:
    value = float(text)
    return value if math.isfinite(value) else NumberOutOfRange(text)


def _load(body: bytes) -> Any:
    # The standard parser, not orjson: orjson reads an integer past 64 bits as a float,
    # which would change a task's payload without a word. Here such a payload reaches
    # the encoder below as it was sent, and is refused by name (so is a number past a
    # float's range).
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"the body is not JSON: {str(exc)[:200]}") from None


def parse_batch(body: bytes, max_tasks: int) -> list[Entry | FnhostError]:
    """The entries of a batch body, in order: each an Entry or its own error (400, or
    409 for a task id given earlier in the batch). BadRequest when the body as a whole
    is not a batch."""
    doc = _load(body)
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object: {"tasks": [...]}')
    unknown = sorted(set(doc) - {"tasks"})
    if unknown:
        name = _shown(unknown[0])
        raise BadRequest(f"unknown field {name!r}: the body holds `tasks` only", field=name)
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest("`tasks` must be a non-empty list of tasks", field="tasks")
    if len(tasks) > max_tasks:
        raise BadRequest(
            f"`tasks` holds {len(tasks)} tasks: at most {max_tasks} a batch", field="tasks"
        )
    out: list[Entry | FnhostError] = []
    first_at: dict[str, int] = {}
    for i, raw in enumerate(tasks):
        try:
            entry = _entry(raw, f"tasks[{i}]")
        except BadRequest as exc:
            out.append(exc)
            continue
        if entry.task_id is not None:
            earlier = first_at.setdefault(entry.task_id, i)
            if earlier != i:
                out.append(Conflict(
                    f"task {entry.task_id!r} is given twice in this batch (first at tasks[{earlier}])",
                    field=f"tasks[{i}].task_id",
                ))
                continue
        out.append(entry)
    return out


def _shown(name: str) -> str:
    """A field name the caller sent, as an error may show it: short, and encodable (a
    lone surrogate, which JSON's escapes allow, cannot be written back as UTF-8)."""
    name = name[:MAX_SHOWN]
    return name if name.isprintable() and name.isascii() else ascii(name)[1:-1]


def _entry(raw: Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object with payload, task_id, delay_s", field=where)
    unknown = sorted(set(raw) - ENTRY_FIELDS)
    if unknown:
        name = _shown(unknown[0])
        raise BadRequest(
            f"{where}: unknown field {name!r} (a task has payload, task_id, delay_s)",
            field=f"{where}.{name}",
        )
    tid = raw.get("task_id")
    if tid is not None and not isinstance(tid, str):
        raise BadRequest(f"{where}.task_id must be {TASK_ID_RULE}", field=f"{where}.task_id")
    tid = task_id(tid, f"{where}.task_id")
    delay = raw.get("delay_s")
    if delay is None:
        delay = 0.0
    elif isinstance(delay, bool) or not isinstance(delay, int | float):
        raise BadRequest(
            f"{where}.delay_s must be a number from 0 to {MAX_DELAY_S}", field=f"{where}.delay_s"
        )
    else:
        # Checked in range before float(): an integer past a float's range does not convert.
        delay = delay_s(float(delay) if abs(delay) <= MAX_DELAY_S else math.inf, f"{where}.delay_s")
    try:
        payload = orjson.dumps(raw.get("payload"))
    except orjson.JSONEncodeError as exc:
        # An integer past 64 bits, nesting past 254 levels, a lone surrogate.
        raise BadRequest(
            f"{where}.payload cannot be encoded as JSON: {exc}", field=f"{where}.payload"
        ) from None
    return Entry(payload, tid, delay)
