"""Prometheus metrics of the schedulers, as their heartbeats report them.

Every scheduler's heartbeat carries its pool's counters and its flow state
(dispatch windows, queue promotions). Each gateway exports what it last heard
from every live scheduler, labelled by scheduler: one scrape target shows the
whole cluster, and a scheduler needs no HTTP port of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from runtime.broker.membership import Membership

# Pool counters exported as fnhost_pool_<name>_total.
POOL_COUNTERS = (
    "warm_starts", "stem_starts", "cold_starts", "slow_starts", "init_errors", "lost", "expired",
    "evictions", "evictions_count", "evictions_memory", "evicted_stem_cells", "stem_cells_shrunk",
    "reserve_evictions", "fair_share_releases", "freezes", "thaws", "freeze_failures",
    "thaw_failures",
)
FLOW_COUNTERS = {
    "promotions": "functions promoted to a dedicated queue",
    "demotions": "functions moved back to their tenant's queue",
    "forwarded": "messages forwarded from a tenant's queue to a dedicated one",
}


class ClusterCollector(Collector):
    def __init__(self) -> None:
        self.membership: Membership | None = None  # set when the gateway starts

    def collect(self) -> Iterator[Any]:
        members = self.membership.live() if self.membership is not None else []
        window = GaugeMetricFamily(
            "fnhost_dispatch_window", "A function's AIMD dispatch window on a scheduler",
            labels=["scheduler", "tenant", "function"],
        )
        ceiling = GaugeMetricFamily(
            "fnhost_dispatch_ceiling", "The window's bound: max_concurrency or the host's capacity",
            labels=["scheduler", "tenant", "function"],
        )
        running = GaugeMetricFamily(
            "fnhost_dispatch_in_hand", "A function's messages in hand on a scheduler",
            labels=["scheduler", "tenant", "function"],
        )
        waiting = GaugeMetricFamily(
            "fnhost_dispatch_waiting", "A function's messages waiting for its window",
            labels=["scheduler", "tenant", "function"],
        )
        memory = GaugeMetricFamily(
            "fnhost_pool_memory_mb", "Memory limits of a scheduler's live containers, and its budget",
            labels=["scheduler", "kind"],
        )
        containers = GaugeMetricFamily(
            "fnhost_pool_containers", "A scheduler's containers by state, and the most it may hold",
            labels=["scheduler", "state"],
        )
        stem_target = GaugeMetricFamily(
            "fnhost_pool_stem_cells_target", "The stem cells a scheduler keeps in reserve",
            labels=["scheduler"],
        )
        flow_counters = {
            name: CounterMetricFamily(f"fnhost_queue_{name}", text, labels=["scheduler"])
            for name, text in FLOW_COUNTERS.items()
        }
        pool_counters = {
            name: CounterMetricFamily(
                f"fnhost_pool_{name}", f"Pool counter {name}", labels=["scheduler"]
            )
            for name in POOL_COUNTERS
        }
        for member in members:
            flow = member.info.get("flow") or {}
            for tenant, function, limit, bound, in_hand, queued in flow.get("windows", []):
                labels = [member.id, str(tenant), str(function)]
                window.add_metric(labels, limit)
                ceiling.add_metric(labels, bound)
                running.add_metric(labels, in_hand)
                waiting.add_metric(labels, queued)
            for name, family in flow_counters.items():
                family.add_metric([member.id], float(flow.get(name, 0)))
            pool = member.info.get("pool") or {}
            for name, family in pool_counters.items():
                family.add_metric([member.id], float(pool.get(name, 0)))
            for kind, value in (pool.get("memory_mb") or {}).items():
                memory.add_metric([member.id, str(kind)], float(value))
            for state, count in (pool.get("containers") or {}).items():
                containers.add_metric([member.id, str(state)], float(count))
            if "max_containers" in pool:
                containers.add_metric([member.id, "max"], float(pool["max_containers"]))
            target = (pool.get("stem_cells") or {}).get("target")
            if target is not None:
                stem_target.add_metric([member.id], float(target))
        yield from (window, ceiling, running, waiting, memory, containers, stem_target)
        yield from flow_counters.values()
        yield from pool_counters.values()


CLUSTER = ClusterCollector()
REGISTRY.register(CLUSTER)
