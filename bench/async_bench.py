"""Async invoke benchmark against a running platform (scripts/up), with a Celery baseline.

(a) accept rate of one gateway: `X-Invocation-Type: Event` POSTs of a no-op
    function with wrk (32 connections, 10 s); every answer must be a 202,
    which the gateway sends only after the broker confirmed the message. Once
    with task mode on (a task record per invocation), once with it off. The
    scheduler consumes meanwhile, on the same machine; the bench then waits
    until every accepted task has delivered its destination record.
(b) end-to-end throughput of a no-op function: N tasks submitted as fast as
    possible, timed until the last destination record (a `queue` destination,
    consumed by the bench; with `--destinations queue,webhook` also a `webhook`
    destination, POSTed to bench/webhook_receiver.py, which the bench starts) is
    back; against Celery on the same RabbitMQ (a vhost of its own), 2 prefork
    worker processes, late acks, a result backend, timed until every result is
    stored.

    .venv/bin/python bench/async_bench.py --url http://127.0.0.1:8080 \
        --admin-key "$(cat .data/admin-key)"

With webhook destinations, the platform must allow its receiver's address:
FNHOST_WEBHOOK_ALLOWED_NETWORKS=127.0.0.1/32 (else their functions are refused, 400).

Everything the bench makes is removed at the end: its functions, the
destination queues, the Celery worker, vhost and result database. The tenant
stays, with its (empty) queue: there is no API to delete a tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
from common import log, percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NOOP = ROOT / "functions" / "noop"
QUORUM = {"x-queue-type": "quorum"}
MODES = {"task": True, "notask": False}  # task mode on / off
ACCEPT_TARGET = 2500.0  # 202s per second of one gateway
RATIO_TARGET = 1.5  # fnhost tasks/s over Celery's
DESTINATIONS = ("queue", "webhook")
CELERY_VARIANTS: dict[str, dict[str, Any]] = {
    # Durable like fnhost: a quorum queue and a producer that waits for the confirm;
    # the result backend of --celery-backend.
    "durable": {"queue_type": "quorum", "confirm": True},
    # Celery's defaults: a classic queue, no publisher confirms.
    "classic": {"queue_type": "classic", "confirm": False},
    # The peer of task mode off: durable, results back over RabbitMQ, no database.
    "rpc": {"queue_type": "quorum", "confirm": True, "backend": "rpc://"},
    # The peer of task mode on: durable, each task's state kept in the database as
    # task mode does (STARTED written before the task runs, then its result): the
    # MongoDB backend of --celery-backend, on the same MongoDB-wire server.
    "mongodb-started": {"queue_type": "quorum", "confirm": True, "track_started": True, "mongodb": True},
}
# Which Celery set-up each task mode is held against (the targets).
PEERS = {"notask": "rpc", "task": "mongodb-started"}


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(folder / "main.py", "main.py")
        zf.write(folder / "fnhost.json", "fnhost.json")
    return buf.getvalue()


# -- CPU time per task -----------------------------------------------------------
# On a shared 2-core machine wall-clock rates move with everything else that runs;
# the CPU time each process spends per task does not, and says where the time goes.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its children alive now."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class CpuMeter:
    """CPU seconds of named processes (and of this process and its waited-for children,
    the client side: the bench itself, wrk) between start() and per_task()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        t = os.times()
        out = {"client": t.user + t.system + t.children_user + t.children_system}
        for name, pid in self.pids.items():
            out[name] = cpu_seconds(pid)
        return out

    def start(self) -> None:
        self._start = self._now()

    def per_task(self, tasks: int) -> dict[str, float]:
        """CPU milliseconds per task of each process, and their total."""
        now = self._now()
        out = {k: round((now[k] - self._start.get(k, now[k])) * 1000 / max(1, tasks), 3) for k in now}
        out["total"] = round(sum(out.values()), 3)
        return out


# -- a minimal keep-alive HTTP/1.1 client ----------------------------------------
# The submitting client must cost the machine less than the gateway it measures:
# one asyncio stream per connection, no HTTP library.


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send `head` (request line and headers, no Content-Length) and `body`."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            data = await self._chunked()
        else:
            data = await self._reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        out = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(out)
            out += (await self._reader.readexactly(size + 2))[:-2]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def event_head(url: str, key: str, function: str) -> bytes:
    parts = urlsplit(url)
    return (
        f"POST /v1/functions/{function}/invocations HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\n"
        "X-Invocation-Type: Event\r\n"
    ).encode()


# -- the platform: tenant, functions, queues ---------------------------------------


