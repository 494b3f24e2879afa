"""A flood of made-up API keys against one gateway, while a legitimate tenant invokes.

Starts a platform of its own (gateway, scheduler, MongoDB-wire server, RabbitMQ
vhost, as the tests do) and measures, over `--seconds` each:

  idle    the legitimate tenant's warm sync invokes, one at a time, alone;
  flood   the same while `wrk` sends requests with a fresh random key each
          (`fnk_` and 43 random characters), as fast as the gateway answers;
  named   the same with made-up keys that name the legitimate tenant
          (`fnk_<tenant>_...`), which a gateway may look up once a second.

With the defaults the flood's source is held back past 20 failures a second
(FNHOST_AUTH_FAILURES_PER_S, FNHOST_AUTH_HOLD_S); `--setting auth_hold_s=0`
measures the keys held in memory alone.

For each: the tenant's latency (p50, p90, p99), the flood's 401s per second, the CPU
share (of one core) of the MongoDB-wire server and of the gateway, and the
gateway's `fnhost_key_lookups_total` (database lookups of keys not in memory).

    .venv/bin/python bench/key_flood_bench.py [--seconds 10] [--connections 16]
        [--root OTHER_CHECKOUT]   # run that checkout's gateway and scheduler instead
        [--setting NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import (
    ADMIN_KEY,
    MongoServer,
    Settings,
    deploy,
    log,
    machine,
    own_platform,
    parse_settings,
    percentile,
    zip_dir,
)

import tests.harness as harness

FLOOD_LUA = """
local prefix = "%s"
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
math.randomseed(os.time())
request = function()
  local t = {}
  for i = 1, 43 do
    local n = math.random(1, #chars)
    t[i] = chars:sub(n, n)
  end
  local headers = {["Authorization"] = "Bearer " .. prefix .. table.concat(t)}
  return wrk.format("GET", "/v1/functions", headers)
end
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def key_lookups(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    found = re.search(r"^fnhost_key_lookups_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")  # nan: a gateway without the metric


def legit_latencies(client: httpx.Client, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        r = client.post("/v1/functions/noop/invocations", content=b"{}",
                        headers={"Content-Type": "application/json"})
        out.append((time.perf_counter() - started) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"the legitimate tenant got {r.status_code}: {r.text[:300]}")


def flood(url: str, prefix: str, seconds: float, connections: int, script_dir: Path) -> float:
    """Run wrk with made-up keys; its 401s per second (any other status fails the bench)."""
    script = script_dir / "flood.lua"
    script.write_text(FLOOD_LUA % prefix)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx or 3xx responses" not in out:
        raise SystemExit(f"wrk saw no 401: {out}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(rate.group(1)) if rate else 0.0


def phase(name: str, url: str, client: httpx.Client, pids: dict[str, int], seconds: float,
          flood_prefix: str | None, connections: int, script_dir: Path) -> dict[str, object]:
    log(f"{name}: {seconds:.0f} s")
    lookups, cpu, started = key_lookups(url), {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    stop, latencies = threading.Event(), []  # type: ignore[var-annotated]
    invoker = threading.Thread(target=legit_latencies, args=(client, stop, latencies), daemon=True)
    invoker.start()
    rate = 0.0
    if flood_prefix is None:
        time.sleep(seconds)
    else:
        rate = flood(url, flood_prefix, seconds, connections, script_dir)
    stop.set()
    invoker.join()
    elapsed = time.monotonic() - started
    return {
        "phase": name,
        "flood_401_per_s": round(rate),
        "legit_invokes": len(latencies),
        "legit_ms": {q: round(percentile(latencies, v), 2)
                     for q, v in (("p50", .5), ("p90", .9), ("p99", .99))},
        "cpu_pct": {k: round(100 * (cpu_seconds(p) - cpu[k]) / elapsed, 1) for k, p in pids.items()},
        "key_lookups": key_lookups(url) - lookups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--root", type=Path, help="run the platform from this checkout")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an FNHOST_* setting of the platform, e.g. auth_hold_s=0")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    if args.root is not None:
        harness.ROOT = args.root.resolve()  # where Platform starts `runtime.cli` from
    # The production stem pool, as bench_platform starts it.
    settings: dict[str, object] = {n: Settings.model_fields[n].default
                                   for n in ("stem_cells", "stem_cells_min", "stem_cells_max")}
    settings.update(parse_settings(args.setting))
    mongo = MongoServer()
    mongo.start()
    assert mongo.proc is not None
    script_dir = Path(tempfile.mkdtemp(prefix="fnhost-flood-"))
    try:
        with own_platform(mongo.url, **settings) as platform:
            pids = {"mongodb": mongo.proc.pid, "gateway": platform.procs["gateway"].pid}
            client = platform.new_tenant()
            assert deploy(client, "noop", zip_dir("noop")).status_code in (200, 201)
            for _ in range(50):  # warm
                client.post("/v1/functions/noop/invocations", content=b"{}")
            tenant = client.tenant_id  # type: ignore[attr-defined]
            report = {**machine(), "root": str(harness.ROOT), "settings": args.setting,
                      "seconds": args.seconds,
                      "connections": args.connections, "phases": [
                          phase(name, platform.url, client, pids, args.seconds, prefix,
                                args.connections, script_dir)
                          for name, prefix in (("idle", None), ("flood", "fnk_"),
                                               ("named", f"fnk_{tenant}_"), ("idle-after", None))
                      ]}
            client.close()
    finally:
        mongo.stop()
        shutil.rmtree(script_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
