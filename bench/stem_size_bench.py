"""Specialisation time of a stem cell with and without a memory resize, in-process
against the Docker engine (no gateway, RabbitMQ or MongoDB).

A function whose memory_mb differs from the stem cell's pays a `docker update` of
the cell's memory limit before its handler is imported; the stem pool therefore
starts cells of the sizes recently claimed.

(a) Alternating rounds, each a new function taking a stem cell: one of a size an
    idle stem cell has ("matching"), one of a size none has ("resize"). Reported:
    the pool's init time (bundle link, resize, handler import) and, of it, the
    time in Docker engine calls, p50 (min-max).
(b) `--functions` new functions of 256 MB, one after the other, in a pool whose
    stem cells start at 128 MB: how many paid a resize (before the pool kept
    cells of the claimed sizes, every one did).

    flock /tmp/fnhost-e2e.lock .venv/bin/python bench/stem_size_bench.py [--rounds 15] [--functions 10]

Before each sample the pool's refill is let finish and the machine settle, so
that container starts in the background do not fall on the measured one.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.pool.container import FunctionKey, State  # noqa: E402
from runtime.pool.engine import DockerEngine  # noqa: E402
from runtime.pool.pool import Lease, Pool, Spec  # noqa: E402
from runtime.settings import load_settings  # noqa: E402

HELLO = ROOT / "functions" / "hello"
SETTLE_S = 0.3


def spec(memory_mb: int) -> Spec:
    async def bundle() -> Path:
        return HELLO

    return Spec(
        key=FunctionKey("bench", f"f-{secrets.token_hex(4)}", "v1"), handler="main.handler",
        memory_mb=memory_mb, max_concurrency=1, timeout_s=10, bundle=bundle,
    )


async def settle(pool: Pool, count: int) -> None:
    await pool.wait_for_stem_cells(count, timeout=60)
    for _ in range(600):  # the refill may still be starting a cell of another size
        if not any(c.state is State.STARTING for c in pool.containers):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(SETTLE_S)


async def take(pool: Pool, memory_mb: int) -> Lease:
    lease = await pool.acquire(spec(memory_mb), wait_s=30)
    pool.discard(lease.container)  # one sample each: keep the pool to its stem cells
    return lease


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} ms ({min(values):.1f}-{max(values):.1f})"


async def with_pool(stem_cells: int, work: Callable[[Pool], Awaitable[None]]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="fnbench-"))
    settings = load_settings(
        data_dir=data_dir, scheduler_id="stembench-" + secrets.token_hex(3),
        stem_cells=stem_cells, stem_memory_mb=128, keep_alive_s=300,
    )
    engine = DockerEngine(settings)
    pool = Pool(settings, engine)
    try:
        await pool.start()
        await work(pool)
    finally:
        await pool.close()
        engine.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def alternating(pool: Pool, rounds: int, stem_cells: int) -> None:
    init: dict[str, list[float]] = {"matching": [], "resize": []}
    engine: dict[str, list[float]] = {"matching": [], "resize": []}
    for _ in range(rounds):
        for kind in ("matching", "resize"):
            await settle(pool, stem_cells)
            sizes = {c.memory_mb for c in pool.containers if c.state is State.STEM}
            size = min(sizes) if kind == "matching" else max(sizes) + 128
            lease = await take(pool, size)
            assert (lease.engine_ms > 0) == (kind == "resize"), (kind, lease)
            init[kind].append(lease.init_ms)
            engine[kind].append(lease.engine_ms)
    print(f"(a) {rounds} rounds, a new function per sample")
    print("    kind       init (p50, min-max)            of which engine calls")
    for kind in ("matching", "resize"):
        print(f"    {kind:9}  {summary(init[kind])}    {summary(engine[kind])}")
    extra = statistics.median(init["resize"]) - statistics.median(init["matching"])
    print(f"    resize - matching, p50: {extra:.1f} ms")


async def adaptive(pool: Pool, functions: int, stem_cells: int) -> None:
    leases = []
    for _ in range(functions):
        await settle(pool, stem_cells)
        leases.append(await take(pool, 256))
    resized = [lease for lease in leases if lease.engine_ms > 0]
    print(f"(b) {functions} new functions of 256 MB, stem cells starting at 128 MB")
    print(f"    resized: {len(resized)} of {functions}; init p50 {summary([x.init_ms for x in leases])}")
    print(f"    stem cells now: {pool.stats()['stem_cells']}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--functions", type=int, default=10)
    parser.add_argument("--stem-cells", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    await with_pool(args.stem_cells, lambda pool: alternating(pool, args.rounds, args.stem_cells))
    await with_pool(args.stem_cells, lambda pool: adaptive(pool, args.functions, args.stem_cells))
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
