"""Function CRUD end to end: upload, versions, describe, list, PATCH, DELETE."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
import pytest

from tests.harness import assert_error, deploy, function_zip, returns

MANIFEST = {"handler": "main.handler", "runtime": "python3.11", "memory_mb": 128, "timeout_s": 10}

GREETER = """\
import os


def handler(event, context):
    return {"greeting": os.environ.get("GREETING"), "code": CODE}


CODE = %r
"""


def greeter(code: str = "v1") -> str:
    return GREETER % code


def invoke(client: httpx.Client, name: str, payload: Any = None) -> httpx.Response:
    r = client.post(f"/v1/functions/{name}/invocations", json=payload if payload is not None else {})
    assert r.status_code == 200, r.text
    assert "x-function-error" not in r.headers, r.text
    return r


def describe(client: httpx.Client, name: str) -> dict[str, Any]:
    r = client.get(f"/v1/functions/{name}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_put_creates_then_same_bytes_is_an_update_with_the_same_version(tenant: httpx.Client) -> None:
    data = function_zip(returns("v1"), MANIFEST)
    created = deploy(tenant, "same", data)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "same"
    assert isinstance(body["version"], str) and body["version"]
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["config"]["handler"] == "main.handler"
    assert body["config"]["memory_mb"] == 128
    assert body["config"]["timeout_s"] == 10
    assert body["config"]["env"] == {}
    assert body["queue_mode"] == "shared"

    again = deploy(tenant, "same", data)
    assert again.status_code == 200, again.text
    assert again.json()["version"] == body["version"]
    assert again.json()["config"] == body["config"]
    assert describe(tenant, "same")["version"] == body["version"]


def test_new_code_is_a_new_version_and_the_next_invocation_runs_it(tenant: httpx.Client) -> None:
    first = deploy(tenant, "versions", function_zip(returns("v1"), MANIFEST))
    assert first.status_code == 201, first.text
    r1 = invoke(tenant, "versions")
    assert r1.text == "v1"
    assert r1.headers["x-fnhost-version"] == first.json()["version"]
    invoke(tenant, "versions")  # a warm container now holds v1

    second = deploy(tenant, "versions", function_zip(returns("v2"), MANIFEST))
    assert second.status_code == 200, second.text
    assert second.json()["version"] != first.json()["version"]
    assert describe(tenant, "versions")["version"] == second.json()["version"]
    r2 = invoke(tenant, "versions")
    assert r2.text == "v2"
    assert r2.headers["x-fnhost-version"] == second.json()["version"]


def test_multipart_config_overrides_the_manifest(tenant: httpx.Client) -> None:
    manifest = {**MANIFEST, "env": {"GREETING": "from manifest", "OTHER": "x"}}
    config = {
        "memory_mb": 512,
        "timeout_s": 5,
        "env": {"GREETING": "from config"},
        "async": {"max_retry_attempts": 0},
    }
    r = deploy(tenant, "multi", function_zip(greeter(), manifest), config=config)
    assert r.status_code == 201, r.text
    shown = r.json()["config"]
    assert shown["memory_mb"] == 512
    assert shown["timeout_s"] == 5
    assert shown["env"] == {"GREETING": "from config"}
    assert shown["async"]["max_retry_attempts"] == 0
    assert shown["async"]["max_event_age_s"] == 21600  # the rest of async keeps its defaults
    assert shown["handler"] == "main.handler"  # not overridden: from the manifest
    assert describe(tenant, "multi")["config"] == shown
    assert invoke(tenant, "multi").json() == {"greeting": "from config", "code": "v1"}


def test_yaml_manifest_is_read(tenant: httpx.Client) -> None:
    data = function_zip(
        returns("yaml"), extra={"fnhost.yaml": "handler: main.handler\nmemory_mb: 192\nenv:\n  K: v\n"}
    )
    r = deploy(tenant, "yamlfn", data)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["memory_mb"] == 192
    assert r.json()["config"]["env"] == {"K": "v"}


def test_get_one_and_list(tenant: httpx.Client) -> None:
    empty = tenant.get("/v1/functions")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"functions": []}
    for name in ("beta", "alpha"):
        assert deploy(tenant, name, function_zip(returns(name), MANIFEST)).status_code == 201

    listed = tenant.get("/v1/functions")
    assert listed.status_code == 200, listed.text
    functions = listed.json()["functions"]
    assert sorted(f["name"] for f in functions) == ["alpha", "beta"]
    for item in functions:
        one = describe(tenant, item["name"])
        assert one == item
        assert one["config"]["memory_mb"] == 128
        assert re.fullmatch(r"[0-9a-f]+", one["version"])
        assert one["queue_mode"] in ("shared", "dedicated")

    assert_error(tenant.get("/v1/functions/gamma"), 404, "not_found")


def test_patch_changes_only_the_named_keys_and_merges_async(tenant: httpx.Client) -> None:
    config = {
        "env": {"GREETING": "hello"},
        "max_concurrency": 3,
        "async": {"max_retry_attempts": 1, "retry_backoff_s": 2},
    }
    r = deploy(tenant, "patchy", function_zip(greeter(), MANIFEST), config=config)
    assert r.status_code == 201, r.text
    before = r.json()

    r = tenant.patch("/v1/functions/patchy", json={"memory_mb": 512})
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["config"] == {**before["config"], "memory_mb": 512}
    assert after["version"] == before["version"]  # config changes make no new version

    r = tenant.patch("/v1/functions/patchy", json={"async": {"max_event_age_s": 60}})
    assert r.status_code == 200, r.text
    merged = r.json()["config"]
    assert merged["async"] == {**before["config"]["async"], "max_event_age_s": 60}
    assert merged["async"]["max_retry_attempts"] == 1
    assert merged["async"]["retry_backoff_s"] == 2
    assert merged["env"] == {"GREETING": "hello"}
    assert merged["max_concurrency"] == 3
    assert merged["memory_mb"] == 512

    r = tenant.patch(
        "/v1/functions/patchy", json={"async": {"on_failure": {"type": "queue", "name": "failed"}}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["async"]["on_failure"] == {"type": "queue", "name": "failed"}
    assert r.json()["config"]["async"]["max_event_age_s"] == 60

    r = tenant.patch("/v1/functions/patchy", json={})
    assert r.status_code == 200, r.text
    assert describe(tenant, "patchy")["config"] == r.json()["config"]
    assert r.json()["config"]["async"]["on_failure"] == {"type": "queue", "name": "failed"}


def test_patched_env_is_seen_by_the_next_invocation(tenant: httpx.Client) -> None:
    r = deploy(tenant, "greet", function_zip(greeter(), MANIFEST), config={"env": {"GREETING": "hello"}})
    assert r.status_code == 201, r.text
    assert invoke(tenant, "greet").json()["greeting"] == "hello"
    assert invoke(tenant, "greet").json()["greeting"] == "hello"  # a warm container now

    r = tenant.patch("/v1/functions/greet", json={"env": {"GREETING": "bonjour"}})
    assert r.status_code == 200, r.text
    assert invoke(tenant, "greet").json()["greeting"] == "bonjour"
    assert invoke(tenant, "greet").json()["greeting"] == "bonjour"

    r = tenant.patch("/v1/functions/greet", json={"env": {}})
    assert r.status_code == 200, r.text
    assert invoke(tenant, "greet").json()["greeting"] is None


def test_patched_handler_is_run_by_the_next_invocation(tenant: httpx.Client) -> None:
    data = function_zip(returns("main"), MANIFEST, extra={"other.py": returns("other")})
    assert deploy(tenant, "switch", data).status_code == 201
    assert invoke(tenant, "switch").text == "main"
    assert invoke(tenant, "switch").text == "main"  # a warm container now

    r = tenant.patch("/v1/functions/switch", json={"handler": "other.handler"})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["handler"] == "other.handler"
    assert invoke(tenant, "switch").text == "other"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"memory_mb": 1}, "memory_mb"),
        ({"memory_mb": "lots"}, "memory_mb"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"runtime": "python2.7"}, "runtime"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": "GREETING=hi"}, "env"),
        ({"paused": "maybe"}, "paused"),
        ({"async": {"max_retry_attempts": 9}}, "async.max_retry_attempts"),
        ({"async": {"on_success": {"type": "carrier-pigeon"}}}, "async.on_success"),
        ({"colour": "red"}, "colour"),
        # a valid key next to a bad one: the valid one must not be applied either
        ({"memory_mb": 512, "timeout_s": -1}, "timeout_s"),
    ],
)
def test_patch_with_a_bad_value_names_the_field_and_changes_nothing(
    tenant: httpx.Client, patch: dict[str, Any], field: str
) -> None:
    r = deploy(tenant, "steady", function_zip(greeter(), MANIFEST), config={"env": {"GREETING": "hello"}})
    assert r.status_code == 201, r.text
    before = r.json()

    error = assert_error(tenant.patch("/v1/functions/steady", json=patch), 400)
    assert error.get("field", "").startswith(field), error
    assert describe(tenant, "steady") == before


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"memory_mb"'])
def test_patch_with_a_body_that_is_not_a_json_object_is_400(tenant: httpx.Client, body: bytes) -> None:
    before = deploy(tenant, "steady", function_zip(returns(1), MANIFEST)).json()
    r = tenant.patch("/v1/functions/steady", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    assert describe(tenant, "steady") == before


def test_patch_to_a_handler_missing_from_the_bundle_is_400(tenant: httpx.Client) -> None:
    before = deploy(tenant, "handled", function_zip(returns("ok"), MANIFEST)).json()
    assert invoke(tenant, "handled").text == "ok"
    for handler in ("missing.handler", "pkg.missing.handler"):
        r = tenant.patch("/v1/functions/handled", json={"handler": handler})
        assert_error(r, 400, field="handler")
    assert_error(tenant.patch("/v1/functions/handled", json={"handler": "no-dots"}), 400, field="handler")
    assert describe(tenant, "handled") == before
    assert invoke(tenant, "handled").text == "ok"


def test_patch_of_an_unknown_function_is_404(tenant: httpx.Client) -> None:
    assert_error(tenant.patch("/v1/functions/nobody", json={"memory_mb": 512}), 404, "not_found")


def test_delete_then_get_and_invoke_are_404_at_once(tenant: httpx.Client) -> None:
    assert deploy(tenant, "doomed", function_zip(returns("alive"), MANIFEST)).status_code == 201
    assert invoke(tenant, "doomed").text == "alive"

    r = tenant.delete("/v1/functions/doomed")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_error(tenant.get("/v1/functions/doomed"), 404, "not_found")
    assert_error(tenant.post("/v1/functions/doomed/invocations", json={}), 404, "not_found")
    assert_error(tenant.patch("/v1/functions/doomed", json={"memory_mb": 512}), 404, "not_found")
    assert_error(tenant.delete("/v1/functions/doomed"), 404, "not_found")
    assert tenant.get("/v1/functions").json() == {"functions": []}

    # The name is free again: a new upload creates a new function.
    r = deploy(tenant, "doomed", function_zip(returns("reborn"), MANIFEST))
    assert r.status_code == 201, r.text
    assert invoke(tenant, "doomed").text == "reborn"


def test_reupload_after_patch_keeps_the_config_the_manifest_does_not_name(tenant: httpx.Client) -> None:
    assert deploy(tenant, "keeper", function_zip(greeter("v1"), MANIFEST)).status_code == 201
    patch = {
        "env": {"GREETING": "patched"},
        "max_concurrency": 4,
        "memory_mb": 512,
        "async": {"max_retry_attempts": 0},
    }
    r = tenant.patch("/v1/functions/keeper", json=patch)
    assert r.status_code == 200, r.text

    # The new bundle's manifest names handler, runtime, memory_mb and timeout_s only.
    r = deploy(tenant, "keeper", function_zip(greeter("v2"), MANIFEST))
    assert r.status_code == 200, r.text
    config = r.json()["config"]
    assert config["env"] == {"GREETING": "patched"}
    assert config["max_concurrency"] == 4
    assert config["async"]["max_retry_attempts"] == 0
    assert config["memory_mb"] == 128  # named by the new manifest
    assert describe(tenant, "keeper")["config"] == config
    assert invoke(tenant, "keeper").json() == {"greeting": "patched", "code": "v2"}

    # A config part names keys too; the rest still carries over.
    r = deploy(tenant, "keeper", function_zip(greeter("v3"), MANIFEST), config={"timeout_s": 9})
    assert r.status_code == 200, r.text
    config = r.json()["config"]
    assert config["timeout_s"] == 9
    assert config["env"] == {"GREETING": "patched"}
    assert config["max_concurrency"] == 4
    assert invoke(tenant, "keeper").json() == {"greeting": "patched", "code": "v3"}
