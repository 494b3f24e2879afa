"""A function cannot fill the host's disk, nor burn CPU between its invocations, nor
pass the log and result limits by changing the agent that runs inside its process.

- Its container's own output (written to file descriptor 1 around the agent's
  capture, during or after an invocation) is kept by Docker in one bounded log.
- An idle warm container is frozen: a thread its function left running gets no
  CPU until the next invocation thaws it; a frozen container is removed as any.
- The scheduler cuts logs to FNHOST_LOG_LIMIT_BYTES and refuses a result over
  FNHOST_RESULT_LIMIT_BYTES, whatever the agent sends: the task ends once, with
  its record stored, rather than being redelivered until the delivery limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from runtime.settings import Settings
from tests.harness import (
    MongoServer,
    Platform,
    container_gone,
    deploy,
    function_zip,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)

DEFAULTS = Settings()

# Writes to its container's stdout (fd 1, under the agent's capture) for `seconds`
# during the invocation, and leaves a thread writing after it.
WRITER = """
import os
import threading
import time

CHUNK = b"x" * 65536 + b"\\n"


def spam():
    while True:
        os.write(1, CHUNK)


def handler(event, context):
    threading.Thread(target=spam, daemon=True).start()
    end = time.monotonic() + event["seconds"]
    while time.monotonic() < end:
        os.write(1, CHUNK)
    return "written"
"""

# Its first invocation leaves a thread spinning on a CPU.
BURNER = """
import threading

started = []


def spin():
    while True:
        pass


def handler(event, context):
    if not started:
        started.append(threading.Thread(target=spin, daemon=True))
        started[0].start()
    return len(started)
"""

# Lifts the agent's own log cap from inside (the agent runs in the function's
# process), then writes 20 MB of logs: past MongoDB's 16 MB document limit.
LOUD = """
import sys


def handler(event, context):
    sys.modules["__main__"]._sink.limit = 1 << 30
    sys.stdout.write("z" * (20 << 20) + "the end\\n")
    return "loud"
"""

# A result over the default FNHOST_RESULT_LIMIT_BYTES (6 MB).
BIG = """
def handler(event, context):
    return "r" * (7 << 20)
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def container_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text[:2000]
    return r.headers["x-fnhost-container"]


def cpu_seconds(engine: docker.DockerClient, container: str) -> float:
    """CPU the container used over the engine's last sampling period (about 1 s)."""
    stats: dict[str, Any] = engine.api.stats(container, stream=False)
    used = stats["cpu_stats"]["cpu_usage"]["total_usage"] - stats["precpu_stats"]["cpu_usage"]["total_usage"]
    return float(used) / 1e9


def test_a_containers_own_output_is_kept_in_a_bounded_log(
    tenant: httpx.Client, engine: docker.DockerClient
) -> None:
    r = deploy(tenant, "writer", function_zip(WRITER), {"timeout_s": 20})
    assert r.status_code == 201, r.text
    r = invoke(tenant, "writer", {"seconds": 3})
    container = container_of(r)
    assert r.text == "written"
    attrs = engine.api.inspect_container(container)
    # Its thread went on writing after the invocation (until the container was frozen);
    # the log stays within its bound (one json-encoded write past it at most).
    time.sleep(2)
    size = os.path.getsize(attrs["LogPath"])
    assert size <= DEFAULTS.container_log_bytes + 256 * 1024, f"container log of {size} bytes"
    # Bounded in the create call, not by the daemon's configuration.
    log_config = attrs["HostConfig"]["LogConfig"]
    assert log_config["Type"] == "json-file", log_config
    assert log_config["Config"].get("max-size") == str(DEFAULTS.container_log_bytes), log_config
    assert log_config["Config"].get("max-file") == "1", log_config
    # The function still serves.
    r = invoke(tenant, "writer", {"seconds": 0})
    assert container_of(r) == container


@pytest.fixture(scope="module")
def docker_paused(mongo: MongoServer) -> Iterator[Platform]:
    """A platform that freezes idle containers through the engine (pause/unpause), as
    where the scheduler cannot reach the containers' cgroups."""
    with own_platform(mongo.url, freeze_idle="docker") as p:
        yield p


