"""Helpers the benchmarks share: progress lines on stderr, percentiles of timings, a
platform of the bench's own.

A benchmark runs as a script (`.venv/bin/python bench/x.py`), so this folder is on
its import path: `from common import log, percentile`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import MongoServer, Platform, own_platform  # noqa: E402


def log(message: str) -> None:
    """A progress line on stderr (stdout is for the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    mongo = MongoServer()
    mongo.start()
    try:
        log("starting a platform")
        with own_platform(mongo.url, **settings) as platform:
            yield platform
    finally:
        mongo.stop()
