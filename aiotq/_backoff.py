"""One backoff for every retry loop: exponential from `initial` by `factor` up to `cap`,
with jitter so that many workers retrying one server do not retry in step."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    __slots__ = ("_next", "cap", "factor", "initial", "jitter")

    def __init__(
        self, initial: float = 0.05, factor: float = 2.0, cap: float = 2.0, jitter: float = 0.1
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self._next = initial

    def delay(self) -> float:
        """The next wait (and move on to the one after)."""
        base = self._next
        self._next = min(self._next * self.factor, self.cap)
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.initial

    async def sleep(self) -> float:
        delay = self.delay()
        await asyncio.sleep(delay)
        return delay
