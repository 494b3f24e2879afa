"""Back-pressure benchmark: a tenant flooding beside a quiet one, and what max_rate costs.

    .venv/bin/python bench/backpressure_bench.py [--seconds 20] [--flood-rate 400]

Starts its own platform (a gateway and a scheduler, as the tests do: a MongoDB-wire
server of its own, a RabbitMQ vhost of its own, the local Docker engine and the
runtime image) with FNHOST_BACKLOG_MESSAGES=--backlog-messages.

(c) two tenants, each with a function `work` (functions/sleep, 50 ms a task,
    max_concurrency 4: about 80 tasks a second at most). Q submits `--quiet-rate`
    Event invocations a second over one connection, first alone, then beside F:
    F floods from `--flood-connections` connections at `--flood-rate` a second in
    all (several times what its function can run), answered 429 or not, ignoring
    Retry-After (the worst case: a producer that does not back off; with
    `--honor-retry-after` each connection waits as told). F floods `--flood-warmup`
    seconds first, so that its backlog is past the threshold when Q starts.
    Reported: Q's completion times (its task records: submission to final status)
    p50/p95 alone and beside F and their ratio (target <= 1.5); Q's 429s; F's 202s
    and 429s while Q ran, and the 429 share; the gateway's and the scheduler's CPU.

(f) the same two tenants from a standing start: F's function has never been
    submitted to (no drain rate known, its queue empty) when F starts flooding from
    `--flood-connections` connections back to back (as fast as the gateway answers),
    and Q starts its phase at the same moment. `--fresh-rounds` rounds: the first on
    F's fresh function, the later ones on the same function once its backlog has
    drained (a platform with history). Reported per round: the time from F's first
    submission to its first 429, its 429 share over the round and after its first
    2 s, Retry-After, and Q's completion p50/p95 beside F against Q alone (measured
    first, in the same run) and their ratio (target <= 1.5; F's first 429 within
    2 s), and the p95 of Q's tasks submitted from 1 s after F's first 429 (what
    refusing F does for Q). Run with `--backlog-wait-s 86400` for the thresholds on
    depth and age only, as before FNHOST_BACKLOG_WAIT_S.

(d) what max_rate adds to an async submit: Event invocations one after the other
    over one connection to a no-op function without max_rate, and to one with a
    max_rate never reached (100,000/s: its tokens come from leases, a MongoDB round
    trip per lease), alternating `--rate-rounds` rounds of `--rate-submits`; then
    `--slow-submits` paced at 15 a second to a function without max_rate and to one
    with a max_rate of 20 (leases of one or two tokens: a round trip every one or two
    submits). p50/p95 latency of each and the differences.

Output: a JSON report on stdout, then one summary line per figure; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from async_bench import CpuMeter, HttpConnection, event_head
from common import bench_platform, log, machine, percentile
from flow_bench import completion_s, figures, wait_final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Platform, deploy, invoke  # noqa: E402

RATIO_TARGET = 1.5  # Q's p95 beside F over Q's p95 alone
WORK = {"seconds": 0.05}
WORK_CONFIG = {"max_concurrency": 4}
Answer = Callable[[int, dict[str, str], float], None]


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def paced(url: str, head: bytes, body: bytes, rate: float, seconds: float, on_answer: Answer,
                prefix: str | None = None, honor_retry_after: bool = False) -> None:
    """Submit at `rate` a second for `seconds` over one connection (back to back when the
    answers are slower than the pace); `prefix` names the task ids (`prefix-<n>`)."""
    conn = HttpConnection(*host_port(url))
    interval, started = 1.0 / rate, time.monotonic()
    next_at, end, n = started, started + seconds, 0
    try:
        while (now := time.monotonic()) < end:
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at += interval
            sent = head if prefix is None else head + f"X-Task-Id: {prefix}-{n}\r\n".encode()
            n += 1
            t0 = time.perf_counter()
            status, headers, _ = await conn.request(sent, body)
            on_answer(status, headers, time.perf_counter() - t0)
            if honor_retry_after and status == 429:
                wait = float(headers.get("retry-after", "1"))
                await asyncio.sleep(min(wait, max(0.0, end - time.monotonic())))
                next_at = time.monotonic()
    finally:
        conn.close()


class Counts:
    """Answers by status, and their latencies."""

    def __init__(self) -> None:
        self.status: dict[int, int] = {}
        self.order: list[int] = []  # each answer's status, in the order sent
        self.latency: list[float] = []
        self.retry_after: list[int] = []
        self.at: list[float] = []  # when each answer came (time.monotonic)
        self.completion: dict[float, float] = {}  # answer time -> the task's completion time

    def __call__(self, status: int, headers: dict[str, str], seconds: float) -> None:
        self.status[status] = self.status.get(status, 0) + 1
        self.order.append(status)
        self.at.append(time.monotonic())
        self.latency.append(seconds)
        if status == 429:
            self.retry_after.append(int(headers.get("retry-after", "0")))

    def reset(self) -> None:
        self.status.clear()
        self.order.clear()
        self.latency.clear()
        self.retry_after.clear()
        self.at.clear()


def new_tenant(platform: Platform, name: str) -> tuple[httpx.Client, str]:
    """A tenant's client and its API key."""
    client = platform.new_tenant(name)
    return client, str(client.headers["authorization"]).split(" ", 1)[1]