@pytest.mark.parametrize("freeze", ["auto", "docker"])
def test_an_idle_warm_container_uses_no_cpu(
    freeze: str, request: pytest.FixtureRequest, engine: docker.DockerClient
) -> None:
    platform: Platform = request.getfixturevalue("platform" if freeze == "auto" else "docker_paused")
    client = platform.new_tenant()
    try:
        r = deploy(client, "burner", function_zip(BURNER))
        assert r.status_code == 201, r.text
        container = container_of(invoke(client, "burner"))
        time.sleep(1.0)  # past FNHOST_FREEZE_AFTER_S
        # Frozen within seconds (the engine's pause, on a loaded host, may take one or two).
        used = [cpu_seconds(engine, container)]
        while used[-1] >= 0.05 and len(used) < 5:
            used.append(cpu_seconds(engine, container))
        assert used[-1] < 0.05, f"the idle container used {used} CPU-s in successive seconds"
        # Claimed again, it is thawed: warm, the same container, its thread still there.
        r = invoke(client, "burner")
        assert container_of(r) == container
        assert r.headers["x-fnhost-start"] == "warm"
        assert r.json() == 1
        # A frozen container is removed like any other (its function deleted here).
        time.sleep(1.0)
        assert client.delete("/v1/functions/burner").status_code in (200, 204)
        assert container_gone(container, timeout=20), f"container {container} still there"
    finally:
        client.close()


def test_a_frozen_container_stops_at_once(tenant: httpx.Client, engine: docker.DockerClient) -> None:
    """As the engine stops it on its own shutdown: Docker does not know it is frozen."""
    r = deploy(tenant, "to-stop", function_zip(BURNER))
    assert r.status_code == 201, r.text
    container = container_of(invoke(tenant, "to-stop"))
    time.sleep(1.0)  # frozen by now
    started = time.monotonic()
    engine.api.stop(container, timeout=10)
    took = time.monotonic() - started
    assert took < 5, f"docker stop of a frozen container took {took:.1f} s"
    # The pool saw it go: the next invocation gets another container.
    r = invoke(tenant, "to-stop")
    assert container_of(r) != container, r.headers


def test_a_log_past_the_limit_is_cut_by_the_scheduler(tenant: httpx.Client) -> None:
    r = deploy(tenant, "loud", function_zip(LOUD), {"timeout_s": 30})
    assert r.status_code == 201, r.text
    r = invoke(tenant, "loud", headers={"X-Log-Type": "Tail"})
    assert r.status_code == 200, r.text[:500]
    assert r.text == "loud"
    r = submit_event(tenant, "loud")
    assert r.status_code == 202, r.text
    task = wait_task(tenant, r.headers["x-task-id"], timeout=60)
    assert task["status"] == "Succeeded", task
    assert task["attempts"] == 1, task
    assert [h["status"] for h in task["history"]].count("Running") <= 1, task["history"]
    logs = tenant.get(f"/v1/tasks/{task['task_id']}/logs")
    assert logs.status_code == 200, logs.text[:500]
    assert len(logs.content) <= DEFAULTS.log_limit_bytes, len(logs.content)
    assert logs.content.endswith(b"the end\n"), logs.content[-100:]


def test_a_result_past_the_limit_is_a_clear_error_once(tenant: httpx.Client) -> None:
    r = deploy(tenant, "big", function_zip(BIG), {"timeout_s": 30})
    assert r.status_code == 201, r.text
    r = invoke(tenant, "big")
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("x-function-error") == "Unhandled", r.headers
    error = r.json()
    assert error["errorType"] == "Runtime.ResponseSizeTooLarge", error
    assert str(DEFAULTS.result_limit_bytes) in error["errorMessage"], error
    r = submit_event(tenant, "big")
    assert r.status_code == 202, r.text
    task = wait_task(tenant, r.headers["x-task-id"], timeout=60)
    assert task["status"] == "Failed", task
    assert task["attempts"] == 1, task
    assert task["error"]["errorType"] == "Runtime.ResponseSizeTooLarge", task
    # The container stays in step and serves its next invocation.
    assert invoke(tenant, "big").headers.get("x-function-error") == "Unhandled"
