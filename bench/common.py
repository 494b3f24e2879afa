"""Helpers the benchmarks share: progress lines on stderr, percentiles of timings, a
platform of the bench's own.

A benchmark runs as a script (`.venv/bin/python bench/x.py`), so this folder is on
its import path: `from common import log, percentile`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.settings import Settings  # noqa: E402
from tests.harness import (  # noqa: E402
    ADMIN_KEY,
    FINAL_STATUSES,
    MongoServer,
    Platform,
    deploy,
    own_platform,
    submit_event,
    zip_dir,
)


def log(message: str) -> None:
    """A progress line on stderr (stdout is for the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_settings(items: list[str]) -> dict[str, str]:
    """`--setting NAME=VALUE` arguments as FNHOST_* settings (lower case, no prefix)."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--setting {item!r}: give NAME=VALUE")
        settings[name.lower().removeprefix("fnhost_")] = value
    return settings


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0-1) of `values`, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def machine() -> dict[str, Any]:
    """What a report says of the machine it ran on."""
    return {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}


@contextlib.contextmanager
def bench_platform(**settings: Any) -> Iterator[Platform]:
    """A gateway and a scheduler with a MongoDB-wire server and a RabbitMQ vhost of their
    own, as the tests start them; `settings` are FNHOST_* settings (lower case)."""
    # The test platform's light stem pool is not the production one.
    for name in ("stem_cells", "stem_cells_min", "stem_cells_max"):
        settings.setdefault(name, Settings.model_fields[name].default)
    mongo = MongoServer()
    mongo.start()
    try:
        log("starting a platform")
        with own_platform(mongo.url, **settings) as platform:
            wait_for_reserve(platform)
            yield platform
    finally:
        mongo.stop()


def fill(client: httpx.Client, functions: int, concurrency: int, sleep_s: float) -> None:
    """Bursts of other functions, each to its max_concurrency, until they are all over."""
    bundle = zip_dir("sleep")
    names = [f"filler-{i}" for i in range(functions)]
    for name in names:
        r = deploy(client, name, bundle, {"max_concurrency": concurrency})
        r.raise_for_status()

    def one(item: tuple[str, int]) -> str:
        r = submit_event(client, item[0], {"seconds": sleep_s})
        if r.status_code != 202:
            raise SystemExit(f"submitting {item[0]}: {r.status_code} {r.text[:300]}")
        return str(r.headers["x-task-id"])

    work = [(name, i) for name in names for i in range(2 * concurrency)]
    with ThreadPoolExecutor(16) as threads:
        ids = list(threads.map(one, work))
    deadline = time.monotonic() + 600
    for task_id, (name, _) in zip(ids, work, strict=True):
        while True:
            r = client.get(f"/v1/tasks/{task_id}", params={"function": name})
            if r.status_code == 200 and r.json()["status"] in FINAL_STATUSES:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the fill's tasks did not finish: {task_id} {r.text[:300]}")
            time.sleep(0.2)


def pool_state(platform: Platform) -> dict[str, float]:
    """The scheduler's containers by state, its memory in use and budget, from /metrics."""
    text = httpx.get(f"{platform.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                     timeout=10).text
    found: dict[str, float] = {}
    for name, label in (("fnhost_pool_containers", "state"), ("fnhost_pool_memory_mb", "kind")):
        for m in re.finditer(rf'^{name}{{[^}}]*{label}="([^"]+)"[^}}]*}} ([\d.e+]+)$', text, re.M):
            found[f"{name.removeprefix('fnhost_pool_')}.{m.group(1)}"] = float(m.group(2))
    m = re.search(r'^fnhost_pool_stem_cells_target{[^}]*} ([\d.e+]+)$', text, re.M)
    if m:
        found["stem_cells_target"] = float(m.group(1))
    return found


def wait_for_reserve(platform: Platform, timeout: float = 120.0) -> None:
    """Until the scheduler's stem cells are all started: a platform measured "fresh" is
    one that has finished starting, not one still booting its reserve."""
    deadline = time.monotonic() + timeout
    while True:
        state = pool_state(platform)
        target = state.get("stem_cells_target")
        if target is not None and state.get("containers.stem", 0) >= target:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the stem-cell reserve did not fill in {timeout:g} s: {state}")
        time.sleep(0.25)
