"""The worker's task-history writer: a `RunSink` (worker/taskevents.py) handed the finished
runs' records in batches, one `HistoryStore.write()` a second at most (INTERVAL_MIN_S).

Bounded like the event sender: while the store is away at most BUFFER_CAP records wait
(the oldest dropped, counted) and writing backs off (a store that refuses, e.g. a full
Redis, is not sent the same large batch every tick: history never competes with results);
a runner never waits for history. A write carries at most WRITE_MAX records.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from .._backoff import Backoff
from .._loops import flush_every
from ..exceptions import AiotqError
from ..history import HistoryStore, Run, TaskRecord

log = logging.getLogger("aiotq.worker")

BUFFER_CAP = 50_000
WRITE_MAX = 20_000
# Written at most once a second, whatever the tick: on SQLite each commit rewrites every
# index page its rows touched (the id index is random), so a batch of a second's records
# costs a third less per record than four quarter-second ones. A record shows ≤ 1 s late.
INTERVAL_MIN_S = 1.0


class HistoryRecorder:
    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.dropped = 0
        self._buffer: deque[TaskRecord] = deque(maxlen=BUFFER_CAP)
        self._warned = False
        self._backoff = Backoff(initial=1.0, cap=30.0)
        self._resume_at = 0.0  # loop time: no write before this, after a refusal

    def fold(
        self, received: Sequence[Run], started: Sequence[Run], finished: Sequence[TaskRecord]
    ) -> None:
        """A record is written once, when its run ends."""
        self.dropped += max(0, len(self._buffer) + len(finished) - BUFFER_CAP)
        self._buffer.extend(finished)  # past the cap, the oldest go

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._buffer and loop.time() >= self._resume_at:
            await self._write_some(loop)

    async def _write_some(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = [self._buffer.popleft() for _ in range(min(WRITE_MAX, len(self._buffer)))]
        try:
            await self.store.write(batch)
            self._warned = False
            self._backoff.reset()
        except AiotqError as exc:
            self._resume_at = loop.time() + self._backoff.delay()
            room = max(BUFFER_CAP - len(self._buffer), 0)  # kept for later, within the cap
            kept = batch[len(batch) - room :] if room < len(batch) else batch
            self.dropped += len(batch) - len(kept)
            self._buffer.extendleft(reversed(kept))
            if not self._warned:
                log.warning("could not write task history (%s); keeping it for later", exc)
                self._warned = True

    async def run(self, interval_s: float) -> None:
        await flush_every(max(interval_s, INTERVAL_MIN_S), self.flush)