def deploy_fn(client: httpx.Client, name: str, bundle: str, config: dict[str, Any]) -> None:
    r = deploy(client, name, bundle, config)
    if r.status_code not in (200, 201):
        raise SystemExit(f"deploying {name}: {r.status_code} {r.text[:300]}")
    invoke(client, name, WORK if bundle == "sleep" else None).raise_for_status()  # a warm container


# -- (c) a flooding tenant beside a quiet one ------------------------------------------


async def quiet_phase(platform: Platform, q: httpx.Client, key: str, prefix: str,
                      args: argparse.Namespace) -> tuple[dict[str, float], Counts]:
    counts = Counts()
    await paced(platform.url, event_head(platform.url, key, "work"), json.dumps(WORK).encode(),
                args.quiet_rate, args.seconds, counts, prefix)
    accepted = [f"{prefix}-{n}" for n, status in enumerate(counts.order) if status == 202]
    if not accepted:
        raise SystemExit(f"none of Q's submissions was accepted: {counts.status}")
    tasks = await asyncio.to_thread(wait_final, q, "work", accepted, args.timeout)
    counts.completion = {counts.at[int(task_id.rsplit("-", 1)[1])]: completion_s(t)
                         for task_id, t in tasks.items()}
    return figures([completion_s(t) for t in tasks.values()]), counts


async def scenario_c(platform: Platform, args: argparse.Namespace) -> dict[str, Any]:
    f, f_key = new_tenant(platform, "bench-flood")
    q, q_key = new_tenant(platform, "bench-quiet")
    for client in (f, q):
        deploy_fn(client, "work", "sleep", WORK_CONFIG)
    meter = CpuMeter({"gateway": platform.procs["gateway"].pid,
                      "scheduler": platform.procs["scheduler"].pid})
    log(f"(c) warm-up: Q at {args.quiet_rate}/s for 5 s")
    warm = argparse.Namespace(**{**vars(args), "seconds": 5.0})
    await quiet_phase(platform, q, q_key, "warm", warm)

    log(f"(c) Q alone: {args.quiet_rate}/s for {args.seconds:g} s")
    meter.start()
    alone, _ = await quiet_phase(platform, q, q_key, "alone", args)
    cpu_alone = meter.per_task(1)

    flood = Counts()
    head, body = event_head(platform.url, f_key, "work"), json.dumps(WORK).encode()
    per_connection = args.flood_rate / args.flood_connections
    flood_s = args.flood_warmup + args.seconds
    log(f"(c) F floods at {args.flood_rate:g}/s from {args.flood_connections} connections; "
        f"Q starts after {args.flood_warmup:g} s")
    flooders = [asyncio.ensure_future(paced(platform.url, head, body, per_connection, flood_s, flood,
                                            honor_retry_after=args.honor_retry_after))
                for _ in range(args.flood_connections)]
    await asyncio.sleep(args.flood_warmup)
    warmup_status = dict(flood.status)
    flood.reset()
    meter.start()
    beside, q_counts = await quiet_phase(platform, q, q_key, "beside", args)
    cpu_beside = meter.per_task(1)
    measured = dict(flood.status)
    await asyncio.gather(*flooders)
    sent = sum(measured.values())
    return {
        "q_alone": alone,
        "q_beside_f": beside,
        "ratio_p95": round(beside["p95_s"] / alone["p95_s"], 3),
        "q_answers": q_counts.status,
        "f_warmup_answers": warmup_status,
        "f_answers_while_q_ran": measured,
        "f_429_share": round(measured.get(429, 0) / max(1, sent), 3),
        "f_offered_per_s": round(sent / args.seconds, 1),
        "f_retry_after_s": {"min": min(flood.retry_after, default=None),
                            "max": max(flood.retry_after, default=None)},
        "f_answer_ms": {"p50": round(percentile(flood.latency, 0.5) * 1000, 2),
                        "p95": round(percentile(flood.latency, 0.95) * 1000, 2)} if flood.latency else {},
        "cpu_ms_alone": cpu_alone,
        "cpu_ms_beside": cpu_beside,
    }


