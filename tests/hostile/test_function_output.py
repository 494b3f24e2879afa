"""What a function says about itself: the body of a sync response (and its logs) is
the function's, so browsers get it with `X-Content-Type-Options: nosniff` and
`Content-Security-Policy: sandbox`: HTML a function returns cannot run as the API's
origin, where a dashboard holds keys."""

from __future__ import annotations

import httpx
import pytest

from tests.harness import deploy, function_zip, submit_event, wait_task

PAGE = "<html><body><script>fetch('/v1/functions').then(r => r.text())</script></body></html>"
SOURCES = {
    "html-text": f"def handler(event, context):\n    print({PAGE!r})\n    return {PAGE!r}\n",
    "html-bytes": f"def handler(event, context):\n    return {PAGE.encode()!r}\n",
    "html-json": f"def handler(event, context):\n    return {{'page': {PAGE!r}}}\n",
    "html-error": f"def handler(event, context):\n    raise ValueError({PAGE!r})\n",
}


def assert_guarded(r: httpx.Response) -> None:
    assert r.headers.get("x-content-type-options") == "nosniff", dict(r.headers)
    assert r.headers.get("content-security-policy") == "sandbox", dict(r.headers)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_sync_response_of_a_function_is_sandboxed(tenant: httpx.Client, name: str) -> None:
    r = deploy(tenant, name, function_zip(SOURCES[name]))
    assert r.status_code == 201, r.text
    r = tenant.post(f"/v1/functions/{name}/invocations", json={})
    assert r.status_code == 200, r.text
    assert "script" in r.text  # the function's own body, as it wrote it
    assert_guarded(r)


def test_logs_of_a_task_are_sandboxed(tenant: httpx.Client) -> None:
    r = deploy(tenant, "html-logs", function_zip(SOURCES["html-text"]))
    assert r.status_code == 201, r.text
    r = submit_event(tenant, "html-logs", {})
    assert r.status_code == 202, r.text
    task_id = r.headers["x-task-id"]
    assert wait_task(tenant, task_id)["status"] == "Succeeded"
    r = tenant.get(f"/v1/tasks/{task_id}/logs")
    assert r.status_code == 200, r.text
    assert "<script>" in r.text
    assert_guarded(r)
