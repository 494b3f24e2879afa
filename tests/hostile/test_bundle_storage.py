"""A tenant that uploads without end: old versions' bundles and a deleted function's
are collected from GridFS, the schedulers' unpacked bundles stay under their size
bound, and uploads stream to disk: ten at once, or one over the limit, cost the
gateway little memory; past the concurrent bound an upload waits, then gets 503."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from tests.harness import (
    MongoServer,
    Platform,
    assert_error,
    deploy,
    eventually,
    free_port,
    function_zip,
    invoke,
    own_platform,
    returns,
    submit_event,
    wait_port,
    wait_task,
)

MB = 1 << 20
MANIFEST = {"handler": "main.handler", "runtime": "python3.11", "memory_mb": 128, "timeout_s": 10}
GRACE_S = 2
CACHE_MB = 3


@pytest.fixture(scope="module")
def platform(mongo: MongoServer) -> Iterator[Platform]:
    with own_platform(
        mongo.url, bundle_versions_kept=2, bundle_collect_grace_s=GRACE_S, bundle_sweep_s=1,
        bundle_cache_mb=CACHE_MB,
    ) as p:
        yield p


@pytest.fixture
def tenant(platform: Platform) -> Iterator[httpx.Client]:
    client = platform.new_tenant()
    yield client
    client.close()


def bundles_of(platform: Platform, tenant: httpx.Client) -> set[str]:
    """The content hashes of the tenant's bundles in GridFS."""
    prefix = f"{tenant.tenant_id}/"  # type: ignore[attr-defined]
    with MongoClient(platform.env["FNHOST_MONGO_URL"]) as client:
        files = client[platform.env["FNHOST_MONGO_DB"]]["bundles.files"]
        ids = [doc["_id"] for doc in files.find({}, {"_id": 1})]
    return {i.removeprefix(prefix) for i in ids if isinstance(i, str) and i.startswith(prefix)}


def put(tenant: httpx.Client, name: str, data: bytes) -> str:
    r = deploy(tenant, name, data)
    assert r.status_code in (200, 201), r.text
    sha: str = r.json()["sha256"]
    return sha


def collected(platform: Platform, tenant: httpx.Client, expected: set[str]) -> None:
    """The tenant's bundles become `expected` (at upload or delete, or by the sweep once
    the grace period is over)."""
    eventually(lambda: bundles_of(platform, tenant) == expected, GRACE_S + 15,
               f"the tenant's bundles to be {sorted(expected)}")


def test_versions_past_the_kept_ones_are_collected_and_a_queued_task_runs_the_current(
    platform: Platform, tenant: httpx.Client
) -> None:
    v1 = function_zip(returns("v1"), MANIFEST)
    shas = [put(tenant, "f", v1)]
    assert invoke(tenant, "f").text == "v1"
    shared = put(tenant, "g", v1)  # another function with the same content
    assert shared == shas[0]
    assert tenant.post("/v1/functions/f/pause").status_code == 200
    r = submit_event(tenant, "f", {})
    assert r.status_code == 202, r.text
    task_id = r.headers["x-task-id"]
    for marker in ("v2", "v3", "v4"):
        shas.append(put(tenant, "f", function_zip(returns(marker), MANIFEST)))
    assert len(set(shas)) == 4
    # f keeps its 2 newest; its first stays because g still runs it.
    collected(platform, tenant, {shas[0], shas[2], shas[3]})
    assert invoke(tenant, "g").text == "v1"
    # A task queued under an older version runs the version current when it is
    # dispatched (the scheduler loads the function's record then).
    assert tenant.post("/v1/functions/f/resume").status_code == 200
    task = wait_task(tenant, task_id, timeout=60)
    assert task["status"] == "Succeeded", task
    assert base64.b64decode(task["result"]["base64"]) == b"v4", task