def summary_c(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    verdict = "met" if r["ratio_p95"] <= RATIO_TARGET else "MISSED"
    f = r["f_answers_while_q_ran"]
    return [
        f"(c) Q p95 completion {r['q_beside_f']['p95_s']} s beside F, {r['q_alone']['p95_s']} s alone "
        f"(p50 {r['q_beside_f']['p50_s']} / {r['q_alone']['p50_s']} s): ratio {r['ratio_p95']}; "
        f"target <= {RATIO_TARGET}: {verdict}; Q's answers {r['q_answers']}",
        f"    F while Q ran: {f.get(202, 0)} accepted, {f.get(429, 0)} refused with 429 "
        f"({r['f_429_share'] * 100:.1f}% of {r['f_offered_per_s']}/s offered, Retry-After "
        f"{r['f_retry_after_s']['min']}-{r['f_retry_after_s']['max']} s); threshold "
        f"{args.backlog_messages} messages",
        f"    CPU ms over the phase: alone {r['cpu_ms_alone']}, beside F {r['cpu_ms_beside']}",
    ]


# -- (f) a flood from a standing start -----------------------------------------------


def wait_drained(client: httpx.Client, name: str, timeout: float) -> None:
    """Until none of `name`'s tasks is still waiting in a queue."""
    deadline = time.monotonic() + timeout
    while client.get("/v1/tasks", params={"function": name, "status": "Enqueued",
                                          "limit": 1}).json()["tasks"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}'s backlog did not drain in {timeout:g} s")
        time.sleep(0.5)


async def fresh_round(platform: Platform, q: httpx.Client, q_key: str, f_key: str, prefix: str,
                      args: argparse.Namespace) -> dict[str, Any]:
    flood = Counts()
    head, body = event_head(platform.url, f_key, "work"), json.dumps(WORK).encode()
    # Back to back: a pace no connection keeps up with.
    started = time.monotonic()
    flooders = [asyncio.ensure_future(paced(platform.url, head, body, 100_000.0, args.seconds, flood,
                                            honor_retry_after=args.honor_retry_after))
                for _ in range(args.flood_connections)]
    beside, q_counts = await quiet_phase(platform, q, q_key, prefix, args)
    await asyncio.gather(*flooders)
    first = next((at for at, status in zip(flood.at, flood.order, strict=True) if status == 429), None)
    # Q's tasks submitted after F was first told, and a second later: what refusing does.
    told = [c for at, c in q_counts.completion.items() if first is not None and at > first + 1.0]
    late = [status for at, status in zip(flood.at, flood.order, strict=True) if at - started > 2.0]
    sent = len(flood.order)
    return {
        "q_beside_f": beside,
        "q_answers": q_counts.status,
        "q_after_f_told": figures(told) if len(told) >= 20 else None,
        "f_answers": flood.status,
        "f_first_429_s": None if first is None else round(first - started, 3),
        "f_429_share": round(flood.status.get(429, 0) / max(1, sent), 3),
        "f_429_share_after_2s": round(late.count(429) / max(1, len(late)), 3),
        "f_offered_per_s": round(sent / args.seconds, 1),
        "f_retry_after_s": {"min": min(flood.retry_after, default=None),
                            "max": max(flood.retry_after, default=None)},
    }


async def scenario_f(platform: Platform, args: argparse.Namespace) -> dict[str, Any]:
    f, f_key = new_tenant(platform, "bench-fresh-flood")
    q, q_key = new_tenant(platform, "bench-fresh-quiet")
    for client in (f, q):
        deploy_fn(client, "work", "sleep", WORK_CONFIG)
    log(f"(f) warm-up: Q at {args.quiet_rate}/s for 5 s")
    await quiet_phase(platform, q, q_key, "fwarm", argparse.Namespace(**{**vars(args), "seconds": 5.0}))
    log(f"(f) Q alone: {args.quiet_rate}/s for {args.seconds:g} s")
    alone, _ = await quiet_phase(platform, q, q_key, "falone", args)
    rounds = []
    for n in range(args.fresh_rounds):
        if n:
            log("(f) waiting for F's backlog to drain")
            await asyncio.to_thread(wait_drained, f, "work", args.timeout)
        log(f"(f) round {n + 1}: F floods from {args.flood_connections} connections back to back, "
            f"Q at {args.quiet_rate}/s, for {args.seconds:g} s")
        r = await fresh_round(platform, q, q_key, f_key, f"fbeside{n}", args)
        r["ratio_p95"] = round(r["q_beside_f"]["p95_s"] / alone["p95_s"], 3)
        rounds.append(r)
    return {"q_alone": alone, "rounds": rounds}


def summary_f(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = []
    for n, one in enumerate(r["rounds"]):
        first = one["f_first_429_s"]
        verdict = ("met" if one["ratio_p95"] <= RATIO_TARGET and first is not None and first <= 2.0
                   else "MISSED")
        f = one["f_answers"]
        lines += [
            f"(f) round {n + 1} ({'fresh' if n == 0 else 'with history'}): F's first 429 after "
            f"{first} s; F {f.get(202, 0)} accepted, {f.get(429, 0)} refused "
            f"({one['f_429_share'] * 100:.1f}%, {one['f_429_share_after_2s'] * 100:.1f}% after 2 s, "
            f"{one['f_offered_per_s']}/s offered, Retry-After {one['f_retry_after_s']['min']}-"
            f"{one['f_retry_after_s']['max']} s)",
            f"    Q p95 completion {one['q_beside_f']['p95_s']} s beside F, {r['q_alone']['p95_s']} s "
            f"alone (p50 {one['q_beside_f']['p50_s']} / {r['q_alone']['p50_s']} s): ratio "
            f"{one['ratio_p95']}; targets first 429 <= 2 s, ratio <= {RATIO_TARGET}: {verdict}; "
            f"Q's answers {one['q_answers']}",
        ]
        after = one["q_after_f_told"]
        if after is not None:
            lines.append(f"    Q's tasks submitted from 1 s after F's first 429: p95 {after['p95_s']} s, "
                         f"ratio {round(after['p95_s'] / r['q_alone']['p95_s'], 3)}")
    return lines


# -- (d) what max_rate adds to a submit --------------------------------------------------


def latency(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5) * 1000, 3),
            "p95_ms": round(percentile(values, 0.95) * 1000, 3), "n": len(values)}


