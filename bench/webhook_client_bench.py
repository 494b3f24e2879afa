"""CPU per webhook delivery of the scheduler's webhook client: the old one (httpx)
against the one in use (aiohttp), in the same run.

Each round makes `--posts` deliveries through runtime.destinations.Destinations,
`--concurrency` at a time (as a scheduler delivers its tasks' records), to a
local receiver (bench/webhook_receiver.py, a process of its own). The clients
take turns, in the order A B B A ... so that a load that comes and goes on the
machine falls on both alike. Reported per client: the CPU milliseconds this
process spent per delivery (user + system: the client side, the record's
encoding, the delivery's bookkeeping), the receiver's, and the deliveries per
second; then the ratio of the two clients' CPU per delivery.

    .venv/bin/python bench/webhook_client_bench.py [--posts 5000] [--rounds 6] \\
        [--concurrency 32] [--profile /tmp/webhook-profile]

With `--profile DIR` one more round of each client runs under pyinstrument; its
call tree goes to DIR/<client>.txt and the share of the time spent in each
library is reported. The old client is kept here only to be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.destinations import Destinations, build_record  # noqa: E402
from runtime.models import WebhookDestination  # noqa: E402
from runtime.settings import Settings, load_settings  # noqa: E402
from runtime.webhooks import WEBHOOK_DRAIN_BYTES, AiohttpWebhooks, WebhookError  # noqa: E402
from tests.harness import NoBroker  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class HttpxWebhooks:
    """The webhook client fnhost used before, as it was configured: httpx.AsyncClient,
    a streamed answer drained up to WEBHOOK_DRAIN_BYTES."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        s = self._settings
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(s.webhook_timeout_s),
            limits=httpx.Limits(
                max_connections=s.webhook_max_connections,
                max_keepalive_connections=min(20, s.webhook_max_connections),
            ),
            follow_redirects=False,
            headers={"User-Agent": "fnhost"},
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        assert self._http is not None
        try:
            async with self._http.stream("POST", url, content=body, headers=headers) as response:
                read = 0
                chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
                async with aclosing(chunks) as stream:
                    async for chunk in stream:
                        read += len(chunk)
                        if read > WEBHOOK_DRAIN_BYTES:
                            break
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.TransportError as exc:
            raise WebhookError(f"{type(exc).__name__}: {exc}") from None
        return response.status_code, response.reason_phrase


CLIENTS = {"httpx": HttpxWebhooks, "aiohttp": AiohttpWebhooks}


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def record(n: int) -> dict[str, Any]:
    return build_record(
        request_id=f"req-{n}", task_id=f"task-{n}", function="noop", version="3f2a9c0d1e2f",
        condition="Success", invoke_count=1, payload=b"{}", content_type="application/json",
        status_code=200, function_error=None, result=b"null", result_content_type="application/json",
    )


async def deliver_all(d: Destinations, url: str, posts: int, concurrency: int, tag: str) -> None:
    destination = WebhookDestination(type="webhook", url=url)
    records = [record(i) for i in range(posts)]  # built before the clock starts
    next_index = 0
    failed: list[str] = []

    async def worker() -> None:
        nonlocal next_index
        while next_index < posts:
            i = next_index
            next_index += 1
            delivery = await d.deliver("bench", destination, records[i])
            if delivery.status != "delivered":
                failed.append(str(delivery.error))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failed:
        raise SystemExit(f"{tag}: {len(failed)} deliveries failed, e.g. {failed[:3]}")


async def one_round(
    name: str, settings: Settings, url: str, receiver: int, posts: int, concurrency: int,
    profiler: Any = None,
) -> dict[str, float]:
    d = Destinations(settings, cast(Any, NoBroker()), None, CLIENTS[name](settings))
    await d.start()
    try:
        # Connections opened and warm before the clock starts: the steady state is measured.
        await deliver_all(d, url, concurrency * 4, concurrency, name)
        cpu0, rcv0, wall0 = time.process_time(), cpu_of(receiver), time.monotonic()
        if profiler is not None:
            profiler.start()
        await deliver_all(d, url, posts, concurrency, name)
        if profiler is not None:
            profiler.stop()
        cpu1, rcv1, wall1 = time.process_time(), cpu_of(receiver), time.monotonic()
    finally:
        await d.close()
    return {
        "client_cpu_ms_per_post": (cpu1 - cpu0) * 1000 / posts,
        "receiver_cpu_ms_per_post": (rcv1 - rcv0) * 1000 / posts,
        "posts_per_s": posts / (wall1 - wall0),
    }


LIBRARIES = ("httpx", "httpcore", "h11", "anyio", "sniffio", "aiohttp", "yarl", "multidict",
             "asyncio", "uvloop", "runtime", "orjson", "pydantic")


def library_of(path: str) -> str:
    parts = Path(path).parts
    for lib in LIBRARIES:
        if lib in parts or f"{lib}.py" in parts:
            return lib
    return "other"


