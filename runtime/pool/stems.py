"""How many stem cells to keep, and of which memory sizes: a pure policy the pool applies.

The target starts at FNHOST_STEM_CELLS and stays within FNHOST_STEM_CELLS_MIN and
FNHOST_STEM_CELLS_MAX. It is sized from demand, not one cold start at a time:

- a burst: the claims of the last PEAK_WINDOW_S (stem cells taken or cold starts)
  are the concurrency the host was just asked for; the target rises to it, so
  the next burst of that size finds its stem cells ready;
- a function deployed or changed (`expect`): its max_concurrency is the burst it
  may bring at once, before any claim was seen.

Each FNHOST_STEM_CELLS_IDLE_S without any claim lowers it by one: an idle stem cell
costs no CPU, only memory, so the reserve is let down slowly. FNHOST_STEM_CELLS=0
turns stem cells off.

A stem cell started with another memory size than the function's costs a memory
resize at specialisation (a `docker update`: about 15 ms, a third of a stem start).
So the target is split across memory sizes in proportion to the recent claims of
each, and the refill starts the sizes that fall short of their share.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

from runtime.settings import Settings

# Claims remembered for the split across memory sizes.
RECENT_CLAIMS = 32
# Claims this close together belong to one burst: their count is its concurrency.
PEAK_WINDOW_S = 2.0


def split(total: int, weights: Mapping[int, int]) -> dict[int, int]:
    """`total` cells shared among sizes in proportion to `weights` (largest remainders;
    a tie goes to the heavier weight, then to the smaller size)."""
    whole = sum(weights.values())
    if total <= 0 or whole <= 0:
        return {}
    shares = {size: total * weight / whole for size, weight in weights.items()}
    counts = {size: int(share) for size, share in shares.items()}
    left = total - sum(counts.values())
    order = sorted(weights, key=lambda s: (-(shares[s] - counts[s]), -weights[s], s))
    for size in order[:left]:
        counts[size] += 1
    return {size: n for size, n in counts.items() if n > 0}


class StemPolicy:
    """The stem pool's target size and its split across memory sizes."""

    def __init__(
        self,
        *,
        initial: int,
        minimum: int,
        maximum: int,
        default_mb: int,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial == 0:
            minimum = maximum = 0
        self.minimum = minimum
        self.maximum = maximum
        self.target = min(max(initial, minimum), maximum)
        self._default_mb = default_mb
        self._idle_s = idle_s
        self._clock = clock
        self._claims: deque[int] = deque(maxlen=RECENT_CLAIMS)
        # Within PEAK_WINDOW_S; more than `maximum` would not raise the target further.
        self._claimed_at: deque[float] = deque(maxlen=max(1, maximum))
        self._quiet_since = clock()  # the last claim, or the last shrink

    @classmethod
    def from_settings(cls, settings: Settings) -> StemPolicy:
        return cls(
            initial=settings.stem_cells,
            minimum=settings.stem_cells_min,
            maximum=settings.stem_cells_max,
            default_mb=settings.stem_memory_mb,
            idle_s=settings.stem_cells_idle_s,
        )

    def on_claim(self, memory_mb: int) -> None:
        """A function of `memory_mb` took a stem cell, or started cold for want of one."""
        now = self._clock()
        self._claims.append(memory_mb)
        self._quiet_since = now
        self._claimed_at.append(now)
        while now - self._claimed_at[0] > PEAK_WINDOW_S:
            self._claimed_at.popleft()
        self._raise_to(len(self._claimed_at))

    def expect(self, memory_mb: int, concurrency: int) -> None:
        """A function of `memory_mb` that may run `concurrency` invocations at once was
        deployed or changed: keep as many stem cells for its first burst."""
        self._claims.append(memory_mb)
        self._quiet_since = self._clock()
        self._raise_to(concurrency)

    def _raise_to(self, wanted: int) -> None:
        self.target = max(self.target, min(wanted, self.maximum))

    def tick(self) -> bool:
        """Called now and then: lower the target by one after a quiet period. True if it did."""
        now = self._clock()
        if self.target > self.minimum and now - self._quiet_since >= self._idle_s:
            self.target -= 1
            self._quiet_since = now
            return True
        return False

    def sizes(self) -> dict[int, int]:
        """The target split across memory sizes, in proportion to the recent claims
        (all of FNHOST_STEM_MEMORY_MB before any)."""
        return split(self.target, Counter(self._claims) or {self._default_mb: 1})

    def to_start(self, have: Mapping[int, int], free_slots: int, free_mb: int) -> list[int]:
        """Memory sizes of the stem cells to start, given the cells there are or are
        starting (`have`, by size) and the room the host has left."""
        wanted = self.sizes()
        short = Counter({size: n - have.get(size, 0) for size, n in wanted.items()})
        missing = self.target - sum(have.values())
        starts: list[int] = []
        # The sizes furthest below their share first, each cell only if it fits.
        while missing > 0 and free_slots > 0:
            fitting = [s for s, n in short.items() if n > 0 and s <= free_mb]
            if not fitting:
                break
            size = max(fitting, key=lambda s: (short[s], -s))
            starts.append(size)
            short[size] -= 1
            missing -= 1
            free_slots -= 1
            free_mb -= size
        return starts

    def surplus(self, have: Mapping[int, int]) -> list[int]:
        """Memory sizes of idle cells to remove when there are more than the target:
        from the sizes furthest above their share."""
        wanted = self.sizes()
        over = Counter({size: n - wanted.get(size, 0) for size, n in have.items()})
        extra = sum(have.values()) - self.target
        removals: list[int] = []
        while extra > 0:
            size = max(over, key=lambda s: (over[s], s))
            removals.append(size)
            over[size] -= 1
            extra -= 1
        return removals

    def stats(self) -> dict[str, object]:
        return {
            "target": self.target,
            "min": self.minimum,
            "max": self.maximum,
            "sizes": {str(size): n for size, n in sorted(self.sizes().items())},
        }
