"""The task API at scale: latency of its queries with 1,000 and with 1,000,000 task records.

    .venv/bin/python bench/task_store_bench.py [--records 1000000] [--tenants 100]

Starts its own platform (a gateway and a scheduler, as the tests do: a MongoDB-wire
server of its own, a RabbitMQ vhost of its own, the local Docker engine), makes
`--tenants` tenants with `--functions` functions each, and fills the task store by
bulk insert with realistic records (payload, result, history, timings; 90%
Succeeded, 4% Failed, 3% Enqueued, the rest Stopped/Expired/Invalid; created over
the last 24 hours; one tenant holds `--big-share` of all records). At each size it
times, through the HTTP API: GET /v1/tasks/{id} (without ?function=), the task
list with each filter, the next page by cursor, stop and the bulk delete of a
function's queued tasks; p50 and p99 of `--samples` calls each.

With `--memory-tasks N` it also runs N no-op async tasks (task mode off, sent by wrk)
through the platform and reports the gateway's and the scheduler's resident memory
after the first 10,000 and after all N have run.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bson import Binary
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import MongoServer, deploy, own_platform, zip_dir  # noqa: E402

STATUSES = [("Succeeded", 0.90), ("Failed", 0.04), ("Enqueued", 0.03), ("Stopped", 0.01),
            ("Expired", 0.01), ("Invalid", 0.01)]


def pick_status(rng: random.Random) -> str:
    x = rng.random()
    for status, share in STATUSES:
        if x < share:
            return status
        x -= share
    return "Succeeded"


def record(tenant: str, function: str, n: int, created: datetime, rng: random.Random) -> dict[str, Any]:
    task_id = f"order-{n:08d}-{secrets.token_hex(3)}"
    status = pick_status(rng)
    history = [{"status": "Enqueued", "at": created}]
    if status not in ("Enqueued", "Invalid"):
        history += [{"status": "Processed", "at": created + timedelta(milliseconds=3)},
                    {"status": "Running", "at": created + timedelta(milliseconds=5)},
                    {"status": status, "at": created + timedelta(milliseconds=40)}]
    doc: dict[str, Any] = {
        "_id": f"{tenant}/{task_id}/{function}", "tenant": tenant, "function": function,
        "task_id": task_id, "request_id": secrets.token_hex(16), "status": status,
        "history": history, "attempts": 1, "invoke_count": 1, "created_at": created,
        "updated_at": history[-1]["at"], "due_at": None, "expire_at": created + timedelta(days=7),
        "payload": Binary(b'{"order": %d, "items": ["a", "b", "c"], "note": "%s"}' % (n, b"x" * 120)),
        "content_type": "application/json", "version": "3f2a9c1d7e4b",
    }
    if status in ("Succeeded", "Failed"):
        doc["timings"] = {"queue_ms": 3.1, "start": "warm", "init_ms": 0, "run_ms": 31.7,
                          "destination_ms": 1.2}
        doc["result"] = Binary(b'{"ok": true, "order": %d}' % n)
        doc["result_type"] = "application/json"
        doc["destination"] = {"status": "delivered", "attempts": 1}
    if status == "Failed":
        doc["error"] = {"errorType": "ValueError", "errorMessage": "bad order"}
    return doc


class Store:
    """The records of the platform's database, filled by bulk insert."""

    def __init__(self, url: str, db: str, tenants: list[str], functions: list[str],
                 big_share: float, seed: int = 7) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
        self.tasks = self.client[db]["tasks"]
        self.tenants, self.functions, self.big_share = tenants, functions, big_share
        self.rng = random.Random(seed)
        self.count = 0
        self.samples: dict[str, list[str]] = {t: [] for t in tenants}  # task ids per tenant

    def tenant_for(self) -> str:
        if self.rng.random() < self.big_share:
            return self.tenants[0]
        return self.rng.choice(self.tenants[1:])

    def fill(self, target: int, batch: int = 2000) -> float:
        started = time.perf_counter()
        now = datetime.now(UTC)
        while self.count < target:
            docs = []
            for _ in range(min(batch, target - self.count)):
                tenant = self.tenant_for()
                created = now - timedelta(seconds=self.rng.random() * 86400)
                doc = record(tenant, self.rng.choice(self.functions), self.count, created, self.rng)
                docs.append(doc)
                self.count += 1
                # (not the queued ones: the bulk delete measured below deletes them)
                if (len(self.samples[tenant]) < 400 and doc["status"] != "Enqueued"
                        and self.rng.random() < 0.2):
                    self.samples[tenant].append(doc["task_id"])
            self.tasks.insert_many(docs, ordered=False)
            if self.count % 100_000 < batch:
                rate = self.count / (time.perf_counter() - started)
                print(f"  {self.count:,} records ({rate:,.0f}/s)", flush=True)
        return time.perf_counter() - started

    def enqueued(self, tenant: str, function: str, n: int) -> list[str]:
        """Fresh Enqueued records (for stop and bulk delete), created now."""
        now = datetime.now(UTC)
        docs = []
        for _ in range(n):
            doc = record(tenant, function, self.count, now, self.rng)
            doc.update(status="Enqueued", history=[{"status": "Enqueued", "at": now}], updated_at=now)
            for key in ("timings", "result", "result_type", "destination", "error"):
                doc.pop(key, None)
            docs.append(doc)
            self.count += 1
        self.tasks.insert_many(docs)
        return [d["task_id"] for d in docs]


