"""The worker's task-history writer: task events in (combined into one record per run),
one `HistoryStore.write()` per tick.

Bounded like the event sender: while the store is away at most BUFFER_CAP events wait
(the oldest dropped, counted); a runner never waits for history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from ..exceptions import AiotqError
from ..history import Combiner, HistoryStore, TaskRecord

log = logging.getLogger("aiotq.worker")

BUFFER_CAP = 20_000


class HistoryRecorder:
    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.dropped = 0
        self._combiner = Combiner()
        self._buffer: deque[TaskRecord] = deque(maxlen=BUFFER_CAP)
        self._warned = False

    def feed(self, event: dict[str, Any]) -> None:
        record = self._combiner.feed(event)
        if record is None:
            return
        if len(self._buffer) == BUFFER_CAP:
            self.dropped += 1
        self._buffer.append(record)

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            await self.store.write(batch)
            self._warned = False
        except AiotqError as exc:
            for record in reversed(batch):  # kept for the next tick, within the cap
                if len(self._buffer) == BUFFER_CAP:
                    self.dropped += 1
                    break
                self._buffer.appendleft(record)
            if not self._warned:
                log.warning("could not write task history (%s); keeping it for later", exc)
                self._warned = True

    async def run(self, interval_s: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(1.0):  # a warm stop writes what is left, briefly
                    await self.flush()
