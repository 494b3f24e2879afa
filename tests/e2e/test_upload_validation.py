"""Bundle uploads that must be refused, each with a JSON error and nothing stored."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import MongoServer, Platform, assert_error, deploy, function_zip, returns, zip_files

MANIFEST = {"handler": "main.handler", "memory_mb": 128}
OK_SOURCE = returns("ok")


def put_zip(
    client: httpx.Client, name: str, data: bytes, content_type: str = "application/zip"
) -> httpx.Response:
    return client.put(f"/v1/functions/{name}", content=data, headers={"Content-Type": content_type})


def assert_absent(client: httpx.Client, name: str) -> None:
    """A refused upload created nothing."""
    assert_error(client.get(f"/v1/functions/{name}"), 404, "not_found")
    assert name not in [f["name"] for f in client.get("/v1/functions").json()["functions"]]


def refused(
    client: httpx.Client, data: bytes, status: int, field: str | None = None, name: str = "refused"
) -> dict[str, Any]:
    error = assert_error(put_zip(client, name, data), status, field=field)
    assert_absent(client, name)
    return error


def zip_with(infos: list[tuple[zipfile.ZipInfo | str, bytes | str]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in infos:
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """300 MB of zeros that deflate to about 300 KB, declared in the central directory."""
    buf = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("main.py", OK_SOURCE)
        with zf.open("zeros.bin", "w") as out:
            for _ in range(300):
                out.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_limits(mongo: MongoServer) -> Iterator[Platform]:
    """A gateway with a 1 MB bundle limit and at most 50 entries (no scheduler needed)."""
    p = Platform(mongo.url, bundle_max_bytes=1 << 20, bundle_max_entries=50)
    try:
        p.start(scheduler=False)
    except Exception:
        print(p.tail())
        p.stop()
        raise
    yield p
    p.stop()


@pytest.fixture
def small_tenant(small_limits: Platform) -> Iterator[httpx.Client]:
    client = small_limits.new_tenant()
    yield client
    client.close()


def test_a_valid_bundle_is_accepted(tenant: httpx.Client) -> None:
    """The baseline the refusals below differ from."""
    r = put_zip(tenant, "valid", function_zip(OK_SOURCE, MANIFEST))
    assert r.status_code == 201, r.text


def test_body_that_is_not_a_zip_is_400(tenant: httpx.Client) -> None:
    refused(tenant, b"this is not a zip archive at all", 400)


def test_empty_body_is_400(tenant: httpx.Client) -> None:
    refused(tenant, b"", 400)


def test_truncated_zip_is_400(tenant: httpx.Client) -> None:
    data = function_zip(OK_SOURCE, MANIFEST)
    refused(tenant, data[: len(data) // 2], 400)


def test_entry_with_dot_dot_is_400(tenant: httpx.Client) -> None:
    error = refused(tenant, zip_with([("main.py", OK_SOURCE), ("../evil.py", "x = 1\n")]), 400)
    assert "evil.py" in error["message"]
    refused(tenant, zip_with([("main.py", OK_SOURCE), ("lib/../../evil.py", "x = 1\n")]), 400)


def test_absolute_path_entry_is_400(tenant: httpx.Client) -> None:
    error = refused(tenant, zip_with([("main.py", OK_SOURCE), ("/etc/evil.py", "x = 1\n")]), 400)
    assert "evil.py" in error["message"]


def test_symlink_entry_is_400(tenant: httpx.Client) -> None:
    link = zipfile.ZipInfo("link.py")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    error = refused(tenant, zip_with([("main.py", OK_SOURCE), (link, "/etc/passwd")]), 400)
    assert "link.py" in error["message"]


def test_zip_bomb_is_refused_fast(tenant: httpx.Client, zip_bomb: bytes) -> None:
    assert len(zip_bomb) < 1 << 20  # small on the wire, under every upload limit
    started = time.monotonic()
    r = put_zip(tenant, "bomb", zip_bomb)
    elapsed = time.monotonic() - started
    assert r.status_code in (400, 413), r.text
    assert_error(r, r.status_code)
    assert elapsed < 2.0, f"the zip bomb took {elapsed:.2f} s to refuse"
    assert_absent(tenant, "bomb")


def test_compressed_body_over_the_limit_is_413(small_tenant: httpx.Client) -> None:
    big = function_zip(OK_SOURCE, extra={"blob.bin": os.urandom(1536 * 1024)})
    assert len(big) > 1 << 20
    assert_error(put_zip(small_tenant, "big", big), 413, "payload_too_large")
    assert_absent(small_tenant, "big")
    # The same limit holds for the code part of a multipart upload.
    r = small_tenant.put("/v1/functions/big", files={"code": ("bundle.zip", big, "application/zip")})
    assert_error(r, 413, "payload_too_large")
    assert_absent(small_tenant, "big")
    # Under the limit on the same gateway: accepted.
    r = put_zip(small_tenant, "big", function_zip(OK_SOURCE, extra={"blob.bin": os.urandom(512 * 1024)}))
    assert r.status_code == 201, r.text


def test_too_many_entries_is_refused(small_tenant: httpx.Client) -> None:
    files: dict[str, str | bytes] = {"main.py": OK_SOURCE}
    files.update({f"data/{i}.txt": str(i) for i in range(50)})  # 51 entries
    r = put_zip(small_tenant, "many", zip_files(files))
    assert r.status_code in (400, 413), r.text
    error = assert_error(r, r.status_code)
    assert "entries" in error["message"], error
    assert_absent(small_tenant, "many")
    files.pop("data/0.txt")  # exactly 50: accepted
    r = put_zip(small_tenant, "many", zip_files(files))
    assert r.status_code == 201, r.text


def test_handler_module_missing_is_400_naming_handler(tenant: httpx.Client) -> None:
    refused(tenant, zip_files({"app.py": OK_SOURCE}), 400, field="handler")
    refused(tenant, function_zip(OK_SOURCE, {"handler": "lib.handlers.run"}), 400, field="handler")
    # The code zipped inside a folder rather than at the zip's root.
    error = refused(tenant, zip_files({"myfn/main.py": OK_SOURCE}), 400, field="handler")
    assert "root" in error["message"], error


@pytest.mark.parametrize(
    "path_name",
    ["bad%20name%21", "a" * 65, "-leading-dash", "dots.in.name", "%C3%A9t%C3%A9"],
)
def test_invalid_function_name_is_400(tenant: httpx.Client, path_name: str) -> None:
    r = put_zip(tenant, path_name, function_zip(OK_SOURCE, MANIFEST))
    assert_error(r, 400)
    assert tenant.get("/v1/functions").json() == {"functions": []}


def test_function_name_of_64_characters_is_accepted(tenant: httpx.Client) -> None:
    r = put_zip(tenant, "a" * 64, function_zip(OK_SOURCE, MANIFEST))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ({"handler": "main.handler", "memory_mb": 1}, "memory_mb"),
        ({"handler": "main.handler", "timeout_s": 100000}, "timeout_s"),
        ({"handler": "main.handler", "runtime": "node20"}, "runtime"),
        ({"handler": "main.handler", "async": {"max_retry_attempts": 20}}, "async.max_retry_attempts"),
    ],
)
def test_invalid_config_value_in_the_manifest_is_400_naming_it(
    tenant: httpx.Client, manifest: dict[str, Any], field: str
) -> None:
    refused(tenant, function_zip(OK_SOURCE, manifest), 400, field=field)


def test_unknown_manifest_key_is_400(tenant: httpx.Client) -> None:
    error = refused(tenant, function_zip(OK_SOURCE, {"handler": "main.handler", "colour": "red"}), 400)
    assert "colour" in error["message"] or error.get("field") == "colour", error


def test_manifest_that_is_not_valid_json_is_400(tenant: httpx.Client) -> None:
    refused(tenant, function_zip(OK_SOURCE, extra={"fnhost.json": "{handler: "}), 400)
    refused(tenant, function_zip(OK_SOURCE, extra={"fnhost.json": "[]"}), 400)


def test_unsupported_content_type_is_415(tenant: httpx.Client) -> None:
    r = put_zip(tenant, "texty", function_zip(OK_SOURCE, MANIFEST), content_type="text/plain")
    assert_error(r, 415)
    assert_absent(tenant, "texty")
    r = tenant.put("/v1/functions/texty", json={"handler": "main.handler"})
    assert_error(r, 415)
    assert_absent(tenant, "texty")


def test_multipart_without_code_is_400(tenant: httpx.Client) -> None:
    r = tenant.put(
        "/v1/functions/nocode",
        files={"config": (None, json.dumps({"memory_mb": 256}), "application/json")},
    )
    assert_error(r, 400)
    assert_absent(tenant, "nocode")


def test_multipart_config_that_is_not_json_is_400(tenant: httpx.Client) -> None:
    data = function_zip(OK_SOURCE, MANIFEST)
    r = tenant.put(
        "/v1/functions/badconfig",
        files={
            "code": ("bundle.zip", data, "application/zip"),
            "config": (None, "memory_mb=256", "application/json"),
        },
    )
    assert_error(r, 400, field="config")
    assert_absent(tenant, "badconfig")


def test_multipart_config_with_a_bad_value_is_400_naming_it(tenant: httpx.Client) -> None:
    data = function_zip(OK_SOURCE, MANIFEST)
    assert_error(deploy(tenant, "badconfig", data, config={"memory_mb": 1}), 400, field="memory_mb")
    assert_error(deploy(tenant, "badconfig", data, config={"colour": "red"}), 400, field="colour")
    assert_absent(tenant, "badconfig")


@pytest.mark.parametrize(
    "bad",
    [
        b"not a zip",
        zip_files({"app.py": OK_SOURCE}),
        zip_with([("main.py", OK_SOURCE), ("../evil.py", "x = 1\n")]),
        function_zip(OK_SOURCE, {"handler": "main.handler", "memory_mb": 1}),
    ],
    ids=["not-zip", "no-handler", "dot-dot", "bad-manifest"],
)
def test_refused_update_leaves_the_previous_version_current(tenant: httpx.Client, bad: bytes) -> None:
    created = put_zip(tenant, "current", function_zip(OK_SOURCE, MANIFEST))
    assert created.status_code == 201, created.text
    assert_error(put_zip(tenant, "current", bad), 400)
    r = tenant.get("/v1/functions/current")
    assert r.status_code == 200, r.text
    assert r.json() == created.json()


def test_a_refused_large_body_does_not_stall_the_next_request(tenant: httpx.Client) -> None:
    """The refusal comes before the body is read; the connection must not hang after it."""
    big = os.urandom(3 << 20)
    for _ in range(3):
        r = tenant.put("/v1/functions/stall", content=big, headers={"Content-Type": "text/plain"})
        assert_error(r, 415)
        r = tenant.post("/v1/functions/stall/invocations", content=big)
        assert_error(r, 404, "not_found")
        r = tenant.get("/v1/functions", timeout=10)
        assert r.status_code == 200, r.text