class Platform:
    def __init__(self, url: str, admin_key: str, amqp_url: str, tag: str, meter: CpuMeter) -> None:
        self.url = url
        self.meter = meter
        self.amqp_url = amqp_url
        self.tag = tag
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        r = admin.post("/v1/tenants", json={"name": f"bench-async-{tag}"})
        r.raise_for_status()
        self.tenant = str(r.json()["id"])
        self.key = str(r.json()["api_key"])
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)
        self.functions: list[str] = []
        # Destination queues the bench declared. The tenant's own queue stays with the
        # tenant: the scheduler consuming it would declare it again at once.
        self.queues: list[str] = []
        self.connection: aio_pika.abc.AbstractConnection | None = None

    def function(self, mode: str, destination: str = "queue") -> str:
        return f"noop-{mode}" if destination == "queue" else f"noop-{mode}-{destination}"

    def destination(self, mode: str) -> str:
        return f"fnhost.d.{self.tenant}.done-{mode}"

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.amqp_url)

    def deploy(self, mode: str, max_concurrency: int | None, destination: str = "queue",
               webhook_url: str | None = None, sync_warmup: bool = True) -> None:
        name = self.function(mode, destination)
        on_success = ({"type": "queue", "name": f"done-{mode}"} if destination == "queue"
                      else {"type": "webhook", "url": f"{webhook_url}/done-{mode}"})
        config: dict[str, Any] = {"async": {"task_mode": MODES[mode], "on_success": on_success}}
        if max_concurrency is not None:
            config["max_concurrency"] = max_concurrency
        r = self.http.put(
            f"/v1/functions/{name}",
            files={"code": ("bundle.zip", zip_folder(NOOP), "application/zip"),
                   "config": (None, json.dumps(config), "application/json")},
        )
        if r.status_code not in (200, 201):
            raise SystemExit(f"deploying {name}: {r.status_code} {r.text[:500]}")
        self.functions.append(name)
        r = self.http.post(f"/v1/functions/{name}/invocations", json={},
                           headers={"X-Invocation-Type": "Event"})
        if r.status_code == 501:
            raise SystemExit(f"{self.url} answers 501 to Event invocations: it runs a release "
                             "without them; restart the platform on this code")
        if r.status_code != 202:
            raise SystemExit(f"Event invocation of {name}: {r.status_code} {r.text[:500]}")
        for _ in range(5 if sync_warmup else 0):  # warm its container on the sync path too
            self.http.post(f"/v1/functions/{name}/invocations", json={}).raise_for_status()

    async def declare(self, queue: str) -> None:
        assert self.connection is not None
        async with self.connection.channel() as channel:
            await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        self.queues.append(queue)

    async def count(self, queue: str) -> int:
        """Ready messages in `queue` (nobody consumes a destination queue during (a))."""
        assert self.connection is not None
        async with self.connection.channel() as channel:
            q = await channel.declare_queue(queue, passive=True)
            return int(q.declaration_result.message_count or 0)

    async def purge(self, queue: str) -> None:
        assert self.connection is not None
        async with self.connection.channel() as channel:
            q = await channel.declare_queue(queue, passive=True)
            await q.purge()

    async def cleanup(self) -> None:
        for name in self.functions:
            with contextlib.suppress(httpx.HTTPError):
                self.http.delete(f"/v1/functions/{name}")
        if self.connection is None:
            return
        for queue in self.queues:
            try:
                async with self.connection.channel() as channel:
                    await channel.queue_delete(queue)
            except Exception as exc:
                log(f"could not delete queue {queue}: {exc}")
        await self.connection.close()


# -- where the scheduler's time goes --------------------------------------------------

# A sampled stack holding one of these frames is the scheduler delivering a record:
# Destinations.deliver, or the webhook client (the one in use and the one used
# before) in a callback of the event loop, such as reading an answer.
DELIVERY_FRAMES = ("Destinations.deliver (", "webhooks.py", "aiohttp/", "httpx/", "httpcore/", "h11/",
                   "anyio/")


class SchedulerProfile:
    """py-spy sampling the scheduler (`--watch scheduler=PID`) for one end-to-end run:
    the share of its samples spent delivering destination records, so that its CPU
    per task can be split into the delivery and the rest. (A queue publish's confirm
    is read by the AMQP connection's reader, shared with the rest: not counted.)"""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [spy, "record", "-p", str(self.pid), "-r", "200", "-f", "raw", "-o", str(self.out),
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the clock starts

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, scheduler_cpu_ms_per_task: float | None) -> dict[str, Any]:
        self.close()
        total = delivery = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            if any(frame in stack for frame in DELIVERY_FRAMES):
                delivery += int(count)
        share = delivery / total if total else 0.0
        out: dict[str, Any] = {"file": str(self.out), "samples": total, "delivery_share": round(share, 3)}
        if scheduler_cpu_ms_per_task is not None:
            out["delivery_cpu_ms_per_task"] = round(share * scheduler_cpu_ms_per_task, 3)
        return out


# -- the webhook receiver -----------------------------------------------------------


class Receiver:
    """bench/webhook_receiver.py in a process of its own (its CPU time is reported as
    `receiver`): it counts the records POSTed to it and keeps their arrival times."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._conn: HttpConnection | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "webhook_receiver.py"), "--host", "127.0.0.1"],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"the webhook receiver did not start: {line!r}")
        self.port = int(line.split()[1])
        self._conn = HttpConnection("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _get(self, path: str) -> bytes:
        assert self._conn is not None
        status, _, body = await self._conn.request(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n".encode(), b"")
        if status != 200:
            raise SystemExit(f"webhook receiver: GET {path}: {status}")
        return body

    async def count(self) -> int:
        return int(await self._get("/count"))

    async def arrivals(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._get("/arrivals"))
        return result

    async def reset(self) -> None:
        await self._get("/reset")

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- (a) accept rate with wrk ------------------------------------------------------

LUA = """\
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["X-Invocation-Type"] = "Event"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) accepted = 0; other = 0; last_other = 0 end
function response(status, headers, body)
  if status == 202 then accepted = accepted + 1 else other = other + 1; last_other = status end
