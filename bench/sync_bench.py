"""Sync invoke benchmark against a running platform (scripts/up).

(a) warm sync invoke latency of a no-op function, p50/p99, against the
    gateway's own /healthz latency, both measured with wrk at one connection,
    alternating rounds in the same run;
(b) first invocation of new functions served from stem cells, against
    `docker run --rm` of the same image running the same handler.

    .venv/bin/python bench/sync_bench.py --url http://127.0.0.1:8080 \
        --admin-key "$(cat .data/admin-key)"
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from runtime.constants import CONTAINER_USER

ROOT = Path(__file__).resolve().parent.parent
NOOP = ROOT / "functions" / "noop"


def zip_folder(folder: Path, manifest: dict[str, object] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(folder / "main.py", "main.py")
        zf.writestr("fnhost.json", json.dumps(manifest or {"handler": "main.handler"}))
    return buf.getvalue()


def wrk(url: str, seconds: int, script: str | None = None) -> dict[str, float]:
    """p50/p99 (ms) and requests/s of one wrk run at one connection."""
    cmd = ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")

    def pct(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise SystemExit(f"cannot parse wrk output:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50_ms": pct("50%"), "p99_ms": pct("99%"), "rps": rps}


def warm_latency(base: str, key: str, rounds: int, seconds: int) -> dict[str, object]:
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    r = client.put("/v1/functions/bench-noop", content=zip_folder(NOOP),
                   headers={"Content-Type": "application/zip"})
    r.raise_for_status()
    for _ in range(20):
        client.post("/v1/functions/bench-noop/invocations", json={}).raise_for_status()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(
            'wrk.method = "POST"\nwrk.body = "{}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        )
    health, invoke = [], []
    for _ in range(rounds):
        health.append(wrk(f"{base}/healthz", seconds))
        invoke.append(wrk(f"{base}/v1/functions/bench-noop/invocations", seconds, lua.name))
    os.unlink(lua.name)

    def med(runs: list[dict[str, float]], k: str) -> float:
        return round(statistics.median(r[k] for r in runs), 3)

    result = {
        "healthz_p50_ms": med(health, "p50_ms"), "healthz_p99_ms": med(health, "p99_ms"),
        "invoke_p50_ms": med(invoke, "p50_ms"), "invoke_p99_ms": med(invoke, "p99_ms"),
        "invoke_rps_1conn": med(invoke, "rps"),
    }
    result["p50_ratio_to_healthz"] = round(result["invoke_p50_ms"] / result["healthz_p50_ms"], 2)
    return result


def stem_starts(base: str, key: str, count: int, memory_mb: int | None, pause_s: float) -> list[float]:
    """First-invoke latency (ms) of `count` new functions, each from a stem cell."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    tag = secrets.token_hex(3)
    names = [f"bench-new-{tag}-{i}" for i in range(count)]
    manifest: dict[str, object] = {"handler": "main.handler"}
    if memory_mb is not None:
        manifest["memory_mb"] = memory_mb
    for name in names:
        client.put(f"/v1/functions/{name}", content=zip_folder(NOOP, manifest),
                   headers={"Content-Type": "application/zip"}).raise_for_status()
    times, kinds = [], []
    for name in names:
        time.sleep(pause_s)  # let the pool refill its stem cells
        t = time.perf_counter()
        r = client.post(f"/v1/functions/{name}/invocations", json={})
        times.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        kinds.append(r.headers.get("x-fnhost-start"))
    if any(k != "stem" for k in kinds):
        print(f"warning: not every first invoke came from a stem cell: {kinds}", file=sys.stderr)
    return times


def docker_runs(image: str, count: int) -> list[float]:
    """`docker run --rm` of the runtime image running the same no-op handler."""
    code = tempfile.mkdtemp(prefix="bench-code-")
    shutil.copy(NOOP / "main.py", code)
    os.chmod(code, 0o755)
    cmd = [
        "docker", "run", "--rm", "--network", "none", "--user", CONTAINER_USER,
        "-v", f"{code}:/var/task:ro", "--entrypoint", "python3", image, "-c",
        "import sys; sys.path.insert(0, '/var/task'); import main; print(main.handler({}, None))",
    ]
    times = []
    for _ in range(count):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append((time.perf_counter() - t) * 1000)
    shutil.rmtree(code)
    return times


def summary(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {"p50_ms": round(statistics.median(s), 2), "min_ms": round(s[0], 2),
            "max_ms": round(s[-1], 2), "n": len(s)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--admin-key", default=os.environ.get("FNHOST_ADMIN_KEY"))
    parser.add_argument("--image", default="fnhost/python3.11")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--pause", type=float, default=1.0)
    args = parser.parse_args()
    if not args.admin_key:
        raise SystemExit("give --admin-key (or FNHOST_ADMIN_KEY)")
    admin = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.admin_key}"})
    tenant = admin.post("/v1/tenants", json={"name": "bench-" + secrets.token_hex(4)})
    tenant.raise_for_status()
    key = tenant.json()["api_key"]

    warm = warm_latency(args.url, key, args.rounds, args.seconds)
    stem_same = summary(stem_starts(args.url, key, args.starts, None, args.pause))
    stem_resized = summary(stem_starts(args.url, key, args.starts, 256, args.pause))
    docker = summary(docker_runs(args.image, args.starts))
    report = {
        "warm": warm,
        "stem_start_default_memory": stem_same,
        "stem_start_resized_256mb": stem_resized,
        "docker_run_rm": docker,
        "docker_run_over_stem_p50": round(docker["p50_ms"] / stem_same["p50_ms"], 1),
        "docker_run_over_stem_resized_p50": round(docker["p50_ms"] / stem_resized["p50_ms"], 1),
    }
    print(json.dumps(report, indent=2))
    print(
        f"\nwarm invoke p50 {warm['invoke_p50_ms']} ms, p99 {warm['invoke_p99_ms']} ms; "
        f"/healthz p50 {warm['healthz_p50_ms']} ms; ratio {warm['p50_ratio_to_healthz']}x\n"
        f"stem-cell first invoke p50 {stem_same['p50_ms']} ms "
        f"({stem_resized['p50_ms']} ms with a memory resize); "
        f"docker run --rm p50 {docker['p50_ms']} ms; "
        f"{report['docker_run_over_stem_p50']}x faster"
    )


if __name__ == "__main__":
    main()
