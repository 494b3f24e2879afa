"""Per-destination circuit: whether a finished task's record is worth trying inline.

A record is tried once inline (FNHOST_DESTINATION_INLINE_S) before its queue
message is acknowledged. A destination that just failed or timed out would make
each next record wait that long again, holding the tenant's queue and the
task's slot for nothing, so its records go straight to the outbox
(runtime/outbox.py), without an inline attempt:

- for FNHOST_DESTINATION_CIRCUIT_S after an attempt to it failed (open);
- while an inline attempt to it has waited FNHOST_DESTINATION_SLOW_S: the records
  finishing meanwhile would likely wait as long;
- while `probes` inline attempts to it are in flight and it has not answered
  well within FNHOST_DESTINATION_CIRCUIT_S: a burst of records finishing together
  (a queue's prefetch of them) must not all wait out the first one's deadline.

A success closes the circuit and vouches for the destination for the same while.
Pure logic on a caller's clock (monotonic seconds), so it is tested on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# Destinations remembered at once; the least recently used is forgotten first
# (forgetting one only costs its next records their inline attempts).
CIRCUITS_MAX = 4096
# Inline attempts in flight at once to a destination with no recent success: the
# queue slots a destination that hangs can hold, each for the inline deadline.
PROBES = 4


@dataclass
class _State:
    open_until: float = 0.0
    good_until: float = 0.0  # a success vouches for it until then
    failed_at: float = 0.0
    error: str = ""
    inline: list[float] = field(default_factory=list)  # start times of attempts in flight


class DestinationCircuits:
    """Keyed by destination (its tenant and `runtime.outbox.destination_key`: a webhook by
    its host, whatever the path and query); see the module docstring."""

    def __init__(
        self, open_s: float, slow_s: float, probes: int = PROBES, limit: int = CIRCUITS_MAX
    ) -> None:
        self._open_s = open_s
        self._slow_s = slow_s
        self._probes = probes
        self._limit = limit
        self._states: OrderedDict[str, _State] = OrderedDict()

    def skip_reason(self, key: str, now: float) -> str | None:
        """Why the next record to `key` should skip its inline attempt; None to try it."""
        state = self._states.get(key)
        if state is None:
            return None
        if now < state.open_until:
            return f"not tried inline: it failed {now - state.failed_at:.1f} s before ({state.error})"
        if state.inline and now - min(state.inline) >= self._slow_s:
            return f"not tried inline: an attempt has been waiting for {now - min(state.inline):.1f} s"
        if len(state.inline) >= self._probes and now >= state.good_until:
            return f"not tried inline: {len(state.inline)} attempts to it are waiting, none answered yet"
        return None

    def started(self, key: str, now: float) -> None:
        """An inline attempt to `key` begins at `now`."""
        self._state(key).inline.append(now)

    def ended(self, key: str, started: float) -> None:
        """The inline attempt begun at `started` is over (whatever its outcome)."""
        state = self._states.get(key)
        if state is not None and started in state.inline:
            state.inline.remove(started)

    def failed(self, key: str, now: float, error: str) -> None:
        """An attempt to `key` failed in a way the next one may not (no answer, a 5xx)."""
        state = self._state(key)
        state.open_until = now + self._open_s
        state.good_until = 0.0
        state.failed_at = now
        state.error = error

    def succeeded(self, key: str, now: float) -> None:
        state = self._state(key)
        state.open_until = 0.0
        state.good_until = now + self._open_s

    def __len__(self) -> int:
        return len(self._states)

    def _state(self, key: str) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
            while len(self._states) > self._limit:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state
