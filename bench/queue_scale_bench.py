"""What an idle tenant queue costs RabbitMQ, per queue type: memory, idle CPU, declare time.

    flock /tmp/fnhost-e2e.lock .venv/bin/python bench/queue_scale_bench.py \
        [--types quorum,classic,stream] [--counts 2000,20000] [--base 50] [--cpu-seconds 30] \
        [--quorum-tick-ms 60000]

Needs the local RabbitMQ node and rabbitmqctl (run as root or as the rabbitmq user: it
reads the broker's /proc entries). Each run (one queue type, one count) gets a vhost of
its own, made with rabbitmqctl and deleted at the end, also on a failure, Ctrl-C or
SIGTERM. In it the bench declares the invoke exchange and `--base` tenant queues with the
arguments fnhost gives the type, waits `--settle` seconds and measures the idle broker:
the Erlang VM's allocated memory (`erlang:memory(total)`, and the categories of
`rabbitmq-diagnostics memory_breakdown`), the beam process's resident memory, process
count and open files, and its CPU over `--cpu-seconds` (utime+stime from /proc). It then
declares and binds queues up to the count (timed), measures again (with `--sweep-seconds`,
then reads every queue's depth by passive declares, as a scheduler sweeps the queues it
owns but does not consume, for that long: the broker's CPU per read), puts one consumer on
every queue from one connection and one channel (as a scheduler consumes its tenants)
and measures a third time. Reported per queue: the increments over the baseline of the
same run, and whether a new connection still opens once they are there (RabbitMQ 3.x
counts file handles reserved by quorum queues against its limit, and a connection waits
for one). Declaring stops early when the machine's available memory falls under
`--min-free-gb`; the report says how many queues were made.

With `--quorum-tick-ms` the quorum queues are declared with that tick interval
(`rabbit.quorum_tick_interval`, read when a queue is declared; the broker's value is
restored afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from common import log

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import constants as c  # noqa: E402
from runtime.broker import topology  # noqa: E402
from tests.harness import Vhost, rabbitmq_cli  # noqa: E402

# Queue arguments as fnhost declares a tenant queue (runtime/broker/topology.py), per
# type. A classic queue has no delivery limit and a stream neither a delivery limit nor
# dead-lettering: the broker refuses those arguments, so they are left out.
QUEUE_ARGS: dict[str, dict[str, Any]] = {
    "quorum": {"x-queue-type": "quorum", "x-delivery-limit": topology.DELIVERY_LIMIT,
               "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE},
    "classic": {"x-queue-type": "classic", "x-queue-version": 2,
                "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE},
    "stream": {"x-queue-type": "stream"},
}
# The memory_breakdown categories that move with queues and consumers.
CATEGORIES = ["quorum_queue_procs", "quorum_ets", "queue_procs", "stream_queue_procs",
              "stream_queue_replica_reader_procs", "connection_channels", "connection_other",
              "other_proc", "other_ets", "metrics", "mnesia", "binary", "other_system"]
CTL_TIMEOUT_S = 120.0
# Plain connections, each attempt bounded: a robust one would retry for ever, and with
# thousands of quorum queues RabbitMQ 3.x may accept no new connection at all.
CONNECT_TIMEOUT_S = 15.0
DELETE_VHOST_TIMEOUT_S = 900.0  # thousands of quorum queues take a while to delete
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ctl(*args: str, tool: str = "rabbitmqctl", timeout: float = CTL_TIMEOUT_S) -> str:
    """Run a RabbitMQ CLI tool and return its output, bounded (tests/harness.py)."""
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"{tool} is not installed")
    return rabbitmq_cli([path, "-q", *args], timeout)


def beam_pid() -> int:
    out = subprocess.run(["pgrep", "-u", "rabbitmq", "beam.smp"], capture_output=True, text=True).stdout
    pids = out.split()
    if len(pids) != 1:
        raise SystemExit(f"expected one RabbitMQ beam.smp process, found {pids or 'none'}")
    return int(pids[0])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def snapshot(pid: int) -> dict[str, Any]:
    """The broker's memory as the VM and the OS see it, its process count, open files, and
    the file handles its file handle cache counts as used (RabbitMQ 3.x: a new connection
    waits while they exceed the limit)."""
    out = ctl("eval", "{erlang:memory(total), erlang:system_info(process_count)}.")
    vm_total, processes = (int(x) for x in re.findall(r"\d+", out)[:2])
    try:
        fhc = dict(re.findall(r"\{(\w+),(\d+)\}", ctl("eval", "file_handle_cache:info().")))
    except RuntimeError:  # a broker without the file handle cache (its fd accounting left in 4.0)
        fhc = {}
    breakdown = json.loads(ctl("memory_breakdown", "--formatter", "json", tool="rabbitmq-diagnostics"))
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"vm_total": vm_total, "rss": rss_kb * 1024, "erlang_processes": processes,
            "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "fhc_used": int(fhc.get("total_used", -1)), "fhc_limit": int(fhc.get("total_limit", -1)),
            "breakdown": {k: breakdown[k]["bytes"] for k in CATEGORIES if k in breakdown}}


async def measure(pid: int, settle: float, cpu_seconds: float) -> dict[str, Any]:
    """Let the broker settle, read its CPU over `cpu_seconds` (nothing else from the bench
    runs meanwhile: the CLI calls cost the broker CPU too), then its memory."""
    await asyncio.sleep(settle)
    t0, ticks0 = time.monotonic(), cpu_ticks(pid)
    await asyncio.sleep(cpu_seconds)
    cpu = (cpu_ticks(pid) - ticks0) / CLK_TCK / (time.monotonic() - t0)
    return {"cpu_core_share": round(cpu, 4), **await asyncio.to_thread(snapshot, pid)}


class Declarer:
    """Declares and binds tenant queues over `workers` channels, one call in flight each,
    and stops when the machine runs short of memory."""

    def __init__(self, connection: AbstractConnection, kind: str, workers: int, min_free: int):
        self.connection, self.kind, self.workers, self.min_free = connection, kind, workers, min_free
        self.numbers: list[int] = []  # of the queues made, in no order
        self.stopped_early = False

    @property
    def made(self) -> int:
        return len(self.numbers)

    async def run(self, first: int, last: int) -> float:
        """Queues `first`..`last - 1`; returns the seconds it took."""
        t0 = time.monotonic()
        await asyncio.gather(*(self._worker(range(first + w, last, self.workers))
                               for w in range(self.workers)))
        return time.monotonic() - t0

    async def _worker(self, numbers: range) -> None:
        channel = await self.connection.channel()
        exchange = await topology.invoke_exchange(channel)
        try:
            for n in numbers:
                if self.stopped_early:
                    return
                if n % 500 == 0 and available_bytes() < self.min_free:
                    self.stopped_early = True
                    log(f"under {self.min_free / 2**30:.1f} GB available: stopping at {self.made} queues")
                    return
                queue = await channel.declare_queue(c.tenant_queue(tenant(n)), durable=True,
                                                    arguments=QUEUE_ARGS[self.kind])
                await queue.bind(exchange, routing_key=tenant(n))
                self.numbers.append(n)
                if self.made % 5000 == 0:
                    log(f"{self.made} queues, {available_bytes() / 2**30:.1f} GB available")
        finally:
            await channel.close()


def tenant(n: int) -> str:
    return f"bench{n:06d}"


async def connect(url: str) -> AbstractConnection:
    return await asyncio.wait_for(aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S)


async def connect_time(url: str) -> float | None:
    """Seconds to open (and close) a new connection, None when the broker did not answer."""
    t0 = time.monotonic()
    try:
        connection = await connect(url)
    except (TimeoutError, aio_pika.exceptions.AMQPError, OSError):
        return None
    seconds = time.monotonic() - t0
    await connection.close()
    return round(seconds, 3)


async def consume_all(connection: AbstractConnection, numbers: list[int], prefetch: int) -> float:
    """One consumer on each queue, all on one channel of `connection`."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.nack(requeue=True)  # nothing is published; never reached

    t0 = time.monotonic()
    for n in numbers:
        queue = await channel.get_queue(c.tenant_queue(tenant(n)), ensure=False)
        await queue.consume(on_message)
    return time.monotonic() - t0


