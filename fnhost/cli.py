"""`fnhost` for users: deploy, invoke, submit and follow tasks over the HTTP API.

Reads FNHOST_URL and FNHOST_API_KEY (or --url and --api-key). Output is JSON, one
document (or, for streams of tasks, one line) per result, for scripts; an error is
one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from fnhost import bundle
from fnhost.calls import TaskInput
from fnhost.client import Client
from fnhost.errors import FnhostError, FunctionError


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"fnhost: {message}", err=True)
    raise SystemExit(code)


def emit(value: Any) -> None:
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return
    click.echo(json.dumps(value, indent=None, separators=(",", ":"), default=str))


def client(ctx: click.Context) -> Client:
    state: dict[str, Any] = ctx.ensure_object(dict)
    if "client" not in state:
        state["client"] = Client(**state["options"])
    made: Client = state["client"]
    return made


def payload_of(data: str | None) -> Any:
    """--data: JSON text, or @FILE (JSON), or @- (JSON from stdin)."""
    if data is None:
        return None
    if data.startswith("@"):
        text = sys.stdin.read() if data == "@-" else Path(data[1:]).read_text()
    else:
        text = data
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"--data is not JSON: {exc}", 2)


class Group(click.Group):
    """Turns the SDK's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FunctionError as exc:
            emit(exc.body if exc.task is None else exc.task)
            fail(f"function error: {exc}", 1)
        except FnhostError as exc:
            fail(str(exc), 1)


@click.group(cls=Group, help=__doc__, epilog="Operators: fnhost up | gateway | scheduler | "
             "check-settings run the platform.")
@click.option("--url", envvar="FNHOST_URL", help="the gateway's URL (FNHOST_URL)")
@click.option("--api-key", envvar="FNHOST_API_KEY", help="the tenant's API key (FNHOST_API_KEY)")
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None) -> None:
    ctx.ensure_object(dict)["options"] = {"url": url, "api_key": api_key}
    ctx.call_on_close(lambda: ctx.obj.get("client") and ctx.obj["client"].close())


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", help="the function's name (default: the directory's or zip's)")
@click.option("--memory-mb", type=int)
@click.option("--timeout-s", type=float)
@click.option("--max-concurrency", type=int)
@click.pass_context
def deploy(ctx: click.Context, path: str, name: str | None, memory_mb: int | None,
           timeout_s: float | None, max_concurrency: int | None) -> None:
    """Upload a directory (zipped for you) or a zip as a function."""
    note = bundle.requirements_note(path)
    if note:
        click.echo(f"fnhost: note: {note}", err=True)
    config = {k: v for k, v in {"memory_mb": memory_mb, "timeout_s": timeout_s,
                                "max_concurrency": max_concurrency}.items() if v is not None}
    emit(client(ctx).deploy(path, name, **config))


@main.command()
@click.argument("name")
@click.option("--data", help="the payload: JSON, @FILE or @- (stdin)")
@click.option("--async", "is_async", is_flag=True, help="submit a task instead of a sync call")
@click.option("--wait", is_flag=True, help="with --async: wait for the task's end, print its record")
@click.option("--task-id", help="with --async: the task's id")
@click.option("--delay-s", type=float, help="with --async: start no sooner than this")
@click.option("--timeout", type=float, default=None, help="with --wait: give up after this")
@click.pass_context
def invoke(ctx: click.Context, name: str, data: str | None, is_async: bool, wait: bool,
           task_id: str | None, delay_s: float | None, timeout: float | None) -> None:
    """Invoke a function: its result (sync), or its task (--async)."""
    payload = payload_of(data)
    fn = client(ctx)
    if not is_async:
        if wait or task_id or delay_s is not None:
            fail("--wait, --task-id and --delay-s go with --async", 2)
        emit(fn.invoke(name, payload))
        return
    task = fn.submit(name, payload, task_id=task_id, delay_s=delay_s)
    if not wait:
        emit({"task_id": task.id})
        return
    record = task.wait(timeout)
    emit(record)
    if record["status"] != "Succeeded":
        raise SystemExit(1)


def task_lines(source: IO[str]) -> Iterator[TaskInput]:
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            fail(f"line {number}: not JSON: {exc}", 2)
        if not isinstance(entry, dict) or not set(entry) <= {"payload", "task_id", "delay_s"}:
            fail(f"line {number}: a task is an object with payload, task_id and delay_s", 2)
        yield TaskInput(entry.get("payload"), entry.get("task_id"), entry.get("delay_s"))


@main.command()
@click.argument("name")
@click.argument("tasks", type=click.File("r"), default="-")
@click.pass_context
def submit(ctx: click.Context, name: str, tasks: IO[str]) -> None:
    """Submit many async tasks, in batches: TASKS is a file (or - for stdin) of JSON
    lines, each {"payload": ..., "task_id": ..., "delay_s": ...}. Prints one line per
    task: its id, or its error; exits 1 when any was refused."""
    refused = 0
    for outcome in client(ctx).submit_many(name, task_lines(tasks)):
        if isinstance(outcome, FnhostError):
            refused += 1
            emit({"status": outcome.status, "error": {"code": outcome.code, "message": outcome.message,
                                                     "retry_after_s": outcome.retry_after_s}})
        else:
            emit({"task_id": outcome.id, "status": 202})
    if refused:
        fail(f"{refused} task(s) refused", 1)


@main.group()
def tasks() -> None:
    """Read and act on tasks."""


@tasks.command("get")
@click.argument("task_id")
@click.pass_context
def tasks_get(ctx: click.Context, task_id: str) -> None:
    emit(client(ctx).task(task_id).get())


@tasks.command("list")
@click.option("--function")
@click.option("--status")
@click.option("--since")
@click.option("--until")
@click.option("--prefix")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def tasks_list(ctx: click.Context, /, limit: int, **filters: Any) -> None:
    """Tasks newest first, one JSON line each."""
    for i, task in enumerate(client(ctx).tasks(**filters, page_size=min(limit, 500))):
        if i >= limit:
            break
        emit(task)


@tasks.command("logs")
@click.argument("task_id")
@click.pass_context
def tasks_logs(ctx: click.Context, task_id: str) -> None:
    click.echo(client(ctx).task(task_id).logs(), nl=False)


@tasks.command("stop")
@click.argument("task_id")
@click.pass_context
def tasks_stop(ctx: click.Context, task_id: str) -> None:
    emit(client(ctx).task(task_id).stop())


@tasks.command("retry")
@click.argument("task_id")
@click.pass_context
def tasks_retry(ctx: click.Context, task_id: str) -> None:
    emit(client(ctx).task(task_id).retry())


@main.group()
def functions() -> None:
    """List, describe and delete functions."""


@functions.command("list")
@click.pass_context
def functions_list(ctx: click.Context) -> None:
    for record in client(ctx).functions():
        emit(record)


@functions.command("get")
@click.argument("name")
@click.pass_context
def functions_get(ctx: click.Context, name: str) -> None:
    emit(client(ctx).function(name))


@functions.command("delete")
@click.argument("name")
@click.pass_context
def functions_delete(ctx: click.Context, name: str) -> None:
    client(ctx).delete(name)
