"""max_rate: GCRA, leases of tokens, the compare-and-set store and the gateway's limiter
(two limiters on one store are two gateways). Time is injected."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from gateway.throttle import RateLimiter, check_rate
from runtime.flow.rate import LEASE_S, Grant, Lease, burst, take
from runtime.models import FunctionConfig
from runtime.store.rates import MAX_ATTEMPTS, RateStore
from tests.clock import Clock

# -- GCRA ------------------------------------------------------------------------------


def test_an_idle_bucket_holds_a_seconds_worth() -> None:
    grant = take(None, 100.0, 5.0, 100)
    assert grant.tokens == 5 and grant.tat == pytest.approx(101.0)
    empty = take(grant.tat, 100.0, 5.0, 1)
    assert empty.tokens == 0 and empty.wait_s == pytest.approx(0.2)
    assert take(grant.tat, 100.2, 5.0, 10).tokens == 1  # one interval later: one more


def test_a_long_idle_bucket_is_only_full() -> None:
    assert take(10.0, 1000.0, 5.0, 100).tokens == 5


def test_partial_grants_and_want() -> None:
    grant = take(None, 0.0, 10.0, 3)
    assert grant.tokens == 3 and grant.tat == pytest.approx(0.3)
    assert take(grant.tat, 0.0, 10.0, 100).tokens == 7


def test_slow_rates_hold_one_token() -> None:
    assert burst(0.5) == 1.0
    grant = take(None, 0.0, 0.5, 10)
    assert grant.tokens == 1
    refused = take(grant.tat, 0.5, 0.5, 1)
    assert refused.tokens == 0 and refused.wait_s == pytest.approx(1.5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        take(None, 0.0, 0.0, 1)
    with pytest.raises(ValueError):
        take(None, 0.0, 1.0, 0)


@pytest.mark.parametrize("rate", [0.7, 5.0, 123.0])
def test_never_more_than_burst_plus_rate_times_t(rate: float) -> None:
    rng = random.Random(3)
    tat: float | None = None
    now, admitted = 0.0, 0
    while now < 20:
        now += rng.expovariate(rate * 4)  # offered at four times the rate
        grant = take(tat, now, rate, rng.randint(1, 4))
        if grant.tokens:
            tat = grant.tat
            admitted += grant.tokens
            assert admitted <= burst(rate) + rate * now + 1e-6
    # and the rate is used: a token due while nobody asks waits for the next request
    assert admitted >= rate * 20 * 0.8


# -- leases ----------------------------------------------------------------------------


def test_a_lease_is_spent_locally_then_expires() -> None:
    lease = Lease(0.0)
    assert lease.spend(0.0) is None  # nothing leased yet: ask the bucket
    lease.refill(Grant(3, 5.0), 0.0)
    assert lease.known_tat == 5.0
    assert lease.spend(0.01) == 0 and lease.spend(0.02) == 0
    assert lease.spend(0.03) is None
    lease.refill(Grant(4, 6.0), 0.03)
    assert lease.spend(0.03 + LEASE_S) is None  # expired, its tokens lost


def test_a_refused_lease_refuses_locally_until_the_next_token() -> None:
    lease = Lease(0.0)
    lease.refill(Grant(0, 7.0, 0.25), 1.0)
    assert lease.spend(1.1) == pytest.approx(0.15)
    assert lease.spend(1.25) is None


def test_lease_size_follows_local_demand() -> None:
    lease = Lease(0.0)
    assert lease.want(1000.0) == 1
    for i in range(50):  # 100 requests a second for half a second
        lease.spend(i * 0.01)
    assert lease.want(1000.0) == 10  # one 0.1 s lease period of it
    assert lease.want(40.0) == 4  # at most a lease period's worth of the rate
    assert lease.want(2.0) == 1
    for _ in range(30):  # a burst within the current period counts at once
        lease.spend(0.55)
    assert lease.want(1000.0) == 30


# -- the store: compare-and-set on _id -----------------------------------------------------


class FakeRates:
    """A `rates` collection in memory, with MongoDB's answers; `interfere` moves a
    document between a read and the write, as another gateway would."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.interfere = 0

    async def find_one(self, filter_: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append("find")
        doc = self.docs.get(filter_["_id"])
        if doc is not None and self.interfere:
            self.interfere -= 1
            self.docs[filter_["_id"]] = {**doc, "tat": doc["tat"] + 0.001}
        return None if doc is None else dict(doc)

    async def insert_one(self, doc: dict[str, Any]) -> None:
        self.calls.append("insert")
        if doc["_id"] in self.docs:
            raise DuplicateKeyError("E11000 duplicate key")
        self.docs[doc["_id"]] = dict(doc)

    async def update_one(self, filter_: dict[str, Any], update: dict[str, Any]) -> Any:
        self.calls.append("update")
        doc = self.docs.get(filter_["_id"])
        if doc is None or doc["tat"] != filter_["tat"]:
            return SimpleNamespace(matched_count=0)
        doc.update(update["$set"])
        return SimpleNamespace(matched_count=1)


def store_on(rates: FakeRates) -> RateStore:
    return RateStore(SimpleNamespace(db=SimpleNamespace(get_collection=lambda _name: rates)))  # type: ignore[arg-type]


async def test_store_creates_then_compares_and_sets() -> None:
    rates = FakeRates()
    store = store_on(rates)
    first = await store.take("t/f", 5.0, 2, 100.0, None)
    assert first.tokens == 2 and rates.docs["t/f"]["tat"] == first.tat
    assert rates.calls == ["find", "insert"]
    second = await store.take("t/f", 5.0, 2, 100.0, first.tat)  # seen: no read
    assert second.tokens == 2 and rates.calls[2:] == ["update"]
    refused = await store.take("t/f", 5.0, 2, 100.0, second.tat)
    assert refused.tokens == 1  # the fifth token of the burst
    nothing = await store.take("t/f", 5.0, 1, 100.0, rates.docs["t/f"]["tat"])
    assert nothing.tokens == 0 and nothing.wait_s == pytest.approx(0.2)
    assert rates.calls[-1] == "update"  # a refusal writes nothing


async def test_store_reads_again_after_losing_a_race() -> None:
    rates = FakeRates()
    store = store_on(rates)
    rates.docs["t/f"] = {"_id": "t/f", "tat": 50.0}
    grant = await store.take("t/f", 5.0, 1, 100.0, 40.0)  # what it saw is old
    assert grant.tokens == 1 and rates.calls == ["update", "find", "update"]
    # Another gateway creates the document between this one's read (none) and its insert.
    rates.calls.clear()

    async def racing_find(filter_: dict[str, Any]) -> dict[str, Any] | None:
        rates.calls.append("find")
        if filter_["_id"] not in rates.docs and "insert" not in rates.calls:
            rates.docs[filter_["_id"]] = {"_id": filter_["_id"], "tat": 99.0}
            return None
        return dict(rates.docs[filter_["_id"]])

    rates.find_one = racing_find  # type: ignore[method-assign]
    grant = await store.take("t/new", 5.0, 1, 100.0, None)
    assert grant.tokens == 1 and rates.calls == ["find", "insert", "find", "update"]


async def test_store_gives_up_after_losing_every_race() -> None:
    rates = FakeRates()
    store = store_on(rates)
    rates.docs["t/f"] = {"_id": "t/f", "tat": 50.0}
    rates.interfere = 100  # every read is overtaken before the write
    grant = await store.take("t/f", 5.0, 1, 100.0, None)
    assert grant.tokens == 0 and grant.wait_s == 0
    assert rates.calls.count("update") == MAX_ATTEMPTS


# -- the gateway's limiter -----------------------------------------------------------------


async def test_two_gateways_share_one_bucket() -> None:
    rates, clock = FakeRates(), Clock(1_000_000.0)
    gateways = [RateLimiter(store_on(rates), clock), RateLimiter(store_on(rates), clock)]
    start, admitted = clock.now, 0
    for i in range(3000):  # 1,000 requests a second, alternating, for 3 s
        clock.now = start + i * 0.001
        if await gateways[i % 2].admit("t", "f", 5.0) is None:
            admitted += 1
    assert 5 * 3 <= admitted <= burst(5.0) + 5 * 3 + 1
    # A refusal is mostly answered from what the lease knows: far fewer round trips than
    # requests.
    assert len(rates.calls) < 300


async def test_round_trips_follow_leases_not_requests() -> None:
    rates, clock = FakeRates(), Clock(1_000_000.0)
    limiter = RateLimiter(store_on(rates), clock)
    start, admitted = clock.now, 0
    for i in range(1000):  # 500 a second for 2 s, under a max_rate of 1,000
        clock.now = start + i * 0.002
        admitted += await limiter.admit("t", "f", 1000.0) is None
    assert admitted == 1000
    assert len(rates.calls) < 60  # about one per lease period (0.1 s), not 1,000


@pytest.mark.parametrize(("rate", "round_trips", "admitted"), [
    (1000.0, 2, 20),  # the first asks for itself; the next asks for all who wait
    (5.0, 6, 5),  # a slow rate leases one token at a time; one refusal for the rest
])
async def test_one_refill_in_flight_per_function(rate: float, round_trips: int, admitted: int) -> None:
    rates, clock = FakeRates(), Clock(1_000_000.0)
    release = asyncio.Event()
    store = store_on(rates)
    original = store.take
    calls = 0

    async def slow_take(*args: Any) -> Grant:
        nonlocal calls
        calls += 1
        await release.wait()
        return await original(*args)

    store.take = slow_take  # type: ignore[method-assign]
    limiter = RateLimiter(store, clock)
    waiting = [asyncio.ensure_future(limiter.admit("t", "f", rate)) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiting)
    assert calls == round_trips
    assert sum(r is None for r in results) == admitted


async def test_a_function_without_max_rate_costs_nothing() -> None:
    class Untouchable:
        async def admit(self, *args: Any) -> float | None:
            raise AssertionError("no max_rate: the limiter must not be asked")

    record: Any = SimpleNamespace(tenant="t", name="f", config=FunctionConfig())
    await check_rate(Untouchable(), record, "Event")  # type: ignore[arg-type]