end
function done(summary, latency, requests)
  local a, o, s = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted"); o = o + t:get("other")
    if t:get("last_other") ~= 0 then s = t:get("last_other") end
  end
  io.write(string.format("FNHOST accepted=%%d other=%%d other_status=%%d\\n", a, o, s))
end
"""


def wrk_events(url: str, key: str, function: str, connections: int, seconds: int,
               threads: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(LUA % {"key": key})
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name,
           f"{url}/v1/functions/{function}/invocations"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(lua.name)

    def pct(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            raise SystemExit(f"cannot parse wrk output:\n{out}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    counts = re.search(r"FNHOST accepted=(\d+) other=(\d+) other_status=(\d+)", out)
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    if counts is None or duration is None:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    seconds_run = float(duration.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[duration.group(2)]
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0
    accepted, other = int(counts.group(1)), int(counts.group(2))
    return {
        "accepted": accepted,
        "non_202": other,
        "last_non_202_status": int(counts.group(3)) or None,
        "socket_errors": socket_errors,
        "seconds": round(seconds_run, 2),
        "accepted_per_s": round(accepted / seconds_run, 1),
        "p50_ms": round(pct("50%"), 3),
        "p99_ms": round(pct("99%"), 3),
        "connections": connections,
        "wrk_output": out,
    }


async def accept_rate(
    p: Platform, mode: str, args: argparse.Namespace, scheduler_pid: int | None = None
) -> dict[str, Any]:
    """With `scheduler_pid`, that scheduler is stopped (SIGSTOP) while wrk runs: the
    gateway, the broker and the database have the machine to themselves, as they do
    when schedulers run on other hosts; the tasks wait in the queue meanwhile."""
    queue = p.destination(mode)
    await p.purge(queue)
    load = os.getloadavg()[0]
    p.meter.start()
    started = time.monotonic()
    alone = " (scheduler stopped)" if scheduler_pid else ""
    log(f"(a) wrk: {args.connections} connections, {args.seconds} s, {p.function(mode)}{alone}")
    if scheduler_pid:
        os.kill(scheduler_pid, signal.SIGSTOP)
    try:
        result = await asyncio.to_thread(
            wrk_events, p.url, p.key, p.function(mode), args.connections, args.seconds,
            args.wrk_threads,
        )
    finally:
        if scheduler_pid:
            os.kill(scheduler_pid, signal.SIGCONT)
    result["scheduler_stopped"] = bool(scheduler_pid)
    result["loadavg_1m_before"] = round(load, 2)
    # Every accepted task must come back as a destination record (nothing lost); the
    # backlog also has to be gone before the next figure is measured.
    log(f"(a) {result['accepted']} accepted ({result['accepted_per_s']}/s); "
        "waiting for every task to deliver its record")
    deadline = time.monotonic() + args.drain_timeout
    count = last = -1
    stable_since = time.monotonic()
    while True:
        count = await p.count(queue)
        now = time.monotonic()
        if count != last:
            last, stable_since = count, now
        if count >= result["accepted"] and now - stable_since >= 2.0:
            break
        if now > deadline:
            break
        await asyncio.sleep(0.5)
    drained_at = stable_since
    result["cpu_ms_per_task"] = p.meter.per_task(count)
    result["records"] = count
    result["drained"] = count >= result["accepted"]
    result["drain_s"] = round(drained_at - started, 1)
    result["end_to_end_per_s_with_backlog"] = round(count / (drained_at - started), 1)
    if not result["drained"]:
        log(f"(a) only {count} of {result['accepted']} records after {args.drain_timeout} s; "
            "purging the tenant queue")
        await p.purge(f"fnhost.t.{p.tenant}")
        await asyncio.sleep(5)
    await p.purge(queue)
    return result


# -- (b) end to end: fnhost ---------------------------------------------------------


async def fnhost_e2e(p: Platform, mode: str, n: int, concurrency: int, timeout: float,
                     destination: str = "queue", receiver: Receiver | None = None,
                     profile: SchedulerProfile | None = None) -> dict[str, Any]:
    """Submit n Event invocations over `concurrency` connections; time until the n-th record
    (from the destination queue the bench consumes, or at the webhook receiver)."""
    assert p.connection is not None
    # time.monotonic() throughout: the webhook receiver stamps arrivals with the same clock.
    arrived: dict[str, float] = {}
    conditions: dict[str, int] = {}
    done = asyncio.Event()
    submitted: dict[str, float] = {}
    submit_finished = False
    channel: aio_pika.abc.AbstractChannel | None = None
    queue: aio_pika.abc.AbstractQueue | None = None
    tag = ""

    if destination == "queue":
        queue_name = p.destination(mode)
        await p.purge(queue_name)
        channel = await p.connection.channel()
        await channel.set_qos(prefetch_count=4000)
        queue = await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)

        async def on_record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            now = time.monotonic()
            headers = message.headers or {}
            task_id = str(headers.get("task_id") or message.message_id)
            arrived.setdefault(task_id, now)
            condition = str(headers.get("condition"))
            conditions[condition] = conditions.get(condition, 0) + 1
            if submit_finished and len(arrived) >= n and submitted.keys() <= arrived.keys():
                done.set()

        tag = await queue.consume(on_record, no_ack=True)
    else:
        assert receiver is not None
        await receiver.reset()

    async def stop_consuming() -> None:
        if queue is not None and channel is not None:
            await queue.cancel(tag)
            await channel.close()

    parts = urlsplit(p.url)
    head = event_head(p.url, p.key, p.function(mode, destination))
    errors: list[str] = []
    next_index = 0

    async def submitter() -> None:
        nonlocal next_index
        conn = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            while next_index < n:
                next_index += 1
                sent = time.monotonic()
                status, headers, body = await conn.request(head, b"{}")
                if status != 202:
                    errors.append(f"{status} {body[:200]!r}")
                    continue
                submitted[headers["x-task-id"]] = sent
        finally:
            conn.close()

    async def webhook_records() -> None:
        """Poll the receiver's count (cheap) until every submitted task's record is there."""
        assert receiver is not None
        while True:
            if await receiver.count() >= n:
                data = await receiver.arrivals()
                if submitted.keys() <= data["arrivals"].keys():
                    arrived.update(data["arrivals"])
                    conditions.update(data["conditions"])
                    return
            await asyncio.sleep(0.05)

    load = os.getloadavg()[0]
    if profile is not None:
        await asyncio.to_thread(profile.start)
    p.meter.start()
    started = time.monotonic()
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    submit_s = time.monotonic() - started
    submit_finished = True
    if errors:
        await stop_consuming()
        raise SystemExit(f"{len(errors)} of {n} submissions were not accepted, e.g. {errors[:3]}")
    if len(arrived) >= n and submitted.keys() <= arrived.keys():
        done.set()
    try:
        if destination == "queue":
            await asyncio.wait_for(done.wait(), timeout)
        else:
            await asyncio.wait_for(webhook_records(), timeout)
    except TimeoutError:
        got = len(arrived) if receiver is None else await receiver.count()
        raise SystemExit(f"{mode} {destination}: only {got} of {n} records after {timeout} s") from None
    finally:
        await stop_consuming()
    cpu = p.meter.per_task(n)
    profiled = None if profile is None else await asyncio.to_thread(profile.stop, cpu.get("scheduler"))
    last = max(arrived[t] for t in submitted)
    latencies = [(arrived[t] - sent) * 1000 for t, sent in submitted.items()]
    total_s = last - started
    return ({} if profiled is None else {"scheduler_profile": profiled}) | {
        "tasks": n,
        "destination": destination,
        "submit_s": round(submit_s, 3),
        "submitted_per_s": round(n / submit_s, 1),
        "total_s": round(total_s, 3),
        "tasks_per_s": round(n / total_s, 1),
        "task_latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "task_latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "task_latency_max_ms": round(max(latencies), 1),
        "records_after_submit_plus_10s": sum(
            1 for t in submitted if arrived[t] - started > submit_s + 10
        ),
        "conditions": conditions,
        "stray_records": len(arrived) - len(submitted),
        "loadavg_1m_before": round(load, 2),
        "cpu_ms_per_task": cpu,
    }


# -- (b) end to end: Celery ---------------------------------------------------------


class Celery:
    """A Celery worker on the bench's own vhost of the same RabbitMQ, and its producer."""

    def __init__(self, amqp_url: str, vhost: str, backend: str, tag: str, workers: int,
                 submit_threads: int = 1) -> None:
        self.vhost = vhost
        self.submit_threads = submit_threads
        self.broker = urlunsplit(urlsplit(amqp_url)._replace(path="/" + vhost))
        self.backend = backend
        self.tag = tag
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"fnhost-bench-celery-{tag}.log"
        self.vhost_made = False

    def create_vhost(self) -> None:
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            raise SystemExit("rabbitmqctl is needed to create the Celery vhost")
        user = urlsplit(self.broker).username or "guest"
        subprocess.run([ctl, "-q", "add_vhost", self.vhost], capture_output=True)  # exists: fine
        subprocess.run([ctl, "-q", "set_permissions", "-p", self.vhost, user, ".*", ".*", ".*"],
                       check=True, capture_output=True)
        self.vhost_made = True

    def backend_of(self, variant: str) -> str:
        return str(CELERY_VARIANTS[variant].get("backend", self.backend))

    def start_worker(self, queue: str, queue_type: str, confirm: bool, backend: str,
                     track_started: bool) -> None:
        env = {
            **os.environ,
            "BENCH_CELERY_BROKER": self.broker,
            "BENCH_CELERY_BACKEND": backend,
            "BENCH_CELERY_QUEUE": queue,
            "BENCH_CELERY_QUEUE_TYPE": queue_type,
            "BENCH_CELERY_CONFIRM": "1" if confirm else "0",
            "BENCH_CELERY_TRACK_STARTED": "1" if track_started else "0",
        }
        cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker",
               "--concurrency", str(self.workers), "--pool", "prefork", "--loglevel", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--hostname", f"{queue}@%h"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_consumer(queue)

    def _wait_consumer(self, queue: str, timeout: float = 180) -> None:
        from kombu import Connection

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"the Celery worker exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(Exception), Connection(self.broker) as conn:
                _, _, consumers = conn.default_channel.queue_declare(queue=queue, passive=True)
                if consumers > 0:
                    return
            time.sleep(0.2)
        raise SystemExit(f"the Celery worker did not consume {queue} in {timeout} s:\n"
                         f"{self.log_path.read_text()[-3000:]}")

    def stop_worker(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def run(self, variant: str, n: int, warmup: int, timeout: float,
            pids: dict[str, int]) -> dict[str, Any]:
        sys.path.insert(0, str(BENCH))
        from celery_app import TASK, make_app

        spec = CELERY_VARIANTS[variant]
        queue = f"bench-{self.tag}-{variant}"
        backend = self.backend_of(variant)
        track_started = bool(spec.get("track_started", False))
        self.start_worker(queue, str(spec["queue_type"]), bool(spec["confirm"]), backend, track_started)
        rpc = backend.startswith("rpc://")
        # An rpc result comes back to the app that sent the task, on that app's connection,
        # which is not thread-safe: with rpc each submitting thread has an app of its own
        # and waits for its own results.
        apps = [make_app(self.broker, backend, queue, str(spec["queue_type"]), bool(spec["confirm"]),
                         track_started) for _ in range(self.submit_threads if rpc else 1)]
        app = apps[0]
        assert self.proc is not None
        meter = CpuMeter({**pids, "celery_worker": self.proc.pid})
        try:
            load = os.getloadavg()[0]
            if rpc:
                statuses, started, sent_at = self._rpc_run(apps, TASK, warmup, n, timeout, meter)
                submit_s = sent_at - started
                last_stored = None
            else:
                self._batch(app, TASK, warmup, timeout)
                load = os.getloadavg()[0]
                meter.start()
                started, started_epoch = time.perf_counter(), time.time()
                ids = self._send(app, TASK, n)
                submit_s = time.perf_counter() - started
                statuses, last_stored = self._wait(app, ids, timeout)
            seen_s = time.perf_counter() - started
            cpu = meter.per_task(n)
            # With a stored result's own time, the end is when the last one was stored
            # (fnhost's end is when its last record reached the bench); else when seen.
            total_s = last_stored - started_epoch if last_stored is not None else seen_s
        finally:
            self.stop_worker()
            for a in apps:
                with contextlib.suppress(Exception):
                    a.close()
        if statuses.get("SUCCESS", 0) != n:
            raise SystemExit(f"Celery {variant}: results {statuses}, expected {n} SUCCESS")
        return {
            "tasks": n,
            "queue_type": spec["queue_type"],
            "publisher_confirms": spec["confirm"],
            "result_backend": backend.split("://")[0],
            "task_track_started": track_started,
            "worker": f"--concurrency {self.workers} --pool prefork, task_acks_late=True",
            "submit_threads": self.submit_threads,
            "submit_s": round(submit_s, 3),
            "submitted_per_s": round(n / submit_s, 1),
            "total_s": round(total_s, 3),
            "tasks_per_s": round(n / total_s, 1),
            "all_results_seen_s": round(seen_s, 3),
            "loadavg_1m_before": round(load, 2),
            "cpu_ms_per_task": cpu,
        }

    def _send(self, app: Any, task: str, n: int) -> list[str]:
        """Send n tasks from `submit_threads` threads (each waits for its own confirms)."""
        if self.submit_threads <= 1:
            return [app.send_task(task, args=[{}]).id for _ in range(n)]
        from concurrent.futures import ThreadPoolExecutor

        shares = [n // self.submit_threads + (i < n % self.submit_threads)
                  for i in range(self.submit_threads)]
        with ThreadPoolExecutor(self.submit_threads) as pool:
            parts = pool.map(lambda k: [app.send_task(task, args=[{}]).id for _ in range(k)], shares)
            return [task_id for part in parts for task_id in part]

    def _rpc_run(self, apps: list[Any], task: str, warmup: int, n: int, timeout: float,
                 meter: CpuMeter) -> tuple[dict[str, int], float, float]:
        """Warm-up, then n tasks, sent from one thread per app, each thread waiting for its
        own results. The threads live for both phases: an rpc reply queue is named after
        the thread, and a new thread that reused a finished one's id would share its
        queue with that thread's consumer. The count of each final state, when the
        measured phase started and when its last task was sent."""
        def shares(total: int) -> list[int]:
            return [total // len(apps) + (i < total % len(apps)) for i in range(len(apps))]

        started = [0.0]

        def go() -> None:  # run by the last thread to reach the barrier
            meter.start()
            started[0] = time.perf_counter()

        barrier = threading.Barrier(len(apps), action=go)

        def one(app: Any, k_warmup: int, k: int) -> tuple[dict[str, int], float]:
            self._wait(app, [app.send_task(task, args=[{}]).id for _ in range(k_warmup)], timeout)
            barrier.wait()
            ids = [app.send_task(task, args=[{}]).id for _ in range(k)]
            sent_at = time.perf_counter()
            return self._wait(app, ids, timeout)[0], sent_at

        from concurrent.futures import ThreadPoolExecutor

        found: dict[str, int] = {}
        with ThreadPoolExecutor(len(apps)) as pool:
            parts = list(pool.map(one, apps, shares(warmup), shares(n)))
        for states_found, _ in parts:
            for state, count in states_found.items():
                found[state] = found.get(state, 0) + count
        return found, started[0], max(sent_at for _, sent_at in parts)

    def _batch(self, app: Any, task: str, n: int, timeout: float) -> None:
        self._wait(app, self._send(app, task, n), timeout)

    @staticmethod
    def _wait(app: Any, ids: list[str], timeout: float) -> tuple[dict[str, int], float | None]:
        """Block until every result is stored. The count of each final state, and when
        the last result was stored (epoch seconds) if the backend records it."""
        from celery import states
        from celery.backends.mongodb import MongoBackend
        from celery.result import AsyncResult, ResultSet

        deadline = time.monotonic() + timeout
        found: dict[str, int] = {}
        backend = app.backend
        if isinstance(backend, MongoBackend):
            # Polling every pending result would load the server the worker writes to,
            # and slow Celery down. Tasks finish about in the order sent: poll only the
            # newest pending one, by _id (an index lookup); when it is stored, look the
            # others up one by one. The end is the last `date_done` the worker wrote.
            coll = backend.collection
            pending = list(ids)
            last_done: datetime | None = None
            while pending:
                doc = coll.find_one({"_id": pending[-1]}, {"status": 1})
                if doc is None or doc["status"] not in states.READY_STATES:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"Celery: {len(pending)} of {len(ids)} results missing")
                    time.sleep(0.01)
                    continue
                still = []
                for task_id in pending:
                    doc = coll.find_one({"_id": task_id}, {"status": 1, "date_done": 1})
                    if doc is None or doc["status"] not in states.READY_STATES:
                        still.append(task_id)
                        continue
                    found[doc["status"]] = found.get(doc["status"], 0) + 1
                    done = doc.get("date_done")
                    if isinstance(done, datetime) and (last_done is None or done > last_done):
                        last_done = done
                pending = still
            if last_done is None:
                return found, None
            if last_done.tzinfo is None:
                last_done = last_done.replace(tzinfo=UTC)
            return found, last_done.timestamp()
        results = ResultSet([AsyncResult(i, app=app) for i in ids])
        if results.supports_native_join:
            results.join_native(timeout=timeout, propagate=False)
        else:
            results.join(timeout=timeout, propagate=False, interval=0.01)
        for r in results.results:
            found[r.state] = found.get(r.state, 0) + 1
        return found, None

    def cleanup(self) -> None:
        self.stop_worker()
        if self.backend.startswith("mongodb://"):
            with contextlib.suppress(Exception):
                import pymongo

                parts = urlsplit(self.backend)
                client: Any = pymongo.MongoClient(self.backend, serverSelectionTimeoutMS=5000)
                client.drop_database(parts.path.lstrip("/") or "celery")
                client.close()
        if self.vhost_made and (ctl := shutil.which("rabbitmqctl")):
            subprocess.run([ctl, "-q", "delete_vhost", self.vhost], capture_output=True)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


# -- the run ------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in report.get("accept", {}).items():
        verdict = "met" if r["accepted_per_s"] >= ACCEPT_TARGET else "MISSED"
        mode = name.removesuffix("_alone")
        alone = ", scheduler stopped" if r.get("scheduler_stopped") else ", scheduler consuming"
        lines.append(
            f"(a) accept, task mode {'on' if MODES[mode] else 'off'}{alone}: "
            f"{r['accepted_per_s']:,.0f} 202s/s "
            f"(p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['connections']} connections, "
            f"{r['non_202']} non-202); target >= {ACCEPT_TARGET:,.0f}/s: {verdict}"
        )
    e2e = report.get("end_to_end", {})
    celery = {k[len("celery_"):]: v for k, v in e2e.items() if k.startswith("celery_")}
    for mode, destination in ((m, d) for d in DESTINATIONS for m in MODES):
        r = e2e.get(e2e_key(mode, destination))
        if r is None:
            continue
        parts = []
        for variant, c in celery.items():
            ratio = r["tasks_per_s"] / c["tasks_per_s"]
            verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
            parts.append(f"{ratio:.3f}x Celery {variant} ({c['tasks_per_s']:,.0f}/s): {verdict}")
        lines.append(
            f"(b) end to end, {r['tasks']} no-op tasks, task mode {'on' if MODES[mode] else 'off'}, "
            f"{destination} destination: "
            f"{r['tasks_per_s']:,.0f} tasks/s (task p50 {r['task_latency_p50_ms']} ms, "
            f"p99 {r['task_latency_p99_ms']} ms); " + ("; ".join(parts) or "no Celery run")
            + f"; target >= {RATIO_TARGET}x"
        )
    for mode, peer in PEERS.items():
        r, c = e2e.get(e2e_key(mode, "webhook")), celery.get(peer)
        if r is None or c is None:
            continue
        ratio = r["tasks_per_s"] / c["tasks_per_s"]
        lines.append(
            f"(b) target: task mode {'on' if MODES[mode] else 'off'} with a webhook destination over "
            f"Celery {peer}: {r['tasks_per_s']:,.0f} / {c['tasks_per_s']:,.0f} = {ratio:.3f}x; "
            f"target >= {RATIO_TARGET}x: {'met' if ratio >= RATIO_TARGET else 'MISSED'}"
        )
    for mode in MODES:
        q, w = e2e.get(e2e_key(mode, "queue")), e2e.get(e2e_key(mode, "webhook"))
        if q is None or w is None:
            continue
        qs, ws = q["cpu_ms_per_task"].get("scheduler"), w["cpu_ms_per_task"].get("scheduler")
        if qs is not None and ws is not None:
            lines.append(
                f"(b) scheduler CPU ms per task, task mode {'on' if MODES[mode] else 'off'}: "
                f"webhook destination {ws}, queue destination {qs} (webhook - queue {ws - qs:+.3f})"
            )
    cpu_lines = []
    for name, r in report.get("accept", {}).items():
        mode = name.removesuffix("_alone")
        label = f"(a) task mode {'on' if MODES[mode] else 'off'}"
        if r.get("scheduler_stopped"):
            label += ", scheduler stopped"
        cpu_lines.append((label, r.get("cpu_ms_per_task")))
    for name, r in e2e.items():
        if name != "ratios":
            cpu_lines.append((f"(b) {name}", r.get("cpu_ms_per_task")))
    for name, r in e2e.items():
        prof = r.get("scheduler_profile") if name != "ratios" else None
        if prof and "delivery_cpu_ms_per_task" in prof:
            lines.append(
                f"    scheduler profile, (b) {name}: {prof['delivery_share'] * 100:.1f}% of its samples "
                f"delivering the record = {prof['delivery_cpu_ms_per_task']} CPU-ms per task "
                f"({prof['samples']} samples, {prof['file']})"
            )
    for label, cpu in cpu_lines:
        if cpu:
            parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "total")
            lines.append(f"    CPU ms per task, {label}: {parts} (total {cpu['total']})")
    return lines