def timed(
    samples: int, call: Callable[[int], httpx.Response], ok: tuple[int, ...] = (200,)
) -> tuple[float, float]:
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        r = call(i)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code not in ok:
            raise SystemExit(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def measure(store: Store, clients: dict[str, httpx.Client], samples: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(11)
    big, small = store.tenants[0], store.tenants[1]
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    out: dict[str, tuple[float, float]] = {}

    def get_task(tenant_pick: Callable[[], str]) -> Callable[[int], httpx.Response]:
        def call(_: int) -> httpx.Response:
            tenant = tenant_pick()
            ids = store.samples[tenant]
            return clients[tenant].get(f"/v1/tasks/{rng.choice(ids)}")
        return call

    with_samples = [t for t in store.tenants if store.samples[t]]
    out["GET /v1/tasks/{id} (any tenant)"] = timed(samples, get_task(lambda: rng.choice(with_samples)))
    if store.samples[big]:
        out["GET /v1/tasks/{id} (big tenant)"] = timed(samples, get_task(lambda: big))
    fn = store.functions[0]
    lists = {
        "list, no filter": {},
        "list ?function=": {"function": fn},
        "list ?status=Failed": {"status": "Failed"},
        "list ?status=Enqueued&function=": {"status": "Enqueued", "function": fn},
        "list ?since=1h ago": {"since": hour_ago},
        "list ?prefix=order-0": {"prefix": "order-0"},
    }
    for tenant, label in ((big, "big tenant"), (small, "typical tenant")):
        client = clients[tenant]
        for name, params in lists.items():
            out[f"{name} ({label})"] = timed(
                samples // 4 or 1,
                lambda _i, p=params, c=client: c.get("/v1/tasks", params={**p, "limit": 50}),
            )
        first = client.get("/v1/tasks", params={"limit": 50}).json()
        cursor = first.get("next_cursor")
        if cursor:
            out[f"list, next page by cursor ({label})"] = timed(
                samples // 4 or 1,
                lambda _i, k=cursor, c=client: c.get("/v1/tasks", params={"limit": 50, "cursor": k}),
            )
    stop_ids = store.enqueued(big, store.functions[1], samples)
    out["stop a queued task (big tenant)"] = timed(
        samples, lambda i: clients[big].post(f"/v1/tasks/{stop_ids[i]}/stop"))
    deletes = max(samples // 10, 3)
    for fn_name in store.functions[2:]:
        store.enqueued(big, fn_name, 20)
    names = store.functions[2:]
    out["bulk delete of a function's queued tasks (big tenant)"] = timed(
        min(deletes, len(names)),
        lambda i: clients[big].delete(f"/v1/functions/{names[i]}/tasks", params={"status": "Enqueued"}))
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


WRK_EVENT = """
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Invocation-Type"] = "Event"
"""


def run_tasks(client: httpx.Client, name: str, n: int, connections: int = 32) -> int:
    """At least n async invocations with wrk (every answer must be 202); returns how many."""
    import re
    import subprocess
    import tempfile

    url = f"{str(client.base_url).rstrip('/')}/v1/functions/{name}/invocations"
    auth = client.headers["authorization"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_EVENT)
        script.flush()
        done = 0
        while done < n:
            seconds = max(2, min(60, round((n - done) / 1500)))
            out = subprocess.run(
                ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script.name,
                 "-H", f"Authorization: {auth}", url],
                capture_output=True, text=True, check=True).stdout
            sent = re.search(r"(\d+) requests in", out)
            if sent is None or "Non-2xx" in out or "Socket errors" in out:
                raise SystemExit(f"submitting with wrk failed:\n{out}")
            done += int(sent.group(1))
    return done


def wait_idle(pid: int, quiet_share: float = 0.05, window_s: float = 2.0, timeout_s: float = 1800) -> None:
    """Until the process uses under `quiet_share` of a core over `window_s` (it drained)."""
    def ticks() -> int:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = ticks()
        time.sleep(window_s)
        if (ticks() - before) / hz / window_s < quiet_share:
            return
    raise SystemExit(f"process {pid} still busy after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1000, help="the first size measured")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--functions", type=int, default=5)
    parser.add_argument("--big-share", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--memory-tasks", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("FNHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/fnhost-test")

    mongo = MongoServer()
    mongo.start()
    try:
        with own_platform(mongo.url, stem_cells=1) as platform:
            print(f"platform up; making {args.tenants} tenants x {args.functions} functions", flush=True)
            clients: dict[str, httpx.Client] = {}
            functions = [f"fn-{i}" for i in range(args.functions)]
            bundle = zip_dir("noop")
            for _ in range(args.tenants):
                client = platform.new_tenant()
                for name in functions:
                    deploy(client, name, bundle).raise_for_status()
                clients[client.tenant_id] = client  # type: ignore[attr-defined]
            store = Store(mongo.url, platform.env["FNHOST_MONGO_DB"], list(clients), functions,
                          args.big_share)
            results: dict[int, dict[str, tuple[float, float]]] = {}
            for size in (args.small, args.records):
                took = store.fill(size)
                print(f"filled to {store.count:,} records in {took:.0f} s; measuring", flush=True)
                results[size] = measure(store, clients, args.samples)
            print(f"\nTask API latency, ms (p50 / p99), {args.tenants} tenants, the big one with "
                  f"{args.big_share:.0%} of the records; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
            small, large = results[args.small], results[args.records]
            print(f"{'query':<58} {args.small:>14,} {args.records:>16,}   p50 ratio")
            for name in small:
                if name not in large:
                    continue
                a, b = small[name], large[name]
                print(f"{name:<58} {a[0]:6.2f} / {a[1]:6.2f}  {b[0]:7.2f} / {b[1]:7.2f}"
                      f"   {b[0] / a[0]:5.2f}x")
            if args.memory_tasks:
                memory_phase(platform, clients, args.memory_tasks)
            for client in clients.values():
                client.close()
    finally:
        mongo.stop()


def memory_phase(platform: Any, clients: dict[str, httpx.Client], n: int) -> None:
    client = next(iter(clients.values()))
    manifest = {"handler": "main.handler", "async": {"task_mode": False}}
    deploy(client, "noop-notask", zip_dir("noop"), manifest).raise_for_status()
    pids = {role: proc.pid for role, proc in platform.procs.items()}
    first = min(10_000, n)
    t0 = time.perf_counter()
    sent = run_tasks(client, "noop-notask", first)
    wait_idle(pids["scheduler"])
    rss_first = {role: rss_mb(pid) for role, pid in pids.items()}
    print(f"  {sent:,} tasks run; resident memory {rss_first}", flush=True)
    while sent < n:
        sent += run_tasks(client, "noop-notask", min(100_000, n - sent))
        print(f"  {sent:,} tasks sent ({sent / (time.perf_counter() - t0):,.0f}/s); "
              f"{ {role: round(rss_mb(pid), 1) for role, pid in pids.items()} } MB", flush=True)
    wait_idle(pids["scheduler"])
    took = time.perf_counter() - t0
    rss_last = {role: rss_mb(pid) for role, pid in pids.items()}
    print(f"\nResident memory after {first:,} and after {sent:,} async tasks ({took:.0f} s):")
    for role in pids:
        print(f"  {role:<10} {rss_first[role]:7.1f} MB  {rss_last[role]:7.1f} MB  "
              f"{rss_last[role] / rss_first[role]:.2f}x")


if __name__ == "__main__":
    main()
