"""A function's `max_rate`: GCRA, a token bucket kept as one number, shared by every gateway.

GCRA (the generic cell rate algorithm) keeps a function's bucket as its
theoretical arrival time `tat`: the time at which the bucket would be full
again. With an emission interval T = 1 / rate and a bucket of `burst` tokens
(tolerance tau = burst * T), k tokens can be taken at `now` while

    max(tat, now) + k * T <= now + tau,

and taking them moves `tat` to max(tat, now) + k * T. One number per function is
what makes it cheap to share: the gateways keep it in MongoDB and change it by
compare-and-set (runtime/store/rates.py).

The bucket holds one second's worth of invocations (at least one), so after a
quiet second a burst of `max_rate` is admitted at once; over any span of t
seconds, at most max_rate * (t + 1) tokens are taken, across gateways (and, since
a leased token is spent within LEASE_S of its taking, at most max_rate *
(t + 1 + LEASE_S) invocations admitted).

To keep the database off most requests, a gateway takes tokens in leases
(`Lease`): as many as it used over the last lease period (at most a tenth of a
second's worth, at least one), spent locally until the lease expires; tokens a
lease leaves unused are lost, never handed out later, so leases never let more
through than the bucket allows. A gateway refused a token also remembers when
the next one is due (`tat` only moves forward) and refuses locally until then.

Pure: time comes from the caller; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The bucket holds this many seconds' worth of invocations (at least one).
BURST_S = 1.0
# A lease is spent within this long, and holds at most this long's worth of tokens.
LEASE_S = 0.1
# Absorbs rounding when whole tokens are counted from float times.
EPSILON = 1e-9


def burst(rate: float) -> float:
    """Tokens in a full bucket."""
    return max(1.0, rate * BURST_S)


@dataclass(frozen=True)
class Grant:
    """The outcome of one take: `tokens` taken (0: none) and the bucket's new `tat`;
    with none, `wait_s` until the next token is due."""

    tokens: int
    tat: float
    wait_s: float = 0.0


def take(tat: float | None, now: float, rate: float, want: int) -> Grant:
    """Take up to `want` tokens at `now` from a bucket whose state is `tat` (None: never used)."""
    if rate <= 0 or want < 1:
        raise ValueError("rate > 0 and want >= 1 expected")
    interval = 1.0 / rate
    tolerance = burst(rate) * interval
    start = now if tat is None else max(tat, now)
    tokens = min(want, math.floor((now + tolerance - start) / interval + EPSILON))
    if tokens <= 0:
        return Grant(0, start, max(0.0, start + interval - tolerance - now))
    return Grant(tokens, start + tokens * interval)


class Lease:
    """One gateway's tokens of one function, and what it knows of the shared bucket."""

    __slots__ = ("blocked_until", "demand_per_s", "expires", "known_tat", "tokens", "used", "used_since")

    def __init__(self, now: float) -> None:
        self.tokens = 0
        self.expires = now
        self.blocked_until = now
        self.known_tat: float | None = None  # the stored tat as last seen; None: read it
        # Local demand, to size the next lease: requests in the current period of
        # LEASE_S (at least), and the rate over the last one.
        self.used = 0
        self.used_since = now
        self.demand_per_s = 0.0

    def spend(self, now: float, *, counted: bool = True) -> float | None:
        """0: a token from the lease; above 0: refused locally, seconds until the next
        token is due; None: the lease is spent and the bucket must be asked. `counted`
        False for a second try of the same request (after another one's refill)."""
        if counted:
            if now - self.used_since >= LEASE_S:
                self.demand_per_s = self.used / (now - self.used_since)
                self.used, self.used_since = 0, now
            self.used += 1
        if self.tokens > 0 and now < self.expires:
            self.tokens -= 1
            return 0.0
        if now < self.blocked_until:
            return self.blocked_until - now
        return None

    def want(self, rate: float) -> int:
        """Tokens to ask for: one lease period of the recent demand (or the requests of
        this period so far, if more), at most a lease period's worth of the rate."""
        demand = max(math.ceil(self.demand_per_s * LEASE_S - EPSILON), self.used)
        return max(1, min(demand, math.floor(rate * LEASE_S)))

    def refill(self, grant: Grant, now: float) -> None:
        """What the bucket gave; the request that asked takes the first token."""
        self.known_tat = grant.tat
        if grant.tokens > 0:
            self.tokens = grant.tokens - 1
            self.expires = now + LEASE_S
        else:
            self.tokens = 0
            self.blocked_until = now + grant.wait_s