def e2e_key(mode: str, destination: str) -> str:
    """The report's name of an end-to-end run (`fnhost_task`, `fnhost_notask_webhook`, ...)."""
    return f"fnhost_{mode}" if destination == "queue" else f"fnhost_{mode}_{destination}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}: use {', '.join(MODES)}")
    destinations = [d for d in args.destinations.split(",") if d]
    for d in destinations:
        if d not in DESTINATIONS:
            raise SystemExit(f"unknown destination {d!r}: use {', '.join(DESTINATIONS)}")
    variants = [v for v in args.celery_variants.split(",") if v]
    for v in variants:
        if v not in CELERY_VARIANTS:
            raise SystemExit(f"unknown Celery variant {v!r}: use {', '.join(CELERY_VARIANTS)}")
        if CELERY_VARIANTS[v].get("mongodb") and not args.celery_backend.startswith("mongodb://"):
            raise SystemExit(f"Celery variant {v} needs a mongodb:// --celery-backend")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "settings": {k: v for k, v in vars(args).items() if k != "admin_key"},
    }
    pids: dict[str, int] = args.pids
    receiver = Receiver()
    meter = CpuMeter(pids)
    p = Platform(args.url, args.admin_key, args.amqp_url, tag, meter)
    celery = Celery(args.amqp_url, args.celery_vhost, args.celery_backend, tag, args.celery_workers,
                    args.celery_submit_threads)
    runs = [(mode, d) for d in destinations for mode in modes]
    try:
        await p.start()
        if "webhook" in destinations:
            receiver.start()
            meter.pids["receiver"] = receiver.pid
        for mode, destination in runs:
            if destination == "queue":
                await p.declare(p.destination(mode))
            p.deploy(mode, args.max_concurrency, destination, receiver.url)
        for mode, destination in runs:  # warm: containers started, queues consumed, caches filled
            log(f"warm-up: {args.warmup} tasks of {p.function(mode, destination)}")
            await fnhost_e2e(p, mode, args.warmup, args.submit_connections, args.timeout,
                             destination, receiver)
        if "a" in args.figures and "queue" not in destinations:
            log("(a) is measured with the queue destination only: skipped")
        elif "a" in args.figures:
            report["accept"] = {}
            accepts: list[tuple[str, int | None]] = [(mode, None) for mode in modes]
            if args.accept_alone:
                if "scheduler" not in pids:
                    raise SystemExit("--accept-alone needs --watch scheduler=PID")
                accepts += [(mode, pids["scheduler"]) for mode in modes]
            for mode, scheduler_pid in accepts:
                r = await accept_rate(p, mode, args, scheduler_pid)
                wrk_output = r.pop("wrk_output")
                report["accept"][mode + ("_alone" if scheduler_pid else "")] = r
                if r["non_202"] or r["socket_errors"]:
                    raise SystemExit(f"wrk saw {r['non_202']} non-202 answers (last "
                                     f"{r['last_non_202_status']}) and {r['socket_errors']} "
                                     f"socket errors:\n{wrk_output}")
        if "b" in args.figures:
            e2e: dict[str, Any] = {}
            report["end_to_end"] = e2e
            for mode, destination in runs:
                log(f"(b) fnhost: {args.tasks} tasks of {p.function(mode, destination)}")
                profile = None
                if args.profile_scheduler:
                    if "scheduler" not in pids:
                        raise SystemExit("--profile-scheduler needs --watch scheduler=PID")
                    folder = Path(args.profile_scheduler)
                    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                    profile = SchedulerProfile(pids["scheduler"],
                                               folder / f"{e2e_key(mode, destination)}.txt")
                try:
                    e2e[e2e_key(mode, destination)] = await fnhost_e2e(
                        p, mode, args.tasks, args.submit_connections, args.timeout, destination,
                        receiver, profile,
                    )
                finally:
                    if profile is not None:  # py-spy stopped even when the run failed
                        profile.close()
            if variants:
                celery.create_vhost()
            for variant in variants:
                log(f"(b) Celery {variant}: {args.tasks} tasks, {args.celery_workers} worker processes")
                e2e[f"celery_{variant}"] = await asyncio.to_thread(
                    celery.run, variant, args.tasks, args.warmup, args.timeout,
                    {k: v for k, v in pids.items() if k in ("mongodb", "rabbitmq")},
                )
            ratios = {}
            for mode, destination in runs:
                key = e2e_key(mode, destination)
                for variant in variants:
                    ratios[f"{key}_over_celery_{variant}"] = round(
                        e2e[key]["tasks_per_s"] / e2e[f"celery_{variant}"]["tasks_per_s"], 3
                    )
            e2e["ratios"] = ratios
    finally:
        log("cleaning up")
        await asyncio.to_thread(celery.cleanup)
        await p.cleanup()
        receiver.stop()
    report["tenant"] = p.tenant
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--admin-key", default=os.environ.get("FNHOST_ADMIN_KEY"))
    parser.add_argument("--amqp-url", default=os.environ.get("FNHOST_AMQP_URL",
                                                             "amqp://guest:guest@127.0.0.1:5672/"),
                        help="the platform's RabbitMQ (to consume the destination queues)")
    parser.add_argument("--figures", default="ab", help="a: accept rate, b: end to end (default: ab)")
    parser.add_argument("--modes", default="task,notask", help="task mode on (task) and off (notask)")
    parser.add_argument("--destinations", default="queue",
                        help="(b) the on_success destinations to measure: queue, webhook or "
                        "queue,webhook (a webhook POSTs each record to bench/webhook_receiver.py, "
                        "started by the bench; its CPU is reported as `receiver`); (a) uses queue")
    parser.add_argument("--connections", type=int, default=32, help="(a) wrk connections")
    parser.add_argument("--seconds", type=int, default=10, help="(a) wrk duration")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--accept-alone", action="store_true",
                        help="(a) once more with the --watch scheduler stopped while wrk runs")
    parser.add_argument("--drain-timeout", type=float, default=900,
                        help="(a) how long to wait for the accepted tasks to finish")
    parser.add_argument("--tasks", type=int, default=2000, help="(b) tasks per run")
    parser.add_argument("--warmup", type=int, default=200, help="tasks run before measuring")
    parser.add_argument("--submit-connections", type=int, default=32, help="(b) fnhost HTTP connections")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="the functions' max_concurrency (default: the platform's default)")
    parser.add_argument("--timeout", type=float, default=600, help="(b) limit of one run")
    parser.add_argument("--celery-vhost", default="fnhost-bench-celery",
                        help="RabbitMQ vhost for Celery, created and deleted by the bench")
    parser.add_argument("--celery-backend",
                        default="mongodb://127.0.0.1:27017/fnhost_bench_celery?retryWrites=false",
                        help="Celery result backend (the database is dropped at the end), by default "
                        "the MongoDB-wire server of scripts/up, connected as fnhost connects to it; "
                        "or rpc://")
    parser.add_argument("--celery-workers", type=int, default=2)
    parser.add_argument("--celery-submit-threads", type=int, default=8,
                        help="threads sending the Celery tasks (with publisher confirms each send "
                        "waits for its confirm, so one thread is slower than the workers)")
    parser.add_argument("--profile-scheduler", metavar="DIR",
                        help="(b) sample the --watch scheduler with py-spy during each fnhost run "
                        "(DIR/<run>.txt, collapsed stacks) and report the share of its samples, and "
                        "of its CPU per task, spent delivering the destination record")
    parser.add_argument("--watch", action="append", default=[], metavar="NAME=PID",
                        help="report the CPU time per task of this process (and its children): "
                        "gateway=, scheduler=, mongodb=, rabbitmq=; mongodb and rabbitmq are "
                        "measured for Celery too")
    parser.add_argument("--celery-variants", default="durable,classic",
                        help="durable: quorum queue + publisher confirms, --celery-backend; "
                        "classic: Celery's defaults; rpc: durable with the rpc:// backend (the peer "
                        "of task mode off); mongodb-started: durable with the MongoDB backend of "
                        "--celery-backend and task_track_started (the peer of task mode on)")
    args = parser.parse_args()
    if not args.admin_key:
        raise SystemExit("give --admin-key (or FNHOST_ADMIN_KEY)")
    if shutil.which("wrk") is None and "a" in args.figures:
        raise SystemExit("wrk is not installed")
    args.pids = {}
    for item in args.watch:
        name, _, pid = item.partition("=")
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            raise SystemExit(f"--watch {item!r}: give NAME=PID of a running process")
        args.pids[name] = int(pid)
    ready = httpx.get(f"{args.url}/readyz", timeout=10)
    if ready.status_code != 200:
        raise SystemExit(f"{args.url}/readyz: {ready.status_code} {ready.text[:500]}")
    # SIGTERM cleans up like Ctrl-C: the Celery worker, vhost and queues go.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    print()
    for line in summary(report):
        print(line)


if __name__ == "__main__":
    main()
