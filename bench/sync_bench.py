"""Sync invoke benchmark against a running platform (scripts/up).

(a) warm sync invoke latency of a no-op function (p50, p90, p99, p99.9,
    max), against the gateway's own /healthz latency, both measured with wrk
    at one connection, alternating rounds in the same run;
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


# wrk's own summary rounds and omits p99.9; this prints the recorded distribution.
WRK_DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    'FNHOST {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "n": %d, "s": %f, "bad": %d}\\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.requests, summary.duration / 1e6,
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
"""
POINTS = ("p50", "p90", "p99", "p999", "max")


def wrk_script(path: Path, key: str | None) -> str:
    """A wrk script: a POST of `{}` with the key when given, and the summary above."""
    lines = []
    if key is not None:
        lines += [
            'wrk.method = "POST"', 'wrk.body = "{}"',
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = "Bearer {key}"',
        ]
    path.write_text("\n".join(lines) + WRK_DONE)
    return str(path)


def wrk(url: str, seconds: int, script: str) -> dict[str, float]:
    """Latency percentiles and max (ms) and requests/s of one wrk run at one connection."""
    cmd = ["wrk", "-t1", "-c1", f"-d{seconds}s", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^FNHOST (\{.*\})$", out, re.M)
    if m is None:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    raw = json.loads(m.group(1))
    if raw["bad"] or "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    result = {f"{k}_ms": raw[k] / 1000 for k in POINTS}
    result["rps"] = raw["n"] / raw["s"]
    return result


def warm_latency(base: str, key: str, rounds: int, seconds: int) -> dict[str, object]:
    """Warm invoke against /healthz in alternating rounds: each round's figures, and
    the median and range over the rounds of every point and of the ratios."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    r = client.put("/v1/functions/bench-noop", content=zip_folder(NOOP),
                   headers={"Content-Type": "application/zip"})
    r.raise_for_status()
    for _ in range(20):
        client.post("/v1/functions/bench-noop/invocations", json={}).raise_for_status()
    rounds_out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        health_lua = wrk_script(Path(tmp) / "healthz.lua", None)
        invoke_lua = wrk_script(Path(tmp) / "invoke.lua", key)
        for _ in range(rounds):
            health = wrk(f"{base}/healthz", seconds, health_lua)
            invoke = wrk(f"{base}/v1/functions/bench-noop/invocations", seconds, invoke_lua)
            row = {f"healthz_{k}": round(v, 3) for k, v in health.items()}
            row |= {f"invoke_{k}": round(v, 3) for k, v in invoke.items()}
            row["p50_ratio"] = round(invoke["p50_ms"] / health["p50_ms"], 2)
            row["p99_ratio"] = round(invoke["p99_ms"] / health["p99_ms"], 2)
            rounds_out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    def spread(k: str) -> list[float]:
        values = [row[k] for row in rounds_out]
        return [round(statistics.median(values), 3), min(values), max(values)]

    return {"median_min_max": {k: spread(k) for k in rounds_out[0]}, "rounds": rounds_out}


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
    report: dict[str, object] = {"warm": warm}
    if args.starts > 0:  # --starts 0: the warm figures only
        stem_same = summary(stem_starts(args.url, key, args.starts, None, args.pause))
        stem_resized = summary(stem_starts(args.url, key, args.starts, 256, args.pause))
        docker = summary(docker_runs(args.image, args.starts))
        report |= {
            "stem_start_default_memory": stem_same,
            "stem_start_resized_256mb": stem_resized,
            "docker_run_rm": docker,
            "docker_run_over_stem_p50": round(docker["p50_ms"] / stem_same["p50_ms"], 1),
            "docker_run_over_stem_resized_p50": round(
                docker["p50_ms"] / stem_resized["p50_ms"], 1
            ),
        }
    print(json.dumps(report, indent=2))
    m = warm["median_min_max"]
    assert isinstance(m, dict)
    print("\nmedian over rounds (min-max), ms:")
    for point in POINTS:
        print(
            f"  {point:>4}: invoke {m[f'invoke_{point}_ms'][0]} "
            f"({m[f'invoke_{point}_ms'][1]}-{m[f'invoke_{point}_ms'][2]}), "
            f"/healthz {m[f'healthz_{point}_ms'][0]} "
            f"({m[f'healthz_{point}_ms'][1]}-{m[f'healthz_{point}_ms'][2]})"
        )
    print(
        f"  ratio p50 {m['p50_ratio'][0]}x ({m['p50_ratio'][1]}-{m['p50_ratio'][2]}), "
        f"p99 {m['p99_ratio'][0]}x ({m['p99_ratio'][1]}-{m['p99_ratio'][2]}); "
        f"{m['invoke_rps'][0]:.0f} invokes/s on one connection"
    )
    if args.starts > 0:
        print(
            f"stem-cell first invoke p50 {stem_same['p50_ms']} ms "
            f"({stem_resized['p50_ms']} ms with a memory resize); "
            f"docker run --rm p50 {docker['p50_ms']} ms; "
            f"{report['docker_run_over_stem_p50']}x faster"
        )

if __name__ == "__main__":
    main()
