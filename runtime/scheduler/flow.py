"""Per-function dispatch on one scheduler: who runs now, who waits, who is set aside.

Every message taken from a queue holds a slot of its function from `admit` to
`leave`: while it waits for a container and runs (its record and destination
hand-off, after, take none). A function has at most its dispatch window of
slots (AIMD, runtime.flow.aimd), never above its max_concurrency or the host's
capacity.

A message from the tenant's queue whose function is at its window waits here
only briefly: when the function holds up its tenant's queue it is *set aside*,
and the caller promotes the function to a dedicated queue and forwards the
message there, so the tenant's other functions keep flowing. The signals, with
thresholds from the settings (as Amazon SQS fair queues mark a noisy group):

- waiting behind its window: `waiting` messages, or the oldest for `wait_s`;
- its messages in hand (at least `inflight`, whether waiting, running or having
  their record written and destination served) hold `share` of what the
  consumer may hold of the tenant's queue (its prefetch): what is behind them in
  the queue waits for them;
- its share of the tenant's messages in hand (at least `inflight` of them, and
  `share` of the tenant's), while another function of the tenant is active;
- its share of the tenant's recent run time (`share`, over `RUN_TIME_TAU_S`),
  while another function of the tenant is active.

A message from a dedicated queue waits for a slot as long as it takes: that
queue holds only its function's messages, and its consumer's prefetch bounds
how many wait here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.flow.aimd import DispatchWindow

# Recent run time decays with this time constant (seconds).
RUN_TIME_TAU_S = 30.0
# Another function of the tenant counts as active for this long after its last message.
ACTIVE_S = 30.0
WAITING, OLDEST_WAIT, WINDOW_SHARE, INFLIGHT_SHARE, RUN_TIME_SHARE = (
    "waiting behind its concurrency", "oldest message waiting", "share of the consumer's window",
    "share of messages in hand", "share of recent run time",
)


@dataclass(frozen=True)
class Thresholds:
    waiting: int = 8
    wait_s: float = 1.0
    inflight: int = 16
    share: float = 0.5
    prefetch: int = 64  # what a consumer holds of a tenant's queue (FNHOST_ASYNC_PREFETCH)


@dataclass
class _Waiter:
    future: asyncio.Future[str | None]
    since: float
    shared: bool


@dataclass
class FunctionFlow:
    window: DispatchWindow
    running: int = 0
    finishing: int = 0  # ran; their record or destination hand-off not done yet
    waiters: deque[_Waiter] = field(default_factory=deque)
    run_s: float = 0.0  # decayed recent run time
    run_at: float = 0.0
    last_seen: float = 0.0  # last message taken
    idle_since: float = 0.0  # nothing in hand or waiting since then

    @property
    def in_hand(self) -> int:
        return self.running + self.finishing + len(self.waiters)

    @property
    def busy(self) -> bool:
        return self.in_hand > 0


def _decayed(value: float, since: float, now: float) -> float:
    return value * math.exp(-max(0.0, now - since) / RUN_TIME_TAU_S)


class Flow:
    def __init__(
        self,
        thresholds: Thresholds = Thresholds(),
        window: Callable[[int], DispatchWindow] = DispatchWindow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._thresholds = thresholds
        self._new_window = window
        self._clock = clock
        self._tenants: dict[str, dict[str, FunctionFlow]] = {}

    def get(self, tenant: str, function: str, ceiling: int = 1) -> FunctionFlow:
        functions = self._tenants.setdefault(tenant, {})
        flow = functions.get(function)
        if flow is None:
            now = self._clock()
            flow = functions[function] = FunctionFlow(
                self._new_window(ceiling), run_at=now, idle_since=now
            )
        return flow

    def find(self, tenant: str, function: str) -> FunctionFlow | None:
        return self._tenants.get(tenant, {}).get(function)

    def free(self, tenant: str, function: str) -> bool:
        """Whether `admit` would hand it a slot at once (no wait, unless set aside)."""
        flow = self.find(tenant, function)
        return flow is None or (flow.running < flow.window.limit and not flow.waiters)

    def functions(self) -> list[tuple[str, str, FunctionFlow]]:
        return [(t, name, f) for t, fs in self._tenants.items() for name, f in fs.items()]

    async def admit(self, tenant: str, function: str, ceiling: int, *, shared: bool) -> str | None:
        """Wait for a slot: None once it is held (call `leave` after), or, for a message
        from the tenant's queue, the reason to set it aside instead (no slot held)."""
        flow = self.get(tenant, function, ceiling)
        flow.window.set_ceiling(ceiling)
        now = self._clock()
        flow.last_seen = now
        if shared:
            reason = self._share_reason(tenant, function, flow, now)
            if reason is not None:
                return reason
        if flow.running < flow.window.limit and not flow.waiters:
            flow.running += 1
            return None
        waiter = _Waiter(asyncio.get_running_loop().create_future(), now, shared)
        flow.waiters.append(waiter)
        if shared and self._waiting_reason(flow, now) is not None:
            self._set_aside(flow, WAITING)
        try:
            if not shared:
                return await asyncio.shield(waiter.future)
            try:
                return await asyncio.wait_for(asyncio.shield(waiter.future), self._thresholds.wait_s)
            except TimeoutError:
                if not waiter.future.done():
                    self._set_aside(flow, OLDEST_WAIT)
                return waiter.future.result()
        except asyncio.CancelledError:
            if waiter.future.done() and waiter.future.result() is None:
                self.leave(tenant, function)  # granted as it was cancelled: give it back
            else:
                waiter.future.cancel()
                self._drop(flow, waiter)
            raise

    def leave(self, tenant: str, function: str, run_s: float = 0.0, finishing: bool = False) -> None:
        """A slot is free. `run_s`: time spent running; `finishing`: its message is still
        in hand (call `settled` once it is)."""
        flow = self._tenants[tenant][function]
        now = self._clock()
        if run_s > 0:
            flow.run_s = _decayed(flow.run_s, flow.run_at, now) + run_s
            flow.run_at = now
        flow.running -= 1
        flow.finishing += finishing
        self._wake(flow)
        if not flow.busy:
            flow.idle_since = now

    def settled(self, tenant: str, function: str) -> None:
        """The message of a slot left with `finishing` is settled."""
        flow = self._tenants[tenant][function]
        flow.finishing -= 1
        if not flow.busy:
            flow.idle_since = self._clock()

    def on_success(self, tenant: str, function: str) -> None:
        flow = self.find(tenant, function)
        if flow is not None:
            flow.window.on_success(waiting=bool(flow.waiters))

    def on_capacity_error(self, tenant: str, function: str) -> None:
        flow = self.find(tenant, function)
        if flow is not None:
            flow.window.on_capacity_error()

    def idle_for(self, tenant: str, function: str) -> float:
        flow = self.find(tenant, function)
        if flow is None:
            return math.inf
        return 0.0 if flow.busy else self._clock() - flow.idle_since

    def forget_idle(self, older_than_s: float) -> None:
        """Drop the state of functions idle for a long time (bounded memory)."""
        now = self._clock()
        for tenant, functions in list(self._tenants.items()):
            for name, flow in list(functions.items()):
                if not flow.busy and now - flow.idle_since > older_than_s:
                    del functions[name]
            if not functions:
                del self._tenants[tenant]

    # -- internals ---------------------------------------------------------------

    def _wake(self, flow: FunctionFlow) -> None:
        while flow.waiters and flow.running < flow.window.limit:
            waiter = flow.waiters.popleft()
            if waiter.future.done():
                continue
            flow.running += 1
            waiter.future.set_result(None)

    def _drop(self, flow: FunctionFlow, waiter: _Waiter) -> None:
        try:
            flow.waiters.remove(waiter)
        except ValueError:
            pass

    def _set_aside(self, flow: FunctionFlow, reason: str) -> None:
        """Every message of the tenant's queue waiting for this function goes."""
        kept: deque[_Waiter] = deque()
        for waiter in flow.waiters:
            if waiter.shared and not waiter.future.done():
                waiter.future.set_result(reason)
            elif not waiter.future.done():
                kept.append(waiter)
        flow.waiters = kept

    def _waiting_reason(self, flow: FunctionFlow, now: float) -> str | None:
        shared = [w for w in flow.waiters if w.shared]
        if len(shared) >= self._thresholds.waiting:
            return WAITING
        if shared and now - shared[0].since >= self._thresholds.wait_s:
            return OLDEST_WAIT
        return None

    def _share_reason(self, tenant: str, function: str, flow: FunctionFlow, now: float) -> str | None:
        """Whether this function crowds out its tenant's other functions."""
        share = self._thresholds.share
        in_hand = flow.in_hand
        if in_hand >= self._thresholds.inflight and in_hand >= share * self._thresholds.prefetch:
            # It holds that share of what the consumer may hold of the tenant's queue:
            # whatever waits behind it there waits for it.
            return WINDOW_SHARE
        others = [
            f for name, f in self._tenants.get(tenant, {}).items()
            if name != function and now - f.last_seen < ACTIVE_S
        ]
        if not others:
            return None  # nobody to crowd out
        if in_hand >= self._thresholds.inflight:
            in_hand_all = in_hand + sum(f.in_hand for f in others)
            if in_hand / in_hand_all >= share:
                return INFLIGHT_SHARE
        mine = _decayed(flow.run_s, flow.run_at, now)
        if mine >= RUN_TIME_TAU_S * share:  # it kept a slot busy at least `share` of the time
            run_all = mine + sum(_decayed(f.run_s, f.run_at, now) for f in others)
            if mine / run_all >= share:
                return RUN_TIME_SHARE
        return None
