"""Fair slots: attempts in flight at once, shared between tenants so that none takes them all.

The outbox (runtime/outbox.py) runs at most `total` attempts at once, of them at most
`per_tenant` for one tenant and `per_destination` to one destination of a tenant (a
webhook's host, whatever its path and query). An item that cannot start for a cap
waits here, without a slot; when slots are scarce they go round the tenants with
waiting items, one at a time, so a tenant with many items takes its turn like one
with a single item.

Waiting is bounded too: per tenant as many as its slots, per destination as many as
its cap, and `max_waiting` in all (past that, an item of the tenant with the most
waiting makes room for one of a tenant with fewer). An item refused or pushed out is
the caller's to keep elsewhere (the outbox puts its timer back for later).

Pure: no I/O and no clock, so it is tested on its own.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class FairSlots(Generic[T]):
    """`offer` an item with its tenant and destination, start what `grant` returns, and
    call `done` once it is over (or given up while waiting); `grant` after each `offer`
    and `done`, so that what waits is only what its caps hold back."""

    def __init__(self, total: int, per_tenant: int, per_destination: int, max_waiting: int) -> None:
        if min(total, per_tenant, per_destination, max_waiting) < 1:
            raise ValueError("every bound must be at least 1")
        self.total = total
        self.per_tenant = per_tenant
        self.per_destination = per_destination
        self.max_waiting = max_waiting
        self._where: dict[T, tuple[str, str]] = {}  # item -> (tenant, destination)
        self._running: set[T] = set()
        self._running_by: Counter[str] = Counter()  # tenant, and destination, -> running
        # Tenants with waiting items, in turn order: the next turn goes to the first that can start.
        self._turns: OrderedDict[str, deque[T]] = OrderedDict()
        self._waiting_by: Counter[str] = Counter()  # destination -> waiting
        self._waiting = 0
        self._started: list[T] = []  # started by `offer`, returned by the next `grant`

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._waiting

    def running_of(self, tenant: str) -> int:
        return self._running_by[_tenant(tenant)]

    def waiting_of(self, tenant: str) -> int:
        return len(self._turns.get(tenant, ()))

    def offer(self, item: T, tenant: str, destination: str) -> T | None:
        """Start `item` (the next `grant` returns it) or let it wait; returns the item
        that finds no room to wait, this one or another pushed out for it, else None.
        `destination` names it within its tenant's."""
        if item in self._where:
            raise ValueError("offered twice")
        destination = _destination(tenant, destination)
        if len(self._running) < self.total and self._may_start(tenant, destination):
            # Room for it now: every waiting item waits for caps of its own.
            self._where[item] = (tenant, destination)
            self._start(item)
            self._started.append(item)
            return None
        queue = self._turns.get(tenant)
        waiting = len(queue) if queue is not None else 0
        if waiting >= self.per_tenant or self._waiting_by[destination] >= self.per_destination:
            return item  # its tenant's (or destination's) own backlog is full
        pushed: T | None = None
        if self._waiting >= self.max_waiting:
            heaviest = max(self._turns, key=lambda t: len(self._turns[t]))
            if len(self._turns[heaviest]) <= waiting + 1:
                return item  # no tenant waits with more than this one would
            pushed = self._turns[heaviest][-1]
            self._forget(pushed)
        self._where[item] = (tenant, destination)
        self._turns.setdefault(tenant, deque()).append(item)
        self._waiting_by[destination] += 1
        self._waiting += 1
        return pushed

    def grant(self) -> list[T]:
        """The items that start now, each counted as running until `done`."""
        started, self._started = self._started, []
        while len(self._running) < self.total and (chosen := self._next()) is not None:
            tenant = self._where[chosen][0]
            self._unqueue(chosen)
            if tenant in self._turns:
                self._turns.move_to_end(tenant)  # its next item waits for the others' turns
            self._start(chosen)
            started.append(chosen)
        return started

    def _next(self) -> T | None:
        """The first item that may start, of the first tenant in turn that has one."""
        for tenant, queue in self._turns.items():
            if self._running_by[_tenant(tenant)] >= self.per_tenant:
                continue
            for item in queue:
                if self._running_by[self._where[item][1]] < self.per_destination:
                    return item
        return None

    def done(self, item: T) -> None:
        """`item` is over, or gives up waiting: its slot (or its place) is free. Idempotent."""
        if item in self._where:
            self._forget(item)

    def _may_start(self, tenant: str, destination: str) -> bool:
        return (self._running_by[_tenant(tenant)] < self.per_tenant
                and self._running_by[destination] < self.per_destination)

    def _start(self, item: T) -> None:
        tenant, destination = self._where[item]
        self._running.add(item)
        self._running_by[_tenant(tenant)] += 1
        self._running_by[destination] += 1

    def _unqueue(self, item: T) -> None:
        tenant, destination = self._where[item]
        queue = self._turns[tenant]
        queue.remove(item)
        if not queue:
            del self._turns[tenant]
        _decrement(self._waiting_by, destination)
        self._waiting -= 1

    def _forget(self, item: T) -> None:
        tenant, destination = self._where[item]
        if item in self._running:
            self._running.discard(item)
            _decrement(self._running_by, _tenant(tenant))
            _decrement(self._running_by, destination)
            if item in self._started:
                self._started.remove(item)
        else:
            self._unqueue(item)
        del self._where[item]


def _tenant(tenant: str) -> str:
    return f"t {tenant}"


def _destination(tenant: str, destination: str) -> str:
    return f"d {tenant} {destination}"


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