async def delete_queues(connection: AbstractConnection, numbers: list[int], workers: int) -> float:
    """Delete the queues over AMQP, several at a time: the vhost's own delete goes one by
    one and would outlast the CLI's timeout with thousands of quorum queues."""
    async def worker(mine: list[int]) -> None:
        channel: AbstractChannel = await connection.channel()
        for n in mine:
            await channel.queue_delete(c.tenant_queue(tenant(n)))
        await channel.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker(numbers[w::workers]) for w in range(workers)))
    return time.monotonic() - t0


async def sweep(connection: AbstractConnection, numbers: list[int], workers: int, seconds: float,
                pid: int) -> dict[str, Any]:
    """Read the depth of every queue, over and over for `seconds`, as schedulers sweep the
    queues they own but do not consume: the broker's CPU per read."""
    deadline = time.monotonic() + seconds
    reads = 0

    async def worker(mine: list[int]) -> None:
        nonlocal reads
        depths = topology.DepthReader(connection, CTL_TIMEOUT_S)
        while time.monotonic() < deadline:
            for n in mine:
                await depths.read(c.tenant_queue(tenant(n)))
                reads += 1
                if time.monotonic() >= deadline:
                    break
        await depths.close()

    t0, ticks0 = time.monotonic(), cpu_ticks(pid)
    await asyncio.gather(*(worker(numbers[w::workers]) for w in range(workers)))
    cpu_s = (cpu_ticks(pid) - ticks0) / CLK_TCK
    elapsed = time.monotonic() - t0
    return {"reads": reads, "reads_per_s": round(reads / elapsed), "broker_cpu_ms_per_read":
            round(cpu_s * 1000 / reads, 4) if reads else None}


