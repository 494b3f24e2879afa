"""What freezing idle warm containers costs the warm sync path (FNHOST_FREEZE_IDLE).

Platforms of its own, one per freezing setting, all up at once. Their requests
are interleaved one by one (each pass calls every platform once, in an order
that rotates), so that the load of a shared machine falls on each alike: on a
loaded 2-core machine, rounds of seconds per platform (as sync_bench.py runs
wrk) differ between themselves by more than what is measured here.

(a) back to back: passes with no pause. A platform sees its next invocation a
    millisecond or two after the last: with the default FNHOST_FREEZE_AFTER_S
    its container is never frozen; `auto-0` (FNHOST_FREEZE_AFTER_S=0) freezes it
    after every invocation and thaws it on the next, the worst case.
(b) spaced: a pause of `--gap` seconds (past the freeze delay) before each pass,
    so that with freezing on every invocation first thaws its container.

Reported per setting: p50, p90, p99 (ms, client side, one keep-alive connection
each) and their ratios to the first (`off`, or with `--baseline-root` the code
before freezing came, as `before`).

    git archive <commit before> | tar -x -C /tmp/fnhost-before
    .venv/bin/python bench/freeze_bench.py --calls 2000 --spaced 300 \
        --baseline-root /tmp/fnhost-before
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, log, machine, percentile
from sync_bench import zip_folder

from tests.harness import ADMIN_KEY, MongoServer, Platform, own_platform

NOOP = ROOT / "functions" / "noop"
SETUPS: dict[str, dict[str, Any]] = {
    "off": {"freeze_idle": "off"},
    "auto": {"freeze_idle": "auto"},
    "auto-0": {"freeze_idle": "auto", "freeze_after_s": 0},
    "docker": {"freeze_idle": "docker"},
}


def tenant_key(platform: Platform) -> str:
    """A fresh tenant's key, with `functions/noop` deployed as bench-noop and warmed."""
    with platform.new_tenant() as client:
        r = client.put("/v1/functions/bench-noop", content=zip_folder(NOOP),
                       headers={"Content-Type": "application/zip"})
        r.raise_for_status()
        for _ in range(20):
            client.post("/v1/functions/bench-noop/invocations", json={}).raise_for_status()
        return str(client.headers["Authorization"]).removeprefix("Bearer ")


class Caller:
    """Sync invocations of bench-noop on one keep-alive connection, timed client side."""

    def __init__(self, platform: Platform, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", platform.port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.starts: set[str | None] = set()

    def __call__(self) -> float:
        t = time.perf_counter()
        self.conn.request("POST", "/v1/functions/bench-noop/invocations", body=b"{}",
                          headers=self.headers)
        r = self.conn.getresponse()
        r.read()
        ms = (time.perf_counter() - t) * 1000
        if r.status != 200:
            raise SystemExit(f"invoke: {r.status}")
        self.starts.add(r.getheader("x-fnhost-start"))
        return ms


def interleaved(callers: dict[str, Caller], passes: int, gap_s: float) -> dict[str, list[float]]:
    modes = list(callers)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for n in range(passes):
        if gap_s:
            time.sleep(gap_s)
        k = n % len(modes)
        for mode in modes[k:] + modes[:k]:
            times[mode].append(callers[mode]())
    return times


def points(times: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}_ms": round(percentile(times, q), 3) for q in (0.5, 0.9, 0.99)}


def frozen_count(platform: Platform) -> float:
    text = httpx.get(f"{platform.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("fnhost_pool_freezes_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="back-to-back passes")
    parser.add_argument("--spaced", type=int, default=300, help="spaced passes")
    parser.add_argument("--gap", type=float, default=0.25)
    parser.add_argument("--modes", default=",".join(SETUPS))
    parser.add_argument(
        "--baseline-root", type=Path,
        help="a checkout of the code before freezing (e.g. `git archive` of main, unpacked): "
             "measured first, as `before`, and the ratios are to it",
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.baseline_root is not None:
        modes.insert(0, "before")
    base = modes[0]
    report: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    mongo = MongoServer()
    mongo.start()
    with contextlib.ExitStack() as stack:
        stack.callback(mongo.stop)
        callers: dict[str, Caller] = {}
        platforms: dict[str, Platform] = {}
        for mode in modes:
            log(f"starting the platform {mode}")
            if mode == "before":
                platform = own_platform(mongo.url, root=args.baseline_root.resolve())
            else:
                platform = own_platform(mongo.url, **SETUPS[mode])
            platforms[mode] = stack.enter_context(platform)
            callers[mode] = Caller(platforms[mode], tenant_key(platforms[mode]))
        log(f"{args.calls} back-to-back passes")
        back = interleaved(callers, args.calls, 0.0)
        log(f"{args.spaced} spaced passes, {args.gap} s apart")
        spaced = interleaved(callers, args.spaced, args.gap)
        report["freezes"] = {mode: frozen_count(platforms[mode]) for mode in modes}
        report["starts"] = {mode: sorted(map(str, c.starts)) for mode, c in callers.items()}
    report["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    for name, times in (("back_to_back", back), ("spaced", spaced)):
        figures = {mode: points(t) for mode, t in times.items()}
        report[name] = {
            mode: {**f, **{k.replace("_ms", "_ratio"): round(v / figures[base][k], 3)
                           for k, v in f.items()}}
            for mode, f in figures.items()
        }
    print(json.dumps(report, indent=2, default=str))
    for name in ("back_to_back", "spaced"):
        for mode in modes[1:]:
            r = report[name][mode]
            print(f"{name:>12} {mode:>7} / {base}: p50 {r['p50_ratio']}x p90 {r['p90_ratio']}x "
                  f"p99 {r['p99_ratio']}x", file=sys.stderr)


if __name__ == "__main__":
    main()
