"""The host's memory budget for containers."""

from __future__ import annotations

from pathlib import Path

from runtime.pool import memory
from runtime.settings import load_settings


def test_an_explicit_budget_is_used_as_is(tmp_path: Path) -> None:
    assert memory.budget_mb(load_settings(host_memory_mb=3000), tmp_path / "none") == 3000


def test_auto_is_three_quarters_of_memtotal(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8192000 kB\nMemFree:         1000 kB\n")
    assert memory.host_memory_mb(meminfo) == 8000
    assert memory.budget_mb(load_settings(host_memory_mb=0), meminfo) == 6000


def test_without_meminfo_sysconf_answers(tmp_path: Path) -> None:
    assert memory.host_memory_mb(tmp_path / "missing") > 0
    (tmp_path / "garbled").write_text("MemTotal: lots\n")
    assert memory.host_memory_mb(tmp_path / "garbled") > 0


def test_the_real_host() -> None:
    assert memory.host_memory_mb() > 0


def test_max_containers_explicit_or_from_the_budget() -> None:
    assert memory.max_containers(load_settings(max_containers=8), 18_000) == 8
    auto = load_settings(max_containers=0)
    # One per 64 MB of the budget: 24 GiB at 75 % holds 288 of the smallest containers.
    assert memory.max_containers(auto, 18_432) == 288
    assert memory.max_containers(auto, 10) == 1
    assert memory.max_containers(auto, 10_000_000) == memory.AUTO_MAX_CONTAINERS
