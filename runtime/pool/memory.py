"""The host's memory budget: what the memory limits of a scheduler's containers may add up to.

Docker does not stop a host from promising more memory than it has: containers
that all use their limit at once leave the kernel's out-of-memory killer to
choose among them (or among the platform's own processes). The pool keeps the
sum of its live containers' limits within a budget instead, and evicts idle
containers to stay within it.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.settings import Settings

# With FNHOST_HOST_MEMORY_MB=0: the share of the host's memory containers may have;
# the rest is for the platform's processes, the Docker engine and the page cache.
AUTO_SHARE = 0.75
MEMINFO = Path("/proc/meminfo")
# With FNHOST_MAX_CONTAINERS=0: one container per this much of the budget (the smallest
# memory_mb a function may have), at most AUTO_MAX_CONTAINERS.
AUTO_CONTAINER_MB = 64
AUTO_MAX_CONTAINERS = 1024


def host_memory_mb(meminfo: Path = MEMINFO) -> int:
    """The host's total memory in MB: /proc/meminfo's MemTotal, else sysconf."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)


def budget_mb(settings: Settings, meminfo: Path = MEMINFO) -> int:
    """FNHOST_HOST_MEMORY_MB, or AUTO_SHARE of the host's memory when it is 0."""
    if settings.host_memory_mb:
        return settings.host_memory_mb
    return int(host_memory_mb(meminfo) * AUTO_SHARE)


def max_containers(settings: Settings, budget: int) -> int:
    """FNHOST_MAX_CONTAINERS, or, when it is 0, as many of the smallest containers as the
    memory budget holds: idle containers cost the host memory, not CPU, so the budget
    is what bounds them (and still does, for containers of more memory)."""
    if settings.max_containers:
        return settings.max_containers
    return max(1, min(AUTO_MAX_CONTAINERS, budget // AUTO_CONTAINER_MB))