def per_queue(after: dict[str, Any], before: dict[str, Any], n: int) -> dict[str, Any]:
    """What each of `n` more queues (or consumers) added, in bytes and in CPU share."""
    if n <= 0:
        return {}
    return {
        "vm_bytes": round((after["vm_total"] - before["vm_total"]) / n),
        "rss_bytes": round((after["rss"] - before["rss"]) / n),
        "erlang_processes": round((after["erlang_processes"] - before["erlang_processes"]) / n, 2),
        "open_files": round((after["open_files"] - before["open_files"]) / n, 3),
        "cpu_core_share_per_1000": round((after["cpu_core_share"] - before["cpu_core_share"]) / n * 1000, 4),
        "breakdown_bytes": {k: round((after["breakdown"].get(k, 0) - v) / n)
                            for k, v in before["breakdown"].items()
                            if abs(after["breakdown"].get(k, 0) - v) / n >= 100},
    }


async def run_in(url: str, kind: str, count: int, args: argparse.Namespace, pid: int,
                 result: dict[str, Any]) -> None:
    """Fills `result` as it goes, so that a run cut short still reports what it measured."""
    connection = await connect(url)
    # The consumers' connection is opened first, as a scheduler's is there before the queues.
    consumer_connection = await connect(url)
    declarer = Declarer(connection, kind, args.workers, int(args.min_free_gb * 2**30))
    try:
        await declarer.run(0, args.base)
        log(f"{kind}: {declarer.made} baseline queues; measuring")
        base = await measure(pid, args.settle, args.cpu_seconds)
        seconds = await declarer.run(args.base, count)
        made = declarer.made
        log(f"{kind}: {made} queues in {seconds:.1f} s; measuring")
        idle = await measure(pid, args.settle, args.cpu_seconds)
        result.update(made=made, stopped_early=declarer.stopped_early, declare_s=round(seconds, 1),
                      declared_per_s=round((made - args.base) / seconds, 1) if seconds else None,
                      baseline=base, idle=idle, per_queue=per_queue(idle, base, made - args.base),
                      new_connection_s=await connect_time(url))
        if args.sweep_seconds:
            result["sweep"] = await sweep(connection, declarer.numbers, args.workers, args.sweep_seconds, pid)
        if args.consumers:
            seconds = await consume_all(consumer_connection, declarer.numbers, args.prefetch)
            log(f"{kind}: {made} consumers in {seconds:.1f} s; measuring")
            consumed = await measure(pid, args.settle, args.cpu_seconds)
            result.update(consume_s=round(seconds, 1), consumed=consumed,
                          per_consumer=per_queue(consumed, idle, made))
        await consumer_connection.close()
        result["delete_s"] = round(await delete_queues(connection, declarer.numbers, args.workers), 1)
    finally:
        for each in (consumer_connection, connection):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(each.close(), CONNECT_TIMEOUT_S)


def set_quorum_tick(ms: int | None) -> str:
    """Set the tick interval new quorum queues get; returns the broker's value before."""
    before = ctl("eval", "application:get_env(rabbit, quorum_tick_interval).").strip()
    if ms is not None:
        ctl("eval", f"application:set_env(rabbit, quorum_tick_interval, {int(ms)}).")
    return before


