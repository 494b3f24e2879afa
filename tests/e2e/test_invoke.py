"""Sync invocation through HTTP, end to end: the contract's headers, bodies and errors.

This module's platform (2 stem cells, long keep-alive) runs on a RabbitMQ vhost
of its own, so its gateway never routes a tenant to another platform's
scheduler; each test gets a fresh tenant, so function names never clash.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import (
    MongoServer,
    Platform,
    assert_error,
    container_gone,
    deploy,
    function_zip,
    invoke,
    own_platform,
    returns,
)

MB = 1 << 20


@pytest.fixture(scope="module")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    """Stands in for the session platform here (the `tenant` fixture uses this one)."""
    with own_platform(mongo.url) as p:
        yield p


def url(name: str) -> str:
    return f"/v1/functions/{name}/invocations"


def deployed(
    client: httpx.Client, name: str, bundle: bytes | str, config: dict[str, Any] | None = None
) -> str:
    """Deploy and return the new version."""
    r = deploy(client, name, bundle, config)
    assert r.status_code in (200, 201), r.text
    return str(client.get(f"/v1/functions/{name}").json()["version"])


def assert_function_error(r: httpx.Response, kind: str = "Unhandled") -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert r.headers.get("x-function-error") == kind, r.headers
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert isinstance(body["errorType"], str) and body["errorType"]
    assert isinstance(body["errorMessage"], str)
    assert isinstance(body["stackTrace"], list)
    return body


def test_cold_then_warm_on_the_same_container(tenant: httpx.Client) -> None:
    version = deployed(tenant, "hello", "hello")
    first = invoke(tenant, "hello", {"name": "Ada"})
    assert first.status_code == 200, first.text
    assert first.json() == {"message": "hello, Ada"}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-fnhost-start"] in ("stem", "cold")
    assert first.headers["x-fnhost-version"] == version
    assert "x-function-error" not in first.headers
    container = first.headers["x-fnhost-container"]
    assert len(container) == 12
    request_ids = {first.headers["x-request-id"]}
    for name in ("Bo", "Cy"):
        again = invoke(tenant, "hello", {"name": name})
        assert again.status_code == 200, again.text
        assert again.json() == {"message": f"hello, {name}"}
        assert again.headers["x-fnhost-start"] == "warm"
        assert again.headers["x-fnhost-container"] == container
        request_ids.add(again.headers["x-request-id"])
    assert len(request_ids) == 3


def test_bytes_round_trip_through_echo(tenant: httpx.Client) -> None:
    deployed(tenant, "echo", "echo")
    data = bytes(range(256)) * 64 + os.urandom(300_000) + b"\x00\xff\r\n"
    r = tenant.post(url("echo"), content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == data
    # Not JSON-typed input stays bytes, even when it looks like JSON.
    r = tenant.post(url("echo"), content=b'{"a": 1}', headers={"Content-Type": "text/plain"})
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == b'{"a": 1}'
    # JSON in, JSON out.
    r = invoke(tenant, "echo", {"list": [1, 2.5, None, "é"]})
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"list": [1, 2.5, None, "é"]}


def test_payload_limit_is_6_mb(tenant: httpx.Client) -> None:
    deployed(tenant, "echo", "echo")
    data = os.urandom(6 * MB)
    r = tenant.post(url("echo"), content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text[:500]
    assert r.content == data
    too_big = tenant.post(
        url("echo"), content=data + b"x", headers={"Content-Type": "application/octet-stream"}
    )
    assert_error(too_big, 413, "payload_too_large")


def test_str_result_is_text(tenant: httpx.Client) -> None:
    deployed(tenant, "text", function_zip(returns("héllo, wörld")))
    r = invoke(tenant, "text")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert r.content == "héllo, wörld".encode()


def test_function_error(tenant: httpx.Client) -> None:
    deployed(tenant, "fails", "always-fails")
    r = invoke(tenant, "fails", {})
    body = assert_function_error(r)
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "this function always fails"
    assert body["stackTrace"] and all(isinstance(line, str) for line in body["stackTrace"])
    assert any("main.py" in line for line in body["stackTrace"])
    # A handler error leaves the container healthy: the next call is warm on it.
    again = invoke(tenant, "fails", {})
    assert_function_error(again)
    assert again.headers["x-fnhost-start"] == "warm"
    assert again.headers["x-fnhost-container"] == r.headers["x-fnhost-container"]


def test_timeout_kills_the_container(tenant: httpx.Client) -> None:
    deployed(tenant, "slow", "sleep", {"timeout_s": 1})
    warm = invoke(tenant, "slow", {"seconds": 0})
    assert warm.status_code == 200, warm.text
    container = warm.headers["x-fnhost-container"]

    started = time.monotonic()
    r = invoke(tenant, "slow", {"seconds": 5})
    elapsed = time.monotonic() - started
    body = assert_function_error(r, "Timeout")
    assert elapsed < 3.0, f"a 1 s timeout answered after {elapsed:.1f} s"
    assert body["errorType"] == "Timeout"
    assert "1.00 seconds" in body["errorMessage"]
    assert r.headers["x-fnhost-container"] == container
    assert container_gone(container, timeout=5), f"container {container} still exists"

    after = invoke(tenant, "slow", {"seconds": 0})
    assert after.status_code == 200, after.text
    assert "x-function-error" not in after.headers
    assert after.headers["x-fnhost-start"] in ("stem", "cold")
    assert after.headers["x-fnhost-container"] != container


def test_log_tail(tenant: httpx.Client) -> None:
    deployed(tenant, "logs", "prints-logs")
    r = invoke(tenant, "logs", {"lines": 5}, headers={"X-Log-Type": "Tail"})
    assert r.status_code == 200, r.text
    assert r.json() == {"stdout_lines": 5, "stderr_lines": 3}
    logs = base64.b64decode(r.headers["x-log-result"], validate=True).decode()
    for i in range(1, 6):
        assert f"stdout line {i} of 5" in logs
    for i in range(1, 4):
        assert f"stderr line {i} of 3" in logs

    # Many lines: only the last 4 KB come back, ending with the last lines printed.
    r = invoke(tenant, "logs", {"lines": 2000}, headers={"X-Log-Type": "Tail"})
    raw = base64.b64decode(r.headers["x-log-result"], validate=True)
    assert 3000 < len(raw) <= 4096
    text = raw.decode(errors="replace")
    assert "stdout line 2000 of 2000" in text
    assert "stdout line 1 of 2000 " not in text
    assert text.rstrip().endswith("stderr line 3 of 3")

    # Without the header there is no log result.
    r = invoke(tenant, "logs", {"lines": 1})
    assert r.status_code == 200
    assert "x-log-result" not in r.headers


def test_dry_run_uses_no_container(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    for _ in range(2):
        r = invoke(tenant, "hello", {"name": "x"}, headers={"X-Invocation-Type": "DryRun"})
        assert r.status_code == 204, r.text
        assert r.content == b""
        assert r.headers["x-request-id"]
        assert "x-fnhost-container" not in r.headers
    # Nothing was specialised for it: the first real call still has to start one.
    first = invoke(tenant, "hello", {"name": "x"})
    assert first.status_code == 200
    assert first.headers["x-fnhost-start"] in ("stem", "cold")
    # A dry run of an unknown function is still a 404.
    r = invoke(tenant, "nope", {}, headers={"X-Invocation-Type": "DryRun"})
    assert_error(r, 404, "not_found")


def test_invocation_type_header(tenant: httpx.Client) -> None:
    deployed(tenant, "hello", "hello")
    r = invoke(tenant, "hello", {"name": "x"}, headers={"X-Invocation-Type": "Bogus"})
    assert_error(r, 400, "bad_request")
    r = invoke(tenant, "hello", {"name": "fc"}, headers={"x-fc-invocation-type": "Sync"})
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "hello, fc"}
    r = invoke(tenant, "hello", {"name": "rr"}, headers={"X-Invocation-Type": "RequestResponse"})
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "hello, rr"}


def test_crash_reports_exit_and_replaces_the_container(tenant: httpx.Client) -> None:
    deployed(tenant, "crash", "crash")
    r = invoke(tenant, "crash", {})
    body = assert_function_error(r)
    assert body["errorType"] == "Runtime.ExitError"
    assert "exit code 3" in body["errorMessage"]  # functions/crash calls os._exit(3)
    crashed = r.headers["x-fnhost-container"]
    assert container_gone(crashed, timeout=5)

    # The function's next call gets a fresh container (and crashes it again).
    again = invoke(tenant, "crash", {})
    assert assert_function_error(again)["errorType"] == "Runtime.ExitError"
    assert again.headers["x-fnhost-start"] in ("stem", "cold")
    assert again.headers["x-fnhost-container"] != crashed
    # A healthy function of the same tenant is unaffected.
    deployed(tenant, "hello", "hello")
    assert invoke(tenant, "hello", {"name": "ok"}).json() == {"message": "hello, ok"}


def test_import_error(tenant: httpx.Client) -> None:
    source = "raise RuntimeError('broken at import')\n\n" + returns(1)
    deployed(tenant, "broken", function_zip(source))
    for _ in range(2):
        r = invoke(tenant, "broken", {})
        body = assert_function_error(r)
        assert body["errorType"] == "Runtime.ImportModuleError"
        assert "broken at import" in body["errorMessage"]
        assert r.headers["x-fnhost-start"] in ("stem", "cold")


def test_unknown_function(tenant: httpx.Client) -> None:
    assert_error(invoke(tenant, "missing", {}), 404, "not_found")


def test_new_code_takes_effect_at_once(tenant: httpx.Client) -> None:
    v1 = deployed(tenant, "fn", function_zip(returns({"v": 1})))
    r = invoke(tenant, "fn")
    assert r.json() == {"v": 1}
    assert r.headers["x-fnhost-version"] == v1
    old_container = r.headers["x-fnhost-container"]
    assert invoke(tenant, "fn").headers["x-fnhost-start"] == "warm"

    v2 = deployed(tenant, "fn", function_zip(returns({"v": 2})))
    assert v2 != v1
    r = invoke(tenant, "fn")
    assert r.json() == {"v": 2}
    assert r.headers["x-fnhost-version"] == v2
    assert r.headers["x-fnhost-container"] != old_container
    assert r.headers["x-fnhost-start"] in ("stem", "cold")
    # The old version's idle container is retired, not kept warm for nothing.
    assert container_gone(old_container, timeout=10)


def test_no_container_is_shared_across_functions(platform: Platform, tenant: httpx.Client) -> None:
    deployed(tenant, "one", "hello")
    deployed(tenant, "two", "hello")  # same code, other function
    other = platform.new_tenant()
    try:
        deployed(other, "one", "hello")  # same code and name, other tenant
        seen: dict[tuple[str, str], set[str]] = {}
        for _ in range(3):
            for client, label in ((tenant, "a"), (other, "b")):
                for name in ("one", "two") if label == "a" else ("one",):
                    r = invoke(client, name, {"name": name})
                    assert r.status_code == 200, r.text
                    assert r.json() == {"message": f"hello, {name}"}
                    seen.setdefault((label, name), set()).add(r.headers["x-fnhost-container"])
    finally:
        other.close()
    groups = list(seen.values())
    assert len(groups) == 3
    for i, group in enumerate(groups):
        assert len(group) == 1, seen  # each one reused its own warm container
        for later in groups[i + 1 :]:
            assert group.isdisjoint(later), seen


def test_max_concurrency_bounds_parallel_invocations(tenant: httpx.Client) -> None:
    deployed(tenant, "nap", "sleep", {"max_concurrency": 2})
    results: list[httpx.Response] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            r = invoke(tenant, "nap", {"seconds": 0.5})
            with lock:
                results.append(r)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert not errors, errors
    assert len(results) == 8
    for r in results:
        assert r.status_code == 200, r.text
        assert r.json()["slept_s"] >= 0.5
    containers = {r.headers["x-fnhost-container"] for r in results}
    assert len(containers) <= 2, containers
    # Two at a time, four rounds of 0.5 s: the bound held.
    assert elapsed >= 1.95, elapsed


@pytest.fixture(scope="module")
def cold_platform(mongo: MongoServer) -> Iterator[Platform]:
    """A platform without stem cells: every new instance is a plain container start."""
    with own_platform(mongo.url, stem_cells=0) as p:
        yield p


def test_cold_start_without_stem_cells(cold_platform: Platform) -> None:
    client = cold_platform.new_tenant()
    try:
        deployed(client, "hello", "hello")
        first = invoke(client, "hello", {"name": "cold"})
        assert first.status_code == 200, first.text
        assert first.headers["x-fnhost-start"] == "cold"
        second = invoke(client, "hello", {"name": "warm"})
        assert second.headers["x-fnhost-start"] == "warm"
        assert second.headers["x-fnhost-container"] == first.headers["x-fnhost-container"]
    finally:
        client.close()