async def sequential(url: str, head: bytes, n: int) -> list[float]:
    """`n` Event invocations one after the other; their latencies."""
    times = []
    conn = HttpConnection(*host_port(url))
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _, body = await conn.request(head, b"{}")
            if status != 202:
                raise SystemExit(f"(d) {status}: {body[:300]!r}")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return times


async def scenario_d(platform: Platform, args: argparse.Namespace) -> dict[str, Any]:
    client, key = new_tenant(platform, "bench-rate")
    configs = {"plain": {}, "capped": {"max_rate": 100000}, "slow-capped": {"max_rate": 20}}
    for name, config in configs.items():
        deploy_fn(client, name, "noop", config)
    url = platform.url
    heads = {name: event_head(url, key, name) for name in configs}
    fast: dict[str, list[float]] = {"plain": [], "capped": []}
    log(f"(d) {args.rate_rounds} rounds of {args.rate_submits} sequential submits, with and "
        "without max_rate")
    await sequential(url, heads["plain"], 200)  # warm
    await sequential(url, heads["capped"], 200)
    for round_ in range(args.rate_rounds):  # A B B A ...: a load coming and going hits both
        for name in ("plain", "capped") if round_ % 2 == 0 else ("capped", "plain"):
            fast[name] += await sequential(url, heads[name], args.rate_submits)
    slow: dict[str, list[float]] = {}
    log(f"(d) {args.slow_submits} submits at 15/s, without max_rate and with max_rate 20")
    for name in ("plain", "slow-capped"):
        counts = Counts()
        await paced(url, heads[name], b"{}", 15.0, args.slow_submits / 15.0, counts)
        if set(counts.status) != {202}:
            raise SystemExit(f"(d) {name}: {counts.status}")
        slow[name] = counts.latency
    out = {name: latency(v) for name, v in fast.items()}
    out["paced_plain"] = latency(slow["plain"])
    out["paced_slow_capped"] = latency(slow["slow-capped"])
    out["added_p50_ms"] = round(out["capped"]["p50_ms"] - out["plain"]["p50_ms"], 3)
    out["added_p95_ms"] = round(out["capped"]["p95_ms"] - out["plain"]["p95_ms"], 3)
    out["added_paced_p50_ms"] = round(out["paced_slow_capped"]["p50_ms"] - out["paced_plain"]["p50_ms"], 3)
    return out


