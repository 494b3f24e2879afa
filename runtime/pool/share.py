"""Sharing one host's containers between tenants: pure functions over the pool.

A container takes a part of its host: the larger of its part of the memory budget
and its part of the container count (one of FNHOST_MAX_CONTAINERS), whichever fills
first. A tenant's hold on a host is the sum of those parts over the containers bound
to its functions (starting, loading, busy or idle), and holding it over time is what
a tenant costs: shares are max-min fair in containers held, not in invocation counts.
A tenant may take the whole host while no other tenant waits; once another waits, the
tenant holding an equal share or more of the tenants that hold or want containers
gives way:

- it starts no new container (its warm ones still serve it);
- a container it releases is removed, not kept warm, so the waiter gets the room;
- its idle containers are evicted for a tenant holding less, never the other way
  round: making room never takes a smaller tenant's warm container.

FNHOST_TENANT_HOST_SHARE caps any one tenant's hold on a host, waiters or not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runtime.pool.container import Container, State

BOUND = frozenset({State.STARTING, State.SPECIALISING, State.READY, State.BUSY})


@dataclass(frozen=True)
class Host:
    budget_mb: int
    max_containers: int

    def part(self, memory_mb: int, count: int = 1) -> float:
        """The part of the host `count` containers of `memory_mb` in all take."""
        return max(memory_mb / max(1, self.budget_mb), count / max(1, self.max_containers))


def held(containers: Iterable[Container], host: Host) -> defaultdict[str, float]:
    """The part of the host held by each tenant's bound containers."""
    out: defaultdict[str, float] = defaultdict(float)
    for c in containers:
        if c.key is not None and c.state in BOUND:
            out[c.key.tenant] += host.part(c.memory_mb)
    return out


def equal_share(holding: Mapping[str, float], waiting: Mapping[str, int]) -> float:
    """An equal split of the host between the tenants that hold or want containers."""
    tenants = {t for t, part in holding.items() if part > 0} | {t for t, n in waiting.items() if n > 0}
    return 1.0 / max(1, len(tenants))


def gives_way(tenant: str, holding: Mapping[str, float], waiting: Mapping[str, int]) -> bool:
    """Whether `tenant` must leave room to others: another tenant waits for capacity
    and `tenant` holds at least an equal share."""
    if not any(n > 0 for t, n in waiting.items() if t != tenant):
        return False
    return holding.get(tenant, 0.0) >= equal_share(holding, waiting) - 1e-9


def over_cap(tenant: str, need: float, holding: Mapping[str, float], host_share: float) -> bool:
    """Whether `need` more of the host would put `tenant` over FNHOST_TENANT_HOST_SHARE."""
    return host_share < 1.0 and holding.get(tenant, 0.0) + need > host_share + 1e-9


def may_evict(victim: Container, requester: str | None, holding: defaultdict[str, float], need: float,
              host: Host) -> bool:
    """Whether `victim`, an idle container, may go to make `need` of room for
    `requester` (None: for the stem-cell reserve), given the current holdings (which the
    caller updates as it chooses). A tenant's own containers may always go; another
    tenant's only while that tenant still holds at least as much as the requester once
    both moves are made (so two tenants never take turns evicting each other), and for
    the reserve only from the tenant holding the most (a tenant alone included)."""
    assert victim.key is not None
    owner = victim.key.tenant
    if owner == requester:
        return True
    if requester is None:
        return holding[owner] >= max(holding.values()) - 1e-9
    return holding[owner] - host.part(victim.memory_mb) >= holding[requester] + need - 1e-9
