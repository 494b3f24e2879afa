"""FairSlots (runtime/flow/slots.py): the outbox's caps, the turns tenants take when slots
are scarce, and the bounds on what waits."""

from __future__ import annotations

import random

import pytest

from runtime.flow.slots import FairSlots


def slots(total: int = 4, per_tenant: int = 2, per_destination: int = 2, max_waiting: int = 8
          ) -> FairSlots[str]:
    return FairSlots(total, per_tenant, per_destination, max_waiting)


def offer_all(s: FairSlots[str], tenant: str, items: list[str], destination: str = "h") -> list[str]:
    """Offer `items`; returns those refused or pushed out."""
    return [out for item in items if (out := s.offer(item, tenant, destination)) is not None]


def test_a_tenant_takes_its_slots_and_no_more() -> None:
    s = slots(total=4, per_tenant=2)
    assert offer_all(s, "a", ["a1", "a2", "a3"], destination="h") == []
    assert offer_all(s, "a", ["a4"], destination="other host") == []
    assert s.grant() == ["a1", "a2"]
    assert (s.running_of("a"), s.waiting_of("a")) == (2, 2)
    s.done("a1")
    assert s.grant() == ["a3"]  # its own next one, once one of its slots is free
    assert s.grant() == []


def test_another_tenant_starts_at_once_beside_a_tenant_at_its_cap() -> None:
    s = slots(total=4, per_tenant=2)
    offer_all(s, "a", ["a1", "a2", "a3", "a4"])
    assert s.grant() == ["a1", "a2"]
    assert s.offer("b1", "b", "h") is None  # the same destination name: another tenant's
    assert s.grant() == ["b1"]


def test_tenants_take_turns_when_slots_are_scarce() -> None:
    s = slots(total=2, per_tenant=2, per_destination=8)
    offer_all(s, "a", ["a1", "a2", "a3", "a4"])
    assert s.grant() == ["a1", "a2"]
    s.offer("b1", "b", "h")
    s.offer("c1", "c", "h")
    granted = []
    for running in ["a1", "a2", "a3", "b1", "c1"]:
        s.done(running)
        granted += s.grant()
    # a3 queued first; then B and C before A's next, however many A has waiting.
    assert granted == ["a3", "b1", "c1", "a4"]


def test_a_destination_at_its_cap_lets_the_tenant_s_other_destinations_by() -> None:
    s = slots(total=8, per_tenant=4, per_destination=1)
    offer_all(s, "a", ["h1", "h2"], destination="hanging")
    s.offer("o1", "a", "other")
    assert s.grant() == ["h1", "o1"]
    s.done("o1")
    assert s.grant() == []
    s.done("h1")
    assert s.grant() == ["h2"]


def test_a_full_backlog_of_its_own_refuses_the_next() -> None:
    s = slots(total=8, per_tenant=2, per_destination=2)
    assert offer_all(s, "a", ["a1", "a2", "a3", "a4", "a5"]) == ["a5"]  # 2 running, 2 waiting
    assert offer_all(s, "a", ["x1"], destination="another") == ["x1"]  # the tenant's backlog
    s2 = slots(total=8, per_tenant=4, per_destination=1)
    assert offer_all(s2, "a", ["d1", "d2", "d3"]) == ["d3"]  # the destination's backlog
    assert offer_all(s2, "a", ["e1"], destination="e") == []


def test_past_max_waiting_the_heaviest_tenant_makes_room() -> None:
    s = slots(total=1, per_tenant=4, per_destination=4, max_waiting=4)
    assert offer_all(s, "a", ["a0", "a1", "a2", "a3", "a4"]) == []  # a0 runs, 4 wait
    assert s.grant() == ["a0"]
    assert s.offer("b1", "b", "h") == "a4"  # A's newest goes back
    assert s.offer("c1", "c", "h") == "a3"
    assert s.offer("b2", "b", "h") == "b2"  # A has 2 and B 1: B would not be lighter
    assert (s.waiting, s.waiting_of("a"), s.waiting_of("b"), s.waiting_of("c")) == (4, 2, 1, 1)


def test_done_frees_a_waiting_place_and_is_idempotent() -> None:
    s = slots(total=1, per_tenant=1)
    offer_all(s, "a", ["a1", "a2"])
    assert s.grant() == ["a1"]
    s.done("a2")  # gave up waiting
    s.done("a2")
    s.done("a1")
    assert s.grant() == [] and (s.running, s.waiting) == (0, 0)
    s.offer("b1", "b", "h")
    with pytest.raises(ValueError):
        s.offer("b1", "b", "h")


def test_an_item_done_before_its_grant_is_not_granted() -> None:
    s = slots()
    s.offer("a1", "a", "h")
    s.done("a1")
    assert s.grant() == [] and s.running == 0


def test_random_offers_and_ends_keep_every_cap_and_lose_nothing() -> None:
    rng = random.Random(7)
    s = FairSlots[str](total=6, per_tenant=3, per_destination=2, max_waiting=6)
    running: set[str] = set()
    waiting: set[str] = set()
    where: dict[str, tuple[str, str]] = {}
    for n in range(5000):
        if rng.random() < 0.55:
            item = f"i{n}"
            where[item] = (f"t{rng.randrange(5)}", f"d{rng.randrange(3)}")
            out = s.offer(item, *where[item])
            waiting.add(item)
            if out is not None:
                waiting.discard(out)
        elif running or waiting:
            item = rng.choice(sorted(running | waiting))
            s.done(item)
            running.discard(item)
            waiting.discard(item)
        for item in s.grant():
            assert item in waiting, item
            waiting.discard(item)
            running.add(item)
        assert (s.running, s.waiting) == (len(running), len(waiting))
        assert len(running) <= 6 and len(waiting) <= 6
        for tenant in {t for t, _ in where.values()}:
            assert sum(where[i][0] == tenant for i in running) <= 3
        for key in set(where.values()):
            assert sum(where[i] == key for i in running) <= 2
        if len(running) < 6:  # a free slot: whatever waits, waits for a cap of its own
            for item in waiting:
                tenant, destination = where[item]
                assert (sum(where[i][0] == tenant for i in running) == 3
                        or sum(where[i] == (tenant, destination) for i in running) == 2)
