"""The Python SDK and the user's CLI against a real platform (gateway, scheduler,
RabbitMQ, the MongoDB-wire server and Docker): every call goes over the HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fnhost
from fnhost import AsyncClient, Client, TaskInput
from tests.harness import ROOT, Platform

HELLO = ROOT / "functions" / "hello"


@pytest.fixture
def key(tenant: httpx.Client) -> str:
    return str(tenant.headers["Authorization"].split(" ", 1)[1])


@pytest.fixture
def fn(platform: Platform, key: str) -> Iterator[Client]:
    with Client(platform.url, key) as client:
        yield client


def test_deploy_a_directory_and_invoke(fn: Client) -> None:
    described = fn.deploy(HELLO)
    assert described["name"] == "hello"
    assert fn.invoke("hello", {"name": "Ada"}) == {"message": "hello, Ada"}
    assert [f["name"] for f in fn.functions()] == ["hello"]


def test_deploy_a_callable(fn: Client) -> None:
    factor = 6

    def times(event: Any, context: Any) -> dict[str, Any]:
        return {"product": event["n"] * factor}

    fn.deploy(times, name="times", timeout_s=5)
    assert fn.function("times")["config"]["timeout_s"] == 5
    assert fn.invoke("times", {"n": 7}) == {"product": 42}


def test_errors_are_named_after_the_api_codes(fn: Client, platform: Platform) -> None:
    with pytest.raises(fnhost.NotFound) as missing:
        fn.invoke("nowhere", {})
    assert missing.value.status == 404 and "nowhere" in missing.value.message
    with Client(platform.url, "not-a-key") as stranger, pytest.raises(fnhost.Unauthorized):
        stranger.functions()

    def broken(event: Any, context: Any) -> None:
        raise ValueError("no good " + str(event["x"]))

    fn.deploy(broken, name="broken")
    with pytest.raises(fnhost.FunctionError) as raised:
        fn.invoke("broken", {"x": 1})
    assert raised.value.error_type == "ValueError"
    assert raised.value.error_message == "no good 1"
    assert raised.value.stack_trace


def test_submit_and_follow_a_task(fn: Client) -> None:
    fn.deploy(HELLO)
    task = fn.submit("hello", {"name": "Grace"}, task_id="greet-1")
    assert task.id == "greet-1"
    assert task.result(timeout=30) == {"message": "hello, Grace"}
    assert task.status() == "Succeeded"
    with pytest.raises(fnhost.Conflict):
        fn.submit("hello", {}, task_id="greet-1")
    assert [t["task_id"] for t in fn.tasks(function="hello")] == ["greet-1"]


def test_a_failed_task_raises_its_error(fn: Client) -> None:
    def fails(event: Any, context: Any) -> None:
        raise RuntimeError("always")

    fn.deploy(fails, name="fails", **{"async": {"max_retry_attempts": 0}})
    task = fn.submit("fails", {})
    with pytest.raises(fnhost.FunctionError) as raised:
        task.result(timeout=30)
    assert raised.value.kind == "Failed" and raised.value.error_type == "RuntimeError"
    assert raised.value.task is not None and raised.value.task["task_id"] == task.id


def test_result_times_out(fn: Client) -> None:
    def slow(event: Any, context: Any) -> str:
        import time

        time.sleep(3)
        return "late"

    fn.deploy(slow, name="slow")
    task = fn.submit("slow", {})
    with pytest.raises(fnhost.TaskTimeout):
        task.result(timeout=0.3)
    assert task.result(timeout=30) == "late"


def test_submit_many_uses_batches(fn: Client) -> None:
    fn.deploy(HELLO)
    items: list[Any] = [{"name": str(i)} for i in range(230)]
    items.append(TaskInput({"name": "named"}, task_id="dup"))
    items.append(TaskInput({"name": "again"}, task_id="dup"))
    fn._batch = (100, fn._batch[1])
    outcomes = fn.submit_many("hello", items)
    assert len(outcomes) == 232
    tasks = [o for o in outcomes if isinstance(o, fnhost.Task)]
    assert len(tasks) == 231
    assert isinstance(outcomes[-1], fnhost.Conflict), outcomes[-1]
    assert outcomes[-2].id == "dup"  # type: ignore[union-attr]
    assert tasks[5].result(timeout=60) == {"message": "hello, 5"}
    assert outcomes[-2].result(timeout=60) == {"message": "hello, named"}  # type: ignore[union-attr]


def test_submit_many_splits_by_size(fn: Client) -> None:
    fn.deploy(HELLO)
    big = "x" * 300_000
    fn._batch = (100, 1024 * 1024)
    outcomes = fn.submit_many("hello", [{"name": big}] * 5 + [{"name": "x" * 2_000_000}])
    assert all(isinstance(o, fnhost.Task) for o in outcomes[:5]), outcomes
    assert isinstance(outcomes[5], fnhost.PayloadTooLarge), outcomes[5]


def test_async_client(platform: Platform, key: str) -> None:
    async def main() -> None:
        async with AsyncClient(platform.url, key) as fn:
            await fn.deploy(HELLO)
            assert await fn.invoke("hello", {"name": "Ada"}) == {"message": "hello, Ada"}
            task = await fn.submit("hello", {"name": "Grace"})
            assert await task.result(timeout=30) == {"message": "hello, Grace"}
            outcomes = await fn.submit_many("hello", [{"name": "a"}, {"name": "b"}])
            assert [await t.result(timeout=30) for t in outcomes] == [  # type: ignore[union-attr]
                {"message": "hello, a"}, {"message": "hello, b"}]
            listed = [t["task_id"] async for t in fn.tasks(function="hello", page_size=1)]
            assert sorted(listed) == sorted([task.id] + [t.id for t in outcomes])  # type: ignore[union-attr]
            with pytest.raises(fnhost.NotFound):
                await fn.function("nowhere")

    asyncio.run(main())


def test_a_callable_from_another_python_is_refused_before_upload() -> None:
    from fnhost import bundle

    with pytest.raises(fnhost.InvalidBundle) as refused:
        bundle.RUNTIME_PYTHON["python3.11"] = (3, 99)
        try:
            bundle.from_callable(lambda e, c: e)
        finally:
            bundle.RUNTIME_PYTHON["python3.11"] = (3, 11)
    assert "3.99" in str(refused.value)


def cli(platform: Platform, key: str, *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FNHOST_URL": platform.url, "FNHOST_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_deploy_invoke_submit(platform: Platform, key: str, tmp_path: Path) -> None:
    r = cli(platform, key, "deploy", str(HELLO))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "hello"
    r = cli(platform, key, "invoke", "hello", "--data", '{"name": "Ada"}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"message": "hello, Ada"}
    r = cli(platform, key, "invoke", "hello", "--async", "--wait", "--data", '{"name": "B"}')
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["status"] == "Succeeded" and record["result"] == {"message": "hello, B"}

    lines = [json.dumps({"payload": {"name": str(i)}, "task_id": f"cli-{i}"}) for i in range(150)]
    lines.append(json.dumps({"payload": {}, "task_id": "cli-0"}))
    r = cli(platform, key, "submit", "hello", stdin="\n".join(lines) + "\n")
    assert r.returncode == 1 and "1 task(s) refused" in r.stderr, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert [a.get("task_id") for a in answers[:150]] == [f"cli-{i}" for i in range(150)]
    assert answers[150]["status"] == 409
    r = cli(platform, key, "tasks", "get", "cli-149")
    assert r.returncode == 0 and json.loads(r.stdout)["task_id"] == "cli-149"


def test_cli_errors_are_one_line(platform: Platform, key: str, tmp_path: Path) -> None:
    r = cli(platform, key, "invoke", "nowhere")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "404 not_found" in r.stderr, r.stderr
    r = cli(platform, key, "invoke", "hello", "--data", "{nope")
    assert r.returncode == 2 and "--data is not JSON" in r.stderr
    (tmp_path / "requirements.txt").write_text("requests\n")
    (tmp_path / "main.py").write_text("def handler(e, c):\n    return 1\n")
    r = cli(platform, key, "deploy", str(tmp_path), "--name", "withreqs")
    assert r.returncode == 0, r.stderr
    assert "requirements.txt is not installed" in r.stderr


def test_the_sdk_imports_nothing_of_the_server() -> None:
    code = ("import sys, fnhost, fnhost.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'runtime', 'gateway'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
