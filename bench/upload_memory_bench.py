"""The gateway's peak memory while it takes concurrent bundle uploads.

A platform as the tests start it, plus a fresh gateway process whose peak resident
memory (VmHWM in /proc/<pid>/status) is read after one small warm-up upload and
again after `--uploads` concurrent uploads (`PUT /v1/functions/{name}`) of
`--size-mb` bundles each (a stored zip holding that much random data, which does
not compress). Reported: the peak before and after, and its growth.

    flock /tmp/fnhost-e2e.lock .venv/bin/python bench/upload_memory_bench.py \
        [--uploads 10] [--size-mb 50] [--mode zip|multipart|both] [--code DIR]

`--code DIR` runs the platform's processes from another checkout (for a figure of
an earlier version: `git worktree add DIR main`), with this harness.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import MongoServer, deploy, log, machine, own_platform, parse_settings

import tests.harness as harness

MB = 1 << 20


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def bundle(marker: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("main.py", f"def handler(event, context):\n    return {marker!r}\n")
        zf.writestr("fnhost.json", '{"handler": "main.handler"}')
        zf.writestr("blob.bin", os.urandom(size))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--mode", choices=("zip", "multipart", "both"), default="both")
    parser.add_argument("--code", type=Path, help="run the platform from this checkout")
    parser.add_argument("--setting", action="append", default=[],
                        help="NAME=VALUE, an FNHOST_* setting of the measured gateway")
    args = parser.parse_args()
    if args.code:
        harness.ROOT = args.code.resolve()
    size = args.size_mb * MB
    limit = size + 4 * MB  # the zip's own bytes on top of its data
    gateway_settings = {"bundle_max_bytes": limit, **parse_settings(args.setting)}
    bodies = [bundle(f"u{i}", size) for i in range(args.uploads)]
    mongo = MongoServer()
    mongo.start()
    try:
        with own_platform(mongo.url) as platform:
            port = harness.free_port()
            proc = platform.start_role(
                "gateway", "gateway-measured", bind=f"127.0.0.1:{port}", **gateway_settings
            )
            harness.wait_port(port, 30, proc)
            url = f"http://127.0.0.1:{port}"
            tenant = platform.new_tenant()
            client = httpx.Client(base_url=url, headers=dict(tenant.headers), timeout=600)
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, platform.tail()
                time.sleep(0.2)
            r = deploy(client, "warm", bundle("w", 2 * MB))
            assert r.status_code == 201, r.text
            before = peak_rss(proc.pid)
            log(f"gateway pid {proc.pid}: peak {before / MB:.0f} MB after warm-up; "
                f"{args.uploads} uploads of {args.size_mb} MB ({args.mode})")

            def upload(i: int) -> int:
                multipart = args.mode == "multipart" or (args.mode == "both" and i % 2)
                config = {"timeout_s": 5} if multipart else None
                return deploy(client, f"u{i}", bodies[i], config).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(args.uploads) as pool:
                statuses = list(pool.map(upload, range(args.uploads)))
            elapsed = time.perf_counter() - started
            after = peak_rss(proc.pid)
            client.close()
            tenant.close()
    finally:
        mongo.stop()
    print(json.dumps({
        "code": str(args.code or harness.ROOT),
        "uploads": args.uploads, "size_mb": args.size_mb, "mode": args.mode,
        "statuses": statuses, "elapsed_s": round(elapsed, 1),
        "gateway_peak_rss_mb": {"after_warm_up": round(before / MB), "after_uploads": round(after / MB),
                                "growth": round((after - before) / MB)},
        "machine": machine(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
