"""A new function's first invoke on a fresh platform and on one whose container slots
were just filled by other functions' bursts, against `docker run --rm` in the same run.

    .venv/bin/python bench/first_invoke_bench.py [--setting max_containers=64]

Starts its own platform with the production defaults (unless `--setting NAME=VALUE`),
then:

1. fresh: `--starts` new no-op functions are deployed and each invoked once (sync),
   `--pause` apart, then as many `docker run --rm` of the runtime image running the
   same handler;
2. fill: `--fill-functions` functions of `--fill-concurrency` each run a burst of
   async sleeps (twice their concurrency, `--fill-sleep` s each), so that their idle
   warm containers take every container slot the scheduler has (its count and its
   memory budget; the report shows the pool as the gateway's /metrics has it);
3. busy: at once, `--starts` more new functions' first invokes, and as many
   `docker run --rm` again.

Reported: first-invoke p50 in each state, how each was served (the `X-Fnhost-Start`
header: stem, cold), and how many times faster than `docker run --rm` it was. Targets
(busy platform): p50 at most 10 ms and at least 20x faster than `docker run --rm`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from typing import Any

import httpx
from common import bench_platform, fill, log, machine, parse_settings, pool_state
from sync_bench import docker_runs, summary

from tests.harness import deploy, invoke, zip_dir

P50_TARGET_MS = 10.0
RATIO_TARGET = 20.0


def first_invokes(client: httpx.Client, count: int, pause_s: float, tag: str) -> dict[str, Any]:
    """Deploy `count` new no-op functions, then invoke each once, `pause_s` apart."""
    names = [f"new-{tag}-{i}" for i in range(count)]
    bundle = zip_dir("noop")
    for name in names:
        deploy(client, name, bundle).raise_for_status()
    times, kinds, inits = [], [], []
    for name in names:
        time.sleep(pause_s)
        started = time.perf_counter()
        r = invoke(client, name, {})
        times.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
        kinds.append(r.headers.get("x-fnhost-start", "?"))
        # Server-Timing: init;dur=<specialisation ms>, run;dur=<handler ms>
        m = re.search(r"init;dur=([\d.]+)", r.headers.get("server-timing", ""))
        if m:
            inits.append(float(m.group(1)))
    return {**summary(times), "served_by": dict(Counter(kinds)),
            "specialisation_p50_ms": round(statistics.median(inits), 2) if inits else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=8, help="new functions per state")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between first invokes")
    parser.add_argument("--fill-functions", type=int, default=8)
    parser.add_argument("--fill-concurrency", type=int, default=20)
    parser.add_argument("--fill-sleep", type=float, default=0.5)
    parser.add_argument("--image", default="fnhost/python3.11")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the platform (FNHOST_NAME); the defaults otherwise")
    args = parser.parse_args()
    settings = parse_settings(args.setting)
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    with bench_platform(**settings) as platform, platform.new_tenant() as client:
        time.sleep(2)  # the initial stem cells
        log(f"fresh: {args.starts} new functions' first invokes")
        fresh = first_invokes(client, args.starts, args.pause, "fresh")
        docker_fresh = summary(docker_runs(args.image, args.starts))
        log(f"fill: {args.fill_functions} functions x {args.fill_concurrency} containers")
        started = time.monotonic()
        fill(client, args.fill_functions, args.fill_concurrency, args.fill_sleep)
        report["fill_s"] = round(time.monotonic() - started, 1)
        report["pool_after_fill"] = pool_state(platform)
        log(f"busy: {args.starts} new functions' first invokes; pool {report['pool_after_fill']}")
        busy = first_invokes(client, args.starts, args.pause, "busy")
        docker_busy = summary(docker_runs(args.image, args.starts))
        report["pool_at_end"] = pool_state(platform)
    report["fresh"] = {"first_invoke": fresh, "docker_run_rm": docker_fresh,
                       "ratio": round(docker_fresh["p50_ms"] / fresh["p50_ms"], 1)}
    report["busy"] = {"first_invoke": busy, "docker_run_rm": docker_busy,
                      "ratio": round(docker_busy["p50_ms"] / busy["p50_ms"], 1)}
    print(json.dumps(report, indent=2))
    print()
    for state in ("fresh", "busy"):
        r = report[state]
        met = r["first_invoke"]["p50_ms"] <= P50_TARGET_MS and r["ratio"] >= RATIO_TARGET
        print(f"{state}: first invoke p50 {r['first_invoke']['p50_ms']} ms "
              f"(served by {r['first_invoke']['served_by']}), docker run --rm p50 "
              f"{r['docker_run_rm']['p50_ms']} ms: {r['ratio']}x; targets <= {P50_TARGET_MS:g} ms "
              f"and >= {RATIO_TARGET:g}x: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