def where_time_goes(session: Any, top: int = 12) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self time by library (a built-in call counts for the library that called it) and
    the functions with the most self time, over a pyinstrument session, in % of the whole."""
    libs: dict[str, float] = {}
    funcs: dict[str, float] = {}
    root = session.root_frame()
    todo: list[tuple[Any, str, str]] = [(root, "other", "")] if root is not None else []
    while todo:
        frame, caller_lib, caller = todo.pop()
        path = frame.file_path or ""
        lib = caller_lib if path.startswith("<") or not path else library_of(path)
        # pyinstrument's "[self]" frames are their parent's own time.
        name = caller if frame.function == "[self]" else (
            f"{frame.function} ({lib}: {Path(path).name}:{frame.line_no})")
        todo.extend((child, lib, name) for child in frame.children)
        libs[lib] = libs.get(lib, 0.0) + frame.total_self_time
        funcs[name] = funcs.get(name, 0.0) + frame.total_self_time
    whole = sum(libs.values()) or 1.0
    by_lib = {k: round(v * 100 / whole, 1) for k, v in sorted(libs.items(), key=lambda kv: -kv[1])}
    by_func = [(k, round(v * 100 / whole, 1)) for k, v in sorted(funcs.items(), key=lambda kv: -kv[1])[:top]]
    return by_lib, by_func


async def run(args: argparse.Namespace) -> dict[str, Any]:
    clients = [c for c in args.clients.split(",") if c]
    for c in clients:
        if c not in CLIENTS:
            raise SystemExit(f"unknown client {c!r}: use {', '.join(CLIENTS)}")
    # The receiver listens on 127.0.0.1, which webhooks may reach only when allowed.
    settings = load_settings(webhook_timeout_s=10.0, webhook_max_connections=args.max_connections,
                             webhook_allowed_networks="127.0.0.1/32")
    receiver = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, str(Path(__file__).with_name("webhook_receiver.py"))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"the receiver did not start: {line!r}")
        url = f"http://127.0.0.1:{int(line.split()[1])}/hooks/done"
        rounds: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
        for r in range(args.rounds):
            order = clients if r % 2 == 0 else list(reversed(clients))
            for name in order:
                result = await one_round(name, settings, url, receiver.pid, args.posts, args.concurrency)
                rounds[name].append(result)
                print(f"[{time.strftime('%H:%M:%S')}] round {r + 1} {name}: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in result.items()), file=sys.stderr, flush=True)
        report: dict[str, Any] = {
            "settings": {k: v for k, v in vars(args).items() if k != "profile"},
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "clients": {},
        }
        for name, results in rounds.items():
            report["clients"][name] = {
                key: round(statistics.median(r[key] for r in results), 4) for key in results[0]
            } | {"client_cpu_ms_per_post_rounds": [round(r["client_cpu_ms_per_post"], 4) for r in results]}
        if "httpx" in rounds and "aiohttp" in rounds:
            # Per round pair, then the median: each pair ran under about the same load.
            ratios = [a["client_cpu_ms_per_post"] / h["client_cpu_ms_per_post"]
                      for a, h in zip(rounds["aiohttp"], rounds["httpx"], strict=True)]
            report["aiohttp_over_httpx_cpu"] = round(statistics.median(ratios), 3)
        if args.profile:
            from pyinstrument import Profiler

            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
            report["profile"] = {}
            for name in clients:
                profiler = Profiler(interval=0.0005, async_mode="disabled")
                await one_round(name, settings, url, receiver.pid, args.posts, args.concurrency, profiler)
                (out / f"{name}.txt").write_text(profiler.output_text(unicode=False, color=False))
                by_lib, by_func = where_time_goes(profiler.last_session)
                report["profile"][name] = {
                    "file": str(out / f"{name}.txt"),
                    "self_time_percent_by_library": by_lib,
                    "top_functions_self_time_percent": by_func,
                }
        return report
    finally:
        receiver.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=5000, help="deliveries per round and client")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=32, help="deliveries in flight at once")
    parser.add_argument("--max-connections", type=int, default=100,
                        help="FNHOST_WEBHOOK_MAX_CONNECTIONS of both clients")
    parser.add_argument("--clients", default="httpx,aiohttp")
    parser.add_argument("--profile", metavar="DIR", help="profile one more round per client (pyinstrument)")
    args = parser.parse_args()
    import uvloop  # the scheduler runs on uvloop

    report = uvloop.run(run(args))
    print(json.dumps(report, indent=2))
    print()
    for name, r in report["clients"].items():
        print(f"{name}: {r['client_cpu_ms_per_post']:.4f} client CPU-ms per delivery "
              f"(receiver {r['receiver_cpu_ms_per_post']:.4f}), {r['posts_per_s']:,.0f} deliveries/s")
    if "aiohttp_over_httpx_cpu" in report:
        print(f"aiohttp / httpx, client CPU per delivery: {report['aiohttp_over_httpx_cpu']}x "
              "(median of the per-round ratios)")
    for name, p in report.get("profile", {}).items():
        shares = ", ".join(f"{k} {v}%" for k, v in p["self_time_percent_by_library"].items())
        print(f"profile {name} ({p['file']}), self time by library: {shares}")
        for func, share in p["top_functions_self_time_percent"]:
            print(f"    {share:5.1f}%  {func}")


if __name__ == "__main__":
    main()
