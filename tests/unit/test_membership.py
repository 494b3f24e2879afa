"""Scheduler membership: rendezvous ownership and heartbeat liveness on a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from runtime import constants as c
from runtime.broker.membership import FORGET_AFTER_S, Membership, rendezvous

MEMBERS = ["sched-a", "sched-b", "sched-c", "sched-d"]
TENANTS = [f"tenant-{i}" for i in range(1000)]
HEARTBEAT_S = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def heartbeat(scheduler: str) -> dict[str, object]:
    return {"kind": c.CTL_HEARTBEAT, "scheduler": scheduler}


def down(scheduler: str) -> dict[str, object]:
    return {"kind": c.CTL_SCHEDULER_DOWN, "scheduler": scheduler}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def membership(clock: FakeClock) -> Membership:
    return Membership(HEARTBEAT_S, clock=clock)


def live_ids(membership: Membership) -> set[str]:
    return {m.id for m in membership.live()}


# rendezvous


def test_rendezvous_no_members() -> None:
    assert rendezvous("acme", []) is None


def test_rendezvous_single_member() -> None:
    assert rendezvous("acme", ["only"]) == "only"


def test_rendezvous_is_deterministic() -> None:
    first = [rendezvous(t, MEMBERS) for t in TENANTS]
    second = [rendezvous(t, list(MEMBERS)) for t in TENANTS]
    assert first == second


def test_rendezvous_ignores_member_order() -> None:
    reordered = list(reversed(MEMBERS))
    for tenant in TENANTS:
        assert rendezvous(tenant, MEMBERS) == rendezvous(tenant, reordered)


def test_rendezvous_spreads_tenants_evenly() -> None:
    counts = Counter(rendezvous(t, MEMBERS) for t in TENANTS)
    assert set(counts) == set(MEMBERS)
    for member, count in counts.items():
        assert 150 <= count <= 350, (member, count)


@pytest.mark.parametrize("gone", MEMBERS)
def test_removing_a_member_moves_only_its_tenants(gone: str) -> None:
    before = {t: rendezvous(t, MEMBERS) for t in TENANTS}
    remaining = [m for m in MEMBERS if m != gone]
    after = {t: rendezvous(t, remaining) for t in TENANTS}
    for tenant in TENANTS:
        if before[tenant] == gone:
            assert after[tenant] in remaining
        else:
            assert after[tenant] == before[tenant], tenant
    assert any(owner == gone for owner in before.values())


def test_adding_a_member_moves_only_tenants_it_wins() -> None:
    before = {t: rendezvous(t, MEMBERS) for t in TENANTS}
    grown = [*MEMBERS, "sched-e"]
    after = {t: rendezvous(t, grown) for t in TENANTS}
    moved = [t for t in TENANTS if after[t] != before[t]]
    assert moved
    assert all(after[t] == "sched-e" for t in moved)


# Membership


def test_no_members_at_start(membership: Membership) -> None:
    assert membership.live() == []
    assert membership.owner("acme") is None


def test_heartbeat_makes_a_member_live(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    [member] = membership.live()
    assert member.id == "sched-a"
    assert member.last_seen == clock.now
    assert member.info["kind"] == c.CTL_HEARTBEAT
    assert membership.owner("acme") == "sched-a"


def test_member_expires_after_three_heartbeat_intervals(
    membership: Membership, clock: FakeClock
) -> None:
    membership.on_control(heartbeat("sched-a"))
    clock.advance(3 * HEARTBEAT_S)
    assert live_ids(membership) == {"sched-a"}
    clock.advance(0.001)
    assert membership.live() == []
    assert membership.owner("acme") is None


def test_heartbeat_keeps_a_member_alive(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    for _ in range(10):
        clock.advance(2 * HEARTBEAT_S)
        membership.on_control(heartbeat("sched-a"))
        assert live_ids(membership) == {"sched-a"}


def test_expired_member_comes_back_with_a_heartbeat(
    membership: Membership, clock: FakeClock
) -> None:
    membership.on_control(heartbeat("sched-a"))
    clock.advance(10 * HEARTBEAT_S)
    assert membership.live() == []
    membership.on_control(heartbeat("sched-a"))
    assert live_ids(membership) == {"sched-a"}


def test_scheduler_down_removes_at_once(membership: Membership) -> None:
    membership.on_control(heartbeat("sched-a"))
    membership.on_control(heartbeat("sched-b"))
    membership.on_control(down("sched-a"))
    assert live_ids(membership) == {"sched-b"}


def test_scheduler_down_for_unknown_member_is_ignored(membership: Membership) -> None:
    membership.on_control(heartbeat("sched-a"))
    membership.on_control(down("sched-z"))
    assert live_ids(membership) == {"sched-a"}


def test_other_control_events_are_ignored(membership: Membership) -> None:
    membership.on_control({"kind": c.CTL_FUNCTION, "tenant": "acme", "name": "resize"})
    membership.on_control({})
    assert membership.live() == []


def test_owner_matches_rendezvous(membership: Membership) -> None:
    for member in MEMBERS:
        membership.on_control(heartbeat(member))
    for tenant in TENANTS[:200]:
        assert membership.owner(tenant) == rendezvous(tenant, MEMBERS)


def test_owner_changes_when_owner_goes_down(membership: Membership) -> None:
    for member in MEMBERS:
        membership.on_control(heartbeat(member))
    owner = membership.owner("acme")
    assert owner in MEMBERS
    membership.on_control(down(str(owner)))
    remaining = [m for m in MEMBERS if m != owner]
    new_owner = membership.owner("acme")
    assert new_owner != owner
    assert new_owner == rendezvous("acme", remaining)


def test_owner_changes_when_owner_expires(membership: Membership, clock: FakeClock) -> None:
    for member in MEMBERS:
        membership.on_control(heartbeat(member))
    owner = membership.owner("acme")
    clock.advance(2 * HEARTBEAT_S)
    for member in MEMBERS:
        if member != owner:
            membership.on_control(heartbeat(member))
    clock.advance(2 * HEARTBEAT_S)
    remaining = [m for m in MEMBERS if m != owner]
    assert live_ids(membership) == set(remaining)
    assert membership.owner("acme") == rendezvous("acme", remaining)


def test_owner_returns_when_member_rejoins(membership: Membership) -> None:
    for member in MEMBERS:
        membership.on_control(heartbeat(member))
    owner = membership.owner("acme")
    membership.on_control(down(str(owner)))
    assert membership.owner("acme") != owner
    membership.on_control(heartbeat(str(owner)))
    assert membership.owner("acme") == owner


def test_owner_is_none_when_every_member_leaves(membership: Membership) -> None:
    membership.on_control(heartbeat("sched-a"))
    assert membership.owner("acme") == "sched-a"
    membership.on_control(down("sched-a"))
    assert membership.owner("acme") is None


# Probes over the direct hop (the control bus quiet)


def test_a_late_member_is_overdue(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    membership.on_control(heartbeat("sched-b"))
    clock.advance(1.5 * HEARTBEAT_S)
    membership.on_control(heartbeat("sched-b"))
    assert [m.id for m in membership.overdue()] == []
    clock.advance(0.001)
    assert [m.id for m in membership.overdue()] == ["sched-a"]


def test_a_member_answering_probes_stays_live_without_heartbeats(
    membership: Membership, clock: FakeClock
) -> None:
    membership.on_control(heartbeat("sched-a"))
    owner = membership.owner("acme")
    for _ in range(100):
        clock.advance(HEARTBEAT_S)
        for member in membership.overdue():
            membership.answered(member.id)
        assert live_ids(membership) == {"sched-a"}
    assert membership.owner("acme") == owner == "sched-a"


def test_a_member_that_stops_answering_expires(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    clock.advance(5 * HEARTBEAT_S)
    membership.answered("sched-a")
    clock.advance(3 * HEARTBEAT_S)
    assert live_ids(membership) == {"sched-a"}
    clock.advance(0.001)
    assert membership.live() == []
    assert membership.owner("acme") is None


def test_heartbeats_back_after_probes(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    clock.advance(5 * HEARTBEAT_S)
    membership.answered("sched-a")
    membership.on_control(heartbeat("sched-a"))
    assert membership.overdue() == []
    assert live_ids(membership) == {"sched-a"}


def test_an_unknown_or_departed_member_is_not_revived_by_a_probe(
    membership: Membership,
) -> None:
    membership.answered("sched-z")
    membership.on_control(heartbeat("sched-a"))
    membership.on_control(down("sched-a"))
    membership.answered("sched-a")
    assert membership.live() == []


def test_a_member_silent_for_long_is_forgotten(membership: Membership, clock: FakeClock) -> None:
    membership.on_control(heartbeat("sched-a"))
    clock.advance(FORGET_AFTER_S)
    assert [m.id for m in membership.overdue()] == ["sched-a"]
    clock.advance(0.001)
    assert membership.overdue() == []
    membership.answered("sched-a")
    assert membership.live() == []