def test_a_deleted_functions_bundles_are_collected(platform: Platform, tenant: httpx.Client) -> None:
    first = put(tenant, "h", function_zip(returns("h1"), MANIFEST))
    second_zip = function_zip(returns("h2"), MANIFEST)
    second = put(tenant, "h", second_zip)
    assert put(tenant, "k", second_zip) == second
    r = submit_event(tenant, "h", {}, headers={"X-Delay-Seconds": "60"})
    assert r.status_code == 202, r.text
    task_id = r.headers["x-task-id"]
    assert tenant.delete("/v1/functions/h").status_code == 204
    assert wait_task(tenant, task_id)["status"] == "Invalid"  # found without its function
    collected(platform, tenant, {second})  # k still runs the second
    assert invoke(tenant, "k").text == "h2"
    assert tenant.delete("/v1/functions/k").status_code == 204
    collected(platform, tenant, set())
    assert first != second


def test_unreferenced_bundles_are_swept(platform: Platform, tenant: httpx.Client) -> None:
    kept = put(tenant, "s", function_zip(returns("s"), MANIFEST))
    orphan = "0" * 64  # as an upload that crashed between storing and recording leaves it
    with MongoClient(platform.env["FNHOST_MONGO_URL"]) as client:
        from gridfs import GridFSBucket

        bucket = GridFSBucket(client[platform.env["FNHOST_MONGO_DB"]], bucket_name="bundles")
        bucket.upload_from_stream_with_id(f"{tenant.tenant_id}/{orphan}", orphan, b"x" * 1000)  # type: ignore[attr-defined]
    assert bundles_of(platform, tenant) == {kept, orphan}
    collected(platform, tenant, {kept})


def cache_folders(platform: Platform) -> list[Path]:
    root = platform.data_dir / "bundles"
    return [p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")]


def cache_size(platform: Platform) -> int:
    root = platform.data_dir / "bundles"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_schedulers_unpacked_bundles_stay_under_their_bound(
    platform: Platform, tenant: httpx.Client
) -> None:
    shas = []
    for i in range(5):
        # 1.2 MB that does not compress: at most two fit in the 3 MB cache.
        blob = os.urandom(1200 * 1024)
        shas.append(put(tenant, "big", function_zip(returns(f"b{i}"), MANIFEST, {"blob.bin": blob})))
        assert invoke(tenant, "big").text == f"b{i}"
        size = cache_size(platform)
        assert size <= CACHE_MB * MB, f"{size} bytes of unpacked bundles after version {i}"
    names = {p.name for p in cache_folders(platform)}
    assert shas[-1] in names  # the version in use
    assert shas[0] not in names and shas[1] not in names  # the least recently used
    # An evicted version comes back when it is current again.
    put(tenant, "big", function_zip(returns("b0"), MANIFEST, {"blob.bin": b"small"}))
    assert invoke(tenant, "big").text == "b0"


# -- uploads: memory and concurrency, on gateways of their own ---------------------


def start_gateway(platform: Platform, name: str, **settings: Any) -> tuple[str, int]:
    """A fresh gateway process (its peak memory starts from its own start): URL, pid."""
    port = free_port()
    proc = platform.start_role("gateway", name, bind=f"127.0.0.1:{port}", **settings)
    wait_port(port, 30, proc)
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 30, "ready")
    return url, proc.pid


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def big_bundle(marker: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("main.py", returns(marker))
        zf.writestr("fnhost.json", '{"handler": "main.handler"}')
        zf.writestr("blob.bin", os.urandom(size))
    return buffer.getvalue()


def as_tenant(platform: Platform, url: str, tenant: httpx.Client) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": tenant.headers["Authorization"]},
                        timeout=180)