def restore_quorum_tick(before: str) -> None:
    match = re.fullmatch(r"\{ok,(\d+)\}", before.replace(" ", ""))
    if match:
        ctl("eval", f"application:set_env(rabbit, quorum_tick_interval, {match.group(1)}).")
    else:
        ctl("eval", "application:unset_env(rabbit, quorum_tick_interval).")


def delete_vhost(vhost: Vhost) -> None:
    """Always leave nothing behind: a vhost that outlasted the harness's bounded delete is
    deleted again with a long timeout."""
    vhost.delete()
    if vhost.name in ctl("list_vhosts", "name").split():
        log(f"vhost {vhost.name} still there; deleting it with a {DELETE_VHOST_TIMEOUT_S:.0f} s timeout")
        ctl("delete_vhost", vhost.name, timeout=DELETE_VHOST_TIMEOUT_S)


def run(kind: str, count: int, args: argparse.Namespace, pid: int, result: dict[str, Any]) -> None:
    vhost = Vhost().create()
    tick_before = set_quorum_tick(args.quorum_tick_ms) if kind == "quorum" else None
    result.update(type=kind, count=count, arguments=QUEUE_ARGS[kind],
                  quorum_tick_ms=args.quorum_tick_ms if kind == "quorum" else None)
    try:
        asyncio.run(run_in(vhost.url, kind, count, args, pid, result))
    finally:
        if tick_before is not None and args.quorum_tick_ms is not None:
            restore_quorum_tick(tick_before)
        delete_vhost(vhost)


def summary(r: dict[str, Any]) -> str:
    if "per_queue" not in r:
        return f"{r['type']:>7} x{r['count']:>6}: cut short before its figures"
    q = r["per_queue"]
    line = (f"{r['type']:>7} x{r['made']:>6}{' (stopped early)' if r['stopped_early'] else ''}"
            f"{' tick ' + str(r['quorum_tick_ms']) + ' ms' if r.get('quorum_tick_ms') else ''}: "
            f"VM {r['baseline']['vm_total'] / 2**20:.0f} -> {r['idle']['vm_total'] / 2**20:.0f} MB "
            f"({q['vm_bytes'] / 1024:.1f} KB/queue, RSS {q['rss_bytes'] / 1024:.1f} KB/queue), "
            f"CPU {r['baseline']['cpu_core_share']:.1%} -> {r['idle']['cpu_core_share']:.1%} of a core, "
            f"declared {r['declared_per_s']}/s, a new connection "
            + (f"in {r['new_connection_s']} s" if r["new_connection_s"] is not None else "refused"))
    if "sweep" in r:
        line += f"; depth reads {r['sweep']['broker_cpu_ms_per_read']} broker CPU-ms each"
    if "per_consumer" in r:
        p = r["per_consumer"]
        line += (f"; consumers: VM +{p['vm_bytes'] / 1024:.1f} KB each, CPU "
                 f"{r['consumed']['cpu_core_share']:.1%} of a core")
    return line


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that the vhost and the tick setting are put back."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="quorum,classic", help="any of quorum, classic, stream")
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument("--base", type=int, default=50, help="queues of the baseline")
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before each measurement")
    parser.add_argument("--workers", type=int, default=16, help="channels declaring at once")
    parser.add_argument("--prefetch", type=int, default=64, help="of the consumers' channel")
    parser.add_argument("--no-consumers", dest="consumers", action="store_false")
    parser.add_argument("--sweep-seconds", type=float, default=0.0,
                        help="read every queue's depth (passive declare) for this long, before the consumers")
    parser.add_argument("--min-free-gb", type=float, default=4.0)
    parser.add_argument("--quorum-tick-ms", type=int, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    pid = beam_pid()
    version = ctl("eval", "rabbit_misc:version().").strip().strip('"')
    results: list[dict[str, Any]] = []
    try:
        for kind in args.types.split(","):
            for count in (int(n) for n in args.counts.split(",")):
                log(f"{kind} x{count}")
                results.append({})
                run(kind, count, args, pid, results[-1])
                log(summary(results[-1]))
    finally:  # the runs that finished are reported also when a later one fails
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "rabbitmq": version,
                          "results": results}, indent=2))
        print()
        for r in results:
            print(summary(r))


if __name__ == "__main__":
    main()
