"""The result publisher: stores results in batches, then settles their deliveries.

Runners hand outcomes over through a bounded queue (backpressure, not unbounded memory).
Everything that finished together is written in one backend round trip, and a message is
acknowledged only after its result is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from ..backends.base import Backend
from ..brokers.base import Broker
from ..exceptions import BackendConnectionError, BrokerConnectionError
from .execute import Outcome, Settle

log = logging.getLogger("aiotq.worker")

_STOP = object()
MAX_BATCH = 512


class ResultPublisher:
    def __init__(self, backend: Backend, broker: Broker, ttl_s: float, capacity: int) -> None:
        self._backend = backend
        self._broker = broker
        self._ttl_s = ttl_s
        self._queue: asyncio.Queue[Outcome | object] = asyncio.Queue(capacity)

    async def submit(self, outcome: Outcome) -> None:
        await self._queue.put(outcome)

    async def close(self) -> None:
        """Finish what was submitted, then stop `run()`."""
        await self._queue.put(_STOP)

    async def run(self) -> None:
        while True:
            batch: list[Outcome] = []
            item = await self._queue.get()
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
            while not stop and len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                await self._publish(batch)
            if stop:
                return

    async def _publish(self, batch: list[Outcome]) -> None:
        records: list[tuple[str, bytes]] = []
        for outcome in batch:
            if outcome.data is not None and outcome.task_id:
                records.append((outcome.task_id, outcome.data))
        if records:
            await _retrying(lambda: self._backend.store(records, self._ttl_s), "store results")
        followups = [outcome.after for outcome in batch if outcome.after is not None]
        if followups:  # after the store (a chord counts stored results), before the ack
            await asyncio.gather(*(_logged(after) for after in followups))
        acks = [o.delivery for o in batch if o.settle is Settle.ACK and o.delivery is not None]
        if acks:
            await _retrying(partial(self._broker.ack_many, acks), "acknowledge")
        for outcome in batch:
            delivery = outcome.delivery
            if delivery is not None and outcome.settle in (Settle.REQUEUE, Settle.DEAD_LETTER):
                requeue = outcome.settle is Settle.REQUEUE
                await _retrying(partial(delivery.reject, requeue, outcome.reason), "reject")


async def _logged(followup: Callable[[], Awaitable[None]]) -> None:
    try:
        await followup()
    except Exception as exc:
        log.error("follow-up of a finished task failed: %r", exc)


async def _retrying(operation: Callable[[], Awaitable[object]], what: str) -> None:
    """Connection errors are retried with backoff (the message is not lost meanwhile: it
    stays unacknowledged); anything else is logged and given up."""
    delay = 0.05
    while True:
        try:
            await operation()
            return
        except (BackendConnectionError, BrokerConnectionError) as exc:
            log.warning("could not %s (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except Exception as exc:
            log.error("could not %s: %r", what, exc)
            return
