"""Which schedulers are alive, and which one owns a tenant.

Schedulers announce themselves on the control bus every `heartbeat_s`. A
tenant's owner is chosen by rendezvous hashing over the live schedulers, so
every gateway agrees without coordination, and a scheduler joining or leaving
moves only the tenants it wins or held.

Heartbeats stop when the control bus does (a broker restart), though the
schedulers still serve sync invocations over the direct hop. So a member whose
heartbeat is late is probed over the hop (`overdue`, `answered`): one that
answers stays live, and the set of live schedulers, hence every tenant's owner,
does not change under a broker outage.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from runtime import constants as c

# A member neither heard nor answering for this long is dropped (and probed no more).
FORGET_AFTER_S = 300.0


@dataclass
class Member:
    id: str
    last_seen: float  # its last heartbeat on the control bus
    info: dict[str, Any] = field(default_factory=dict)
    answered: float = float("-inf")  # its last answer to a probe over the direct hop

    @property
    def seen(self) -> float:
        return max(self.last_seen, self.answered)


def rendezvous(key: str, members: list[str]) -> str | None:
    """The member with the highest hash of (key, member): a pure function."""
    best, best_score = None, b""
    for member in members:
        score = hashlib.blake2b(f"{key}\x00{member}".encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = member, score
    return best


def owners(key: str, members: list[str], k: int) -> list[str]:
    """The `k` members with the highest hashes of (key, member), best first."""
    scored = sorted(
        members,
        key=lambda m: hashlib.blake2b(f"{key}\x00{m}".encode(), digest_size=8).digest(),
        reverse=True,
    )
    return scored[:k]


class Membership:
    def __init__(self, heartbeat_s: float, clock: Any = time.monotonic, cluster: str | None = None) -> None:
        self._ttl = heartbeat_s * 3
        self._late = heartbeat_s * 1.5
        self._cluster = cluster
        self._clock = clock
        self._members: dict[str, Member] = {}
        self._owners: dict[str, str] = {}
        self._live: tuple[str, ...] = ()

    def on_control(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if self._cluster is not None and event.get("cluster", self._cluster) != self._cluster:
            return  # another cluster sharing this broker
        if kind == c.CTL_HEARTBEAT:
            sid = str(event["scheduler"])
            known = self._members.get(sid)
            answered = known.answered if known is not None else float("-inf")
            self._members[sid] = Member(sid, self._clock(), event, answered)
        elif kind == c.CTL_SCHEDULER_DOWN:
            self._members.pop(str(event["scheduler"]), None)

    def live(self) -> list[Member]:
        now = self._clock()
        return [m for m in self._members.values() if now - m.seen <= self._ttl]

    def overdue(self) -> list[Member]:
        """Members whose heartbeat is late, to probe over the direct hop; members not
        heard from nor answering for FORGET_AFTER_S are dropped."""
        now = self._clock()
        for sid in [m.id for m in self._members.values() if now - m.seen > FORGET_AFTER_S]:
            del self._members[sid]
        return [m for m in self._members.values() if now - m.last_seen > self._late]

    def answered(self, scheduler_id: str) -> None:
        """The scheduler answered a probe over the direct hop: it is alive."""
        member = self._members.get(scheduler_id)
        if member is not None:
            member.answered = self._clock()

    def address(self, scheduler_id: str) -> str | None:
        member = self._members.get(scheduler_id)
        return None if member is None else member.info.get("address")

    def owner(self, tenant: str) -> str | None:
        live = tuple(sorted(m.id for m in self.live()))
        if live != self._live:
            self._live, self._owners = live, {}
        owner = self._owners.get(tenant)
        if owner is None:
            owner = rendezvous(tenant, list(live))
            if owner is not None:
                self._owners[tenant] = owner
        return owner
