"""Work that failed because a dependency is down, tried again in the background.

Used where the caller's own answer must not wait for the outage to end: a control
event about a change already stored (`ControlBus.publish_or_later`), and taking
back a task record whose message was never confirmed (`Submitter`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryLater(Generic[T]):
    """Items whose `attempt` failed with a `transient` error. Every `every_s` they are
    tried again, oldest first, until one fails transiently again (the dependency is
    still down: the rest wait for the next round). Another error drops the item, logged.
    At most `limit` wait; `add` refuses more."""

    def __init__(
        self,
        what: str,
        attempt: Callable[[T], Awaitable[None]],
        transient: tuple[type[Exception], ...],
        every_s: float,
        limit: int,
    ) -> None:
        self._what = what
        self._attempt = attempt
        self._transient = transient
        self._every_s = every_s
        self._limit = limit
        self._items: collections.deque[T] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> bool:
        """Queue `item` to be tried again; False when `limit` items already wait."""
        if len(self._items) >= self._limit:
            return False
        self._items.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"retry-later: {self._what}")
        return True

    async def _run(self) -> None:
        while self._items:
            await asyncio.sleep(self._every_s)
            while self._items:
                item = self._items[0]
                try:
                    await self._attempt(item)
                except self._transient:
                    break
                except Exception:
                    log.exception("%s: giving up on %r", self._what, item)
                self._items.popleft()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop trying (what is left is not done)."""
        if self._items:
            log.warning("%s: %d left undone at shutdown", self._what, len(self._items))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