def summary_d(r: dict[str, Any]) -> list[str]:
    return [
        f"(d) async submit, one connection: no max_rate p50 {r['plain']['p50_ms']} ms / p95 "
        f"{r['plain']['p95_ms']} ms; max_rate 100000 (leases) p50 {r['capped']['p50_ms']} / p95 "
        f"{r['capped']['p95_ms']} ms: added {r['added_p50_ms']:+} / {r['added_p95_ms']:+} ms",
        f"    at 15/s: no max_rate p50 {r['paced_plain']['p50_ms']} ms, max_rate 20 (a round trip "
        f"every one or two submits) p50 {r['paced_slow_capped']['p50_ms']} ms: "
        f"added {r['added_paced_p50_ms']:+} ms",
    ]


async def run(platform: Platform, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "d" in args.figures:  # first: the flood of (c) leaves a backlog behind
        out["d"] = await scenario_d(platform, args)
    if "c" in args.figures:
        out["c"] = await scenario_c(platform, args)
    if "f" in args.figures:
        out["f"] = await scenario_f(platform, args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", default="cd",
                        help="c: flood beside a quiet tenant, d: max_rate cost, f: a flood from a "
                             "standing start")
    parser.add_argument("--seconds", type=float, default=20.0, help="(c) length of each Q phase")
    parser.add_argument("--quiet-rate", type=float, default=10.0, help="(c) Q's submissions a second")
    parser.add_argument("--flood-rate", type=float, default=400.0, help="(c) F's submissions a second")
    parser.add_argument("--flood-connections", type=int, default=8)
    parser.add_argument("--flood-warmup", type=float, default=10.0,
                        help="(c) seconds F floods before Q starts")
    parser.add_argument("--honor-retry-after", action="store_true",
                        help="(c, f) F's connections wait as a 429's Retry-After says")
    parser.add_argument("--backlog-messages", type=int, default=500,
                        help="the platform's FNHOST_BACKLOG_MESSAGES")
    parser.add_argument("--backlog-wait-s", type=float, default=None,
                        help="the platform's FNHOST_BACKLOG_WAIT_S (default: the platform's)")
    parser.add_argument("--backlog-burst", type=int, default=None,
                        help="the platform's FNHOST_BACKLOG_BURST (default: the platform's)")
    parser.add_argument("--fresh-rounds", type=int, default=2,
                        help="(f) rounds: the first on a fresh function, then with history")
    parser.add_argument("--rate-rounds", type=int, default=4)
    parser.add_argument("--rate-submits", type=int, default=500)
    parser.add_argument("--slow-submits", type=int, default=150)
    parser.add_argument("--timeout", type=float, default=300, help="limit of each wait")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    settings: dict[str, Any] = {"backlog_messages": args.backlog_messages}
    if args.backlog_wait_s is not None:
        settings["backlog_wait_s"] = args.backlog_wait_s
    if args.backlog_burst is not None:
        settings["backlog_burst"] = args.backlog_burst
    with bench_platform(**settings) as platform:
        report["figures"] = asyncio.run(run(platform, args))
    print(json.dumps(report, indent=2))
    print()
    figures_ = report["figures"]
    if "c" in figures_:
        for line in summary_c(figures_["c"], args):
            print(line)
    if "f" in figures_:
        for line in summary_f(figures_["f"], args):
            print(line)
    if "d" in figures_:
        for line in summary_d(figures_["d"]):
            print(line)


if __name__ == "__main__":
    main()
