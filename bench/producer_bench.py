"""A Python producer end to end: one invocation per request against a batch of them,
and Celery's producer, in the same run.

A producer as users write one: `--threads` (8) threads of this process, each with
one keep-alive connection (urllib3), submit `--tasks` (2,000) no-op tasks whose
function has a `webhook` on_success destination (bench/webhook_receiver.py, a
process of its own); the time runs from the first request to the arrival of the
last record. Each task mode (on, off) is measured with

- `single`: one Event invocation per request (`POST .../invocations`);
- `batch`: `--batch-size` (100) tasks per request (`POST .../invocations/batch`);
- `sdk`: the same batches sent by the Python SDK (`fnhost.Client.submit_many`, httpx),
  as a user's producer would;

and against the Celery peer of that mode (bench/async_bench.py's set-ups, on the
same RabbitMQ and MongoDB-wire server, tasks sent from as many threads): `rpc`
(results over RabbitMQ, no database: task mode off) and `mongodb-started` (the
MongoDB result backend with task_track_started: task mode on).

    .venv/bin/python bench/producer_bench.py [--rounds 2]

By default the bench starts a platform of its own (as the tests do: its own
MongoDB-wire server, RabbitMQ vhost and processes) and stops it at the end;
`--url` and `--admin-key` point it at a running one instead, which must allow its
webhook receiver's address (FNHOST_WEBHOOK_ALLOWED_NETWORKS=127.0.0.1/32). Needs
rabbitmqctl (the Celery vhost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import urllib3
from async_bench import CELERY_VARIANTS, PEERS, Celery, CpuMeter, Platform, Receiver, SchedulerProfile
from common import bench_platform, log, machine, percentile

import fnhost
from tests.harness import ADMIN_KEY

MODES = ("notask", "task")  # task mode off, on
PATHS = ("single", "batch", "sdk")
RATIO_TARGET = 1.5  # the batch producer's tasks/s over Celery's


# -- the producer ------------------------------------------------------------------


class Producer:
    """`threads` threads, one keep-alive connection each, sharing the work: the next
    request (one task, or a batch of tasks) goes to whichever thread is free."""

    def __init__(self, url: str, key: str, threads: int) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key = key
        self.threads = threads

    def run(self, function: str, n: int, batch_size: int, sdk: bool = False) -> Submitted:
        """Submit n tasks (one a request when `batch_size` is 0). A task refused with 429
        (back-pressure) is sent again after its Retry-After, as a well-behaved producer
        does; any other refusal fails the bench."""
        sizes = [1] * n if not batch_size else [min(batch_size, n - i) for i in range(0, n, batch_size)]
        path = f"/v1/functions/{function}/invocations" + ("/batch" if batch_size else "")
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if not batch_size:
            headers["X-Invocation-Type"] = "Event"
        turns = itertools.count()  # next() is atomic under the GIL
        out = Submitted()
        errors: list[str] = []
        started: list[float] = []
        barrier = threading.Barrier(self.threads, action=lambda: started.append(time.monotonic()))

        def send(pool: urllib3.HTTPConnectionPool, size: int) -> tuple[int, float]:
            """One request of `size` tasks: how many were refused with 429, and the wait."""
            body = b"{}" if not batch_size else orjson.dumps({"tasks": [{"payload": {}}] * size})
            sent = time.monotonic()
            r = pool.urlopen("POST", path, body=body, headers=headers, preload_content=True)
            if not batch_size:
                if r.status == 202:
                    out.ids[r.headers["x-task-id"]] = sent
                    return 0, 0.0
                if r.status == 429:
                    return 1, float(r.headers.get("retry-after", 1))
                errors.append(f"{r.status} {r.data[:200]!r}")
                return 0, 0.0
            if r.status != 200:
                errors.append(f"{r.status} {r.data[:200]!r}")
                return 0, 0.0
            refused, wait = 0, 0.0
            for result in orjson.loads(r.data)["results"]:
                if result["status"] == 202:
                    out.ids[result["task_id"]] = sent
                elif result["status"] == 429:
                    refused += 1
                    wait = max(wait, float(result["error"]["retry_after_s"]))
                else:
                    errors.append(json.dumps(result)[:200])
            return refused, wait

        def send_sdk(client: fnhost.Client, size: int) -> tuple[int, float]:
            """The same batch through the SDK: refused tasks come back as Throttled."""
            sent = time.monotonic()
            refused, wait = 0, 0.0
            for outcome in client.submit_many(function, [{}] * size):
                if isinstance(outcome, fnhost.Task):
                    out.ids[outcome.id] = sent
                elif isinstance(outcome, fnhost.Throttled):
                    refused += 1
                    wait = max(wait, outcome.retry_after_s or 1.0)
                else:
                    errors.append(str(outcome)[:200])
            return refused, wait

        def work() -> None:
            if sdk:
                client = fnhost.Client(self.url, self.key, batch_max_tasks=batch_size)
                one, close = functools.partial(send_sdk, client), client.close
            else:
                pool = urllib3.HTTPConnectionPool(self.host, self.port, maxsize=1, retries=False,
                                                  timeout=60.0)
                one, close = functools.partial(send, pool), pool.close
            try:
                barrier.wait()
                while (turn := next(turns)) < len(sizes):
                    left = sizes[turn]
                    while left and not errors:
                        left, wait = one(left)
                        if left:
                            out.throttled += left  # += of ints: fine under the GIL here
                            time.sleep(wait)
            finally:
                close()

        with ThreadPoolExecutor(self.threads) as threads:
            for future in [threads.submit(work) for _ in range(self.threads)]:
                future.result()
        out.answered = time.monotonic()
        if errors:
            raise SystemExit(f"{len(errors)} tasks were not accepted, e.g. {errors[:3]}")
        out.started = started[0]
        return out


@dataclass
class Submitted:
    """What a producer run did: each accepted task's id with when its request was sent,
    when the first request was sent and the last answer came (time.monotonic()), and
    how many times a task was refused with 429 and sent again."""

    ids: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    answered: float = 0.0
    throttled: int = 0


async def fnhost_run(p: Platform, producer: Producer, receiver: Receiver, mode: str, n: int,
                     batch_size: int, timeout: float, profile: dict[str, Path] | None = None,
                     sdk: bool = False) -> dict[str, Any]:
    """One measured run; with `profile` (process name -> file), those processes sampled
    by py-spy meanwhile (collapsed stacks in the files)."""
    function = p.function(mode, "webhook")
    await receiver.reset()
    # SchedulerProfile is async_bench's py-spy recorder; it records any process.
    spies = [SchedulerProfile(p.meter.pids[name], out) for name, out in (profile or {}).items()]
    for spy in spies:
        await asyncio.to_thread(spy.start)
    load = os.getloadavg()[0]
    p.meter.start()
    sent = await asyncio.to_thread(producer.run, function, n, batch_size, sdk)
    started, submitted, answered = sent.started, sent.ids, sent.answered
    deadline = time.monotonic() + timeout
    while True:
        if await receiver.count() >= len(submitted):
            data = await receiver.arrivals()
            if submitted.keys() <= data["arrivals"].keys():
                arrivals: dict[str, float] = data["arrivals"]
                conditions = data["conditions"]
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"{function}: only {await receiver.count()} of {n} records after {timeout} s")
        await asyncio.sleep(0.05)
    cpu = p.meter.per_task(n)
    for spy in spies:
        await asyncio.to_thread(spy.close)
    last = max(arrivals[t] for t in submitted)
    latencies = [(arrivals[t] - sent) * 1000 for t, sent in submitted.items()]
    return {
        "tasks": len(submitted),
        "batch_size": batch_size or 1,
        "submit_s": round(answered - started, 3),
        "submitted_per_s": round(n / (answered - started), 1),
        "total_s": round(last - started, 3),
        "tasks_per_s": round(n / (last - started), 1),
        "task_latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "task_latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "throttled_and_sent_again": sent.throttled,
        "conditions": conditions,
        "loadavg_1m_before": round(load, 2),
        "cpu_ms_per_task": cpu,
    }


# -- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def platform_of(args: argparse.Namespace) -> Iterator[tuple[str, str, str, str, dict[str, int]]]:
    """The platform measured: its URL, admin key, AMQP URL, a MongoDB URL for Celery's
    results and the processes whose CPU is reported."""
    if args.url:
        yield (args.url, args.admin_key, args.amqp_url,
               args.celery_backend or "mongodb://127.0.0.1:27017/", {})
        return
    with bench_platform() as platform:
        pids = {role: platform.procs[role].pid for role in ("gateway", "scheduler")}
        mongo = mongo_pid(platform.env["FNHOST_MONGO_URL"])
        if mongo is not None:
            pids["mongodb"] = mongo
        yield (platform.url, ADMIN_KEY, platform.env["FNHOST_AMQP_URL"],
               platform.env["FNHOST_MONGO_URL"], pids)


def mongo_pid(mongo_url: str) -> int | None:
    """The MongoDB-wire server process of the bench's platform, found by its port."""
    wanted = ["--port", str(urlsplit(mongo_url).port)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "runtime.embedded_mongo" in argv and any(
                    argv[i:i + 2] == wanted for i in range(len(argv) - 1)):
                return int(proc.name)
    return None


def batch_of(path: str, args: argparse.Namespace) -> int:
    """Tasks per request on a path: 0 for one invocation per request."""
    return args.batch_size if path in ("batch", "sdk") else 0


def celery_backend(mongo_url: str) -> str:
    parts = urlsplit(mongo_url)
    return urlunsplit(parts._replace(path="/fnhost_bench_producer"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m in args.modes.split(",") if m]
    paths = [p for p in args.paths.split(",") if p]
    for value, known in [*((m, MODES) for m in modes), *((p, PATHS) for p in paths)]:
        if value not in known:
            raise SystemExit(f"unknown {value!r}: use {', '.join(known)}")
    tag = secrets.token_hex(3)
    report: dict[str, Any] = {"machine": machine(), "settings": {
        k: v for k, v in vars(args).items() if k != "admin_key"}, "rounds": []}
    with platform_of(args) as (url, admin_key, amqp_url, mongo_url, pids):
        receiver = Receiver()
        meter = CpuMeter(pids)
        p = Platform(url, admin_key, amqp_url, tag, meter)
        celery = Celery(amqp_url, f"fnhost-bench-producer-{tag}", celery_backend(mongo_url), tag,
                        args.celery_workers, args.threads)
        producer = Producer(url, p.key, args.threads)
        try:
            await p.start()
            receiver.start()
            meter.pids["receiver"] = receiver.pid
            for mode in modes:
                # Warmed by async tasks alone: nothing here is about the sync path.
                p.deploy(mode, args.max_concurrency, "webhook", receiver.url, sync_warmup=False)
                log(f"warm-up: {args.warmup} tasks of {p.function(mode, 'webhook')} per path")
                for path in paths:
                    await fnhost_run(p, producer, receiver, mode, args.warmup,
                                     batch_of(path, args), args.timeout, sdk=path == "sdk")
            if not args.no_celery:
                celery.create_vhost()
            for number in range(args.rounds):
                figures: dict[str, Any] = {}
                report["rounds"].append(figures)
                for mode in modes:
                    for path in paths:
                        log(f"round {number + 1}: fnhost, task mode {mode}, {path}: {args.tasks} tasks")
                        name = f"fnhost_{mode}_{path}"
                        profile = {role: Path(args.profile_dir) / f"{name}-{number + 1}.{role}.txt"
                                   for role in args.profile}
                        figures[name] = await fnhost_run(
                            p, producer, receiver, mode, args.tasks,
                            batch_of(path, args), args.timeout, profile, sdk=path == "sdk")
                    if not args.no_celery:
                        variant = PEERS[mode]
                        log(f"round {number + 1}: Celery {variant}: {args.tasks} tasks")
                        figures[f"celery_{variant}"] = await asyncio.to_thread(
                            celery.run, variant, args.tasks, args.warmup, args.timeout,
                            {k: v for k, v in pids.items() if k == "mongodb"})
                log("round " + str(number + 1) + ": " + "; ".join(
                    f"{k} {v['tasks_per_s']:,.0f}/s" for k, v in figures.items()))
        finally:
            log("cleaning up")
            await asyncio.to_thread(celery.cleanup)
            await p.cleanup()
            receiver.stop()
    return report


def summary(report: dict[str, Any]) -> list[str]:
    """Per mode and path: tasks/s (median and range over rounds), and the ratio to the
    Celery peer measured in the same round."""
    rounds = report["rounds"]
    lines = []
    names = sorted({k for r in rounds for k in r}, key=lambda k: (k.startswith("celery"), k))
    for name in names:
        rates = [r[name]["tasks_per_s"] for r in rounds if name in r]
        line = (f"{name}: {statistics.median(rates):,.0f} tasks/s "
                f"(rounds: {', '.join(f'{x:,.0f}' for x in rates)})")
        mode = name.split("_")[1] if name.startswith("fnhost_") else None
        peer = f"celery_{PEERS[mode]}" if mode else None
        if peer is not None and all(peer in r for r in rounds):
            ratios = [r[name]["tasks_per_s"] / r[peer]["tasks_per_s"] for r in rounds]
            line += (f"; over {peer}: {statistics.median(ratios):.2f}x "
                     f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
            if name.endswith(("_batch", "_sdk")):
                verdict = "met" if min(ratios) >= RATIO_TARGET else "MISSED"
                line += f"; target >= {RATIO_TARGET}x: {verdict}"
        again = [r[name].get("throttled_and_sent_again", 0) for r in rounds if name in r]
        if any(again):
            line += f"; refused with 429 and sent again: {', '.join(map(str, again))}"
        cpu = [r[name]["cpu_ms_per_task"] for r in rounds if name in r]
        if cpu and cpu[0]:
            line += "; CPU ms/task " + ", ".join(
                f"{k} {statistics.median(c[k] for c in cpu):.3f}" for k in cpu[0] if k != "total")
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running platform (default: start one of the bench's own)")
    parser.add_argument("--admin-key", default=os.environ.get("FNHOST_ADMIN_KEY"))
    parser.add_argument("--amqp-url", default=os.environ.get(
        "FNHOST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="with --url: the platform's RabbitMQ (Celery gets a vhost of its own there)")
    parser.add_argument("--celery-backend", help="with --url: the MongoDB-wire server for Celery's "
                        "results (default mongodb://127.0.0.1:27017/)")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200, help="tasks per path before measuring")
    parser.add_argument("--threads", type=int, default=8, help="producer threads (and connections)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="every figure this many times")
    parser.add_argument("--modes", default=",".join(MODES), help="notask (task mode off), task")
    parser.add_argument("--paths", default=",".join(PATHS), help="single, batch, sdk")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--celery-workers", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", action="append", default=[], metavar="PROCESS",
                        help="sample this process (gateway, scheduler, mongodb) with py-spy during "
                        "each measured fnhost run: --profile-dir/<run>-<round>.<process>.txt, one "
                        "collapsed stack per line (repeatable)")
    parser.add_argument("--profile-dir", default="/tmp/fnhost-producer-profile")
    args = parser.parse_args()
    if args.url and not args.admin_key:
        raise SystemExit("with --url give --admin-key (or FNHOST_ADMIN_KEY)")
    assert set(PEERS.values()) <= set(CELERY_VARIANTS)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl-C
    if args.profile:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    print()
    for line in summary(report):
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
