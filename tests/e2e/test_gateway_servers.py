"""The gateway under its other HTTP server (FNHOST_GATEWAY_SERVER=hypercorn).

Every other end-to-end test runs the default (uvicorn with httptools); this one
checks that the alternative serves the same API: sync and async invokes, a
body refused before it was read, keep-alive after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_unread_body import send
from tests.harness import (
    MongoServer,
    Platform,
    assert_error,
    deploy,
    invoke,
    own_platform,
    submit_event,
    wait_task,
)


@pytest.fixture(scope="module")
def hypercorn_platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(mongo.url, gateway_server="hypercorn") as platform:
        yield platform


def test_hypercorn_serves_the_api(hypercorn_platform: Platform) -> None:
    client = hypercorn_platform.new_tenant()
    with client:
        assert deploy(client, "hello", "hello").status_code == 201
        r = invoke(client, "hello", {"name": "hypercorn"})
        assert r.status_code == 200 and r.json() == {"message": "hello, hypercorn"}, r.text
        r = submit_event(client, "hello", {"name": "later"})
        assert r.status_code == 202 and r.headers["location"].startswith("/v1/tasks/"), r.text
        task = wait_task(client, r.headers["x-task-id"], timeout=30)
        assert task["status"] == "Succeeded" and task["result"] == {"message": "hello, later"}, task
        big = os.urandom(3 << 20)
        for _ in range(2):
            assert_error(client.post("/v1/functions/nothing/invocations", content=big), 404)
            assert client.get("/v1/functions", timeout=10).status_code == 200
        served = httpx.get(f"{hypercorn_platform.url}/healthz", timeout=5)
        assert served.status_code == 200
        assert served.headers.get("server", "").startswith("hypercorn"), served.headers


def test_hypercorn_early_answers_reach_urllib(hypercorn_platform: Platform) -> None:
    """A 413 or 404 given before the body was read is read by urllib, not reset."""
    with hypercorn_platform.new_tenant() as client:
        assert deploy(client, "echo", "echo").status_code == 201
        key = client.headers["authorization"]
    url = f"{hypercorn_platform.url}/v1/functions"
    for chunked in (False, True):
        status, body = send(f"{url}/echo/invocations", os.urandom(14 << 20), chunked=chunked,
                            Authorization=key)
        assert (status, body["error"]["code"]) == (413, "payload_too_large"), body
        status, body = send(f"{url}/nothing/invocations", os.urandom(8 << 20), chunked=chunked,
                            Authorization=key)
        assert (status, body["error"]["code"]) == (404, "not_found"), body
