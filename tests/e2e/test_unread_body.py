"""Answers given before a request's body was read (413, 401, 404) reach plain clients.

urllib (like requests) writes the whole body before it reads the answer. A gateway
that answered early and closed the connection with the body unread made the kernel
reset it, and the client saw "connection reset" instead of the 413. These tests use
only the standard library's client, as users do.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import Platform, deploy

MB = 1 << 20
SYNC_LIMIT = 6 * MB  # the defaults: the shared platform sets none of these
ASYNC_LIMIT = 1 * MB
BUNDLE_LIMIT = 50 * MB
# Over the limit by more than the sockets buffer, so that an unread rest is never lost
# in buffers by luck: today's clients send it all before they read.
OVER = 8 * MB


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """An iterable body: urllib sends it chunked (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def send(
    url: str, data: bytes, *, chunked: bool = False, method: str = "POST", **headers: str
) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer, as urllib gets them."""
    body: Any = chunks(data) if chunked else data
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def account(platform: Platform) -> Iterator[tuple[str, str]]:
    """The platform's URL and a tenant's key, with the function `echo` deployed."""
    client: httpx.Client = platform.new_tenant()
    with client:
        assert deploy(client, "echo", "echo").status_code == 201
        yield platform.url, client.headers["authorization"]


def invocations(url: str, name: str = "echo") -> str:
    return f"{url}/v1/functions/{name}/invocations"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_sync_payload_over_the_limit_is_a_readable_413(
    account: tuple[str, str], chunked: bool
) -> None:
    url, key = account
    status, body = send(
        invocations(url), os.urandom(SYNC_LIMIT + OVER), chunked=chunked,
        Authorization=key, **{"Content-Type": "application/octet-stream"},
    )
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large", body
    # The connection was not left broken: the next request is served.
    status, body = send(invocations(url), b'{"n": 1}', Authorization=key,
                        **{"Content-Type": "application/json"})
    assert (status, body) == (200, {"n": 1})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_async_payload_over_the_limit_is_a_readable_413(
    account: tuple[str, str], chunked: bool
) -> None:
    url, key = account
    status, body = send(
        invocations(url), os.urandom(ASYNC_LIMIT + OVER), chunked=chunked, Authorization=key,
        **{"Content-Type": "application/octet-stream", "X-Invocation-Type": "Event"},
    )
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large", body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bundle_over_the_limit_is_a_readable_413(account: tuple[str, str], chunked: bool) -> None:
    url, key = account
    status, body = send(
        f"{url}/v1/functions/too-big", os.urandom(BUNDLE_LIMIT + OVER), chunked=chunked,
        method="PUT", Authorization=key, **{"Content-Type": "application/zip"},
    )
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large", body


def test_bad_key_with_a_big_body_is_a_readable_401(account: tuple[str, str]) -> None:
    url, _ = account
    status, body = send(invocations(url), os.urandom(OVER), Authorization="Bearer nope")
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized", body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_unknown_function_with_a_big_body_is_a_readable_404(
    account: tuple[str, str], chunked: bool
) -> None:
    url, key = account
    status, body = send(
        invocations(url, "nothing-here"), os.urandom(OVER), chunked=chunked, Authorization=key
    )
    assert status == 404, body
    assert body["error"]["code"] == "not_found", body


def test_connection_is_kept_after_an_early_answer(account: tuple[str, str]) -> None:
    """A body read to its end leaves the connection usable: the next request on it works."""
    url, key = account
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    try:
        conn.request("POST", "/v1/functions/nothing-here/invocations",
                     body=os.urandom(3 * MB), headers={"Authorization": key})
        first = conn.getresponse()
        assert first.status == 404 and json.loads(first.read())["error"]["code"] == "not_found"
        assert first.getheader("connection") != "close"
        conn.request("POST", "/v1/functions/echo/invocations", body=b'{"again": true}',
                     headers={"Authorization": key, "Content-Type": "application/json"})
        second = conn.getresponse()
        assert (second.status, json.loads(second.read())) == (200, {"again": True})
    finally:
        conn.close()