def test_ten_concurrent_uploads_cost_the_gateway_little_memory(
    platform: Platform, tenant: httpx.Client
) -> None:
    url, pid = start_gateway(platform, "gateway-uploads")
    try:
        with as_tenant(platform, url, tenant) as client:
            assert deploy(client, "warm", big_bundle("w", 2 * MB)).status_code == 201
            before = peak_rss(pid)
            bodies = [big_bundle(f"u{i}", 20 * MB) for i in range(10)]
            answers: list[int] = []

            def upload(i: int) -> None:
                config = {"timeout_s": 5} if i % 2 else None  # half as multipart
                answers.append(deploy(client, f"u{i}", bodies[i], config).status_code)

            threads = [threading.Thread(target=upload, args=(i,)) for i in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            grown = peak_rss(pid) - before
        assert answers == [201] * 10, answers
        # 200 MB went through; held whole (two or three copies each) it was 400 MB or more.
        assert grown < 60 * MB, f"the gateway's peak memory grew by {grown / MB:.0f} MB"
    finally:
        platform.stop_role("gateway-uploads")


def test_an_upload_over_the_limit_is_refused_while_it_streams(
    platform: Platform, tenant: httpx.Client
) -> None:
    url, pid = start_gateway(platform, "gateway-limit", bundle_max_bytes=100 * MB)
    try:
        with as_tenant(platform, url, tenant) as client:
            assert deploy(client, "warm", big_bundle("w", 2 * MB)).status_code == 201
            before = peak_rss(pid)

            def body() -> Iterator[bytes]:  # chunked: no length to refuse it by
                chunk = os.urandom(MB)
                for _ in range(150):
                    yield chunk

            r = client.put("/v1/functions/over", content=body(),
                           headers={"Content-Type": "application/zip"})
            assert_error(r, 413, "payload_too_large")

            def multipart() -> Iterator[bytes]:  # the same as a multipart code part
                yield (b'--b0und\r\nContent-Disposition: form-data; name="code"; '
                       b'filename="bundle.zip"\r\nContent-Type: application/zip\r\n\r\n')
                yield from body()
                yield b"\r\n--b0und--\r\n"

            r = client.put("/v1/functions/over", content=multipart(),
                           headers={"Content-Type": "multipart/form-data; boundary=b0und"})
            assert_error(r, 413, "payload_too_large")
            grown = peak_rss(pid) - before
            assert client.get("/v1/functions/over").status_code == 404
        assert grown < 40 * MB, f"the gateway's peak memory grew by {grown / MB:.0f} MB"
    finally:
        platform.stop_role("gateway-limit")


def test_a_tenant_trickling_uploads_holds_at_most_half_the_slots(
    platform: Platform, tenant: httpx.Client
) -> None:
    url, _ = start_gateway(platform, "gateway-slots", uploads_concurrent=2, uploads_wait_s=1)
    other_tenant = platform.new_tenant()
    try:
        with as_tenant(platform, url, tenant) as client, \
                as_tenant(platform, url, other_tenant) as other:
            data = function_zip(returns("slow"), MANIFEST)
            started = threading.Event()

            def slow() -> Iterator[bytes]:
                yield data[:100]
                started.set()
                time.sleep(4)
                yield data[100:]

            answers: list[httpx.Response] = []
            holder = threading.Thread(target=lambda: answers.append(client.put(
                "/v1/functions/slow", content=slow(), headers={"Content-Type": "application/zip"})))
            holder.start()
            assert started.wait(10)
            time.sleep(0.5)
            # Its second upload waits for its share of the slots, then is refused ...
            refused = deploy(client, "second", function_zip(returns("s"), MANIFEST))
            # ... while another tenant's goes through on the slot left.
            assert deploy(other, "o", function_zip(returns("o"), MANIFEST)).status_code == 201
            holder.join(30)
            assert_error(refused, 503, "unavailable")
            assert int(refused.headers["retry-after"]) >= 1
            assert answers and answers[0].status_code == 201, answers
            # With its slot free again, its next upload goes through.
            assert deploy(client, "second", function_zip(returns("s"), MANIFEST)).status_code == 201
    finally:
        other_tenant.close()
        platform.stop_role("gateway-slots")
