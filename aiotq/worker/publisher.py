"""The result publisher: stores results in batches, then settles their deliveries.

Runners hand outcomes over through a bounded queue (backpressure, not unbounded memory).
Everything that finished together is written in one backend round trip, and a message is
acknowledged only after its result is stored (a batch's acks go out while the next batch is
being stored: they overlap, never precede their own store):

- an error that may pass (`Transient`: unreachable, out of memory, locked, read-only) is
  retried with backoff while the batch's messages stay unacknowledged; meanwhile the queue
  fills, runners wait to hand over, and the consumer stops taking new work;
- an error that is final for a result (too large for the backend, refused) stores a FAILURE
  record in its place saying why, so a waiter learns it, and then the message is acked; if
  not even that can be stored, the message goes back unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from .._backoff import Backoff
from ..backends.base import ResultStore
from ..brokers.base import Broker
from ..exceptions import Transient
from ..protocol import CODECS, Failure, ResultRecord, decode_record
from .outcome import Outcome, Settle

log = logging.getLogger("aiotq.worker")

_STOP = object()
MAX_BATCH = 512
Record = tuple[str, bytes]


class ResultPublisher:
    def __init__(self, backend: ResultStore, broker: Broker, ttl_s: float, capacity: int) -> None:
        self._backend = backend
        self._broker = broker
        self._ttl_s = ttl_s
        self._queue: asyncio.Queue[Outcome | object] = asyncio.Queue(capacity)
        self._idle = asyncio.Event()  # nothing queued and no batch in hand
        self._idle.set()
        # the last batch's acks and rejects, in flight while the next batch is stored
        self._settling: asyncio.Future[None] | None = None

    async def submit(self, outcome: Outcome) -> None:
        self._idle.clear()
        await self._queue.put(outcome)

    async def flush(self) -> None:
        """Wait until everything submitted so far is stored and settled."""
        await self._idle.wait()

    async def close(self) -> None:
        """Finish what was submitted, then stop `run()`."""
        await self._queue.put(_STOP)

    async def run(self) -> None:
        try:
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
                if self._queue.empty():
                    await self._settled()  # nothing to overlap with: finish the acks now
                    self._idle.set()
                if stop:
                    return
        finally:
            if self._settling is not None and not self._settling.done():
                self._settling.cancel()  # a cold stop: unacked messages go back
                with contextlib.suppress(asyncio.CancelledError):
                    await self._settling

    async def _settled(self) -> None:
        settling, self._settling = self._settling, None
        if settling is not None:
            await settling

    async def _publish(self, batch: list[Outcome]) -> None:
        records = [(o.task_id, o.data) for o in batch if o.data is not None and o.task_id]
        unstored = await self._store(records) if records else set()
        for outcome in batch:  # nothing could be stored for it: it must not be acked
            if outcome.task_id in unstored and outcome.delivery is not None:
                if outcome.settle is Settle.ACK:
                    outcome.settle = Settle.REQUEUE
                    outcome.reason = "its result could not be stored"
                outcome.after = None
        followups = [outcome for outcome in batch if outcome.after is not None]
        if followups:  # after the store (a chord counts stored results), before the ack
            await asyncio.gather(*(_followed_up(outcome) for outcome in followups))
        # Settling overlaps the next batch's store: started now, awaited before the next
        # batch settles (acks go out in batch order) or when nothing else is queued.
        await self._settled()
        if self._queue.empty():  # nothing to overlap with: no task, the acks leave now
            await self._settle(batch)
        else:
            self._settling = asyncio.ensure_future(self._settle(batch))

    async def _settle(self, batch: list[Outcome]) -> None:
        acks = [o.delivery for o in batch if o.settle is Settle.ACK and o.delivery is not None]
        if acks:
            await _settling(partial(self._broker.ack_many, acks), "acknowledge")
        for outcome in batch:
            delivery = outcome.delivery
            if delivery is not None and outcome.settle in (Settle.REQUEUE, Settle.DEAD_LETTER):
                requeue = outcome.settle is Settle.REQUEUE
                await _settling(partial(delivery.reject, requeue, outcome.reason), "reject")

    async def _store(self, records: Sequence[Record]) -> set[str]:
        """Store the batch, retrying what may pass; a final refusal is narrowed down to the
        records it concerns, and each of those is replaced by a FAILURE record. Returns the
        ids for which not even that could be stored (their messages go back, unacked: each
        return counts toward the delivery limit, so this ends in the dead letters)."""
        try:
            await _retrying(partial(self._backend.store, records, self._ttl_s), "store results")
            return set()
        except Exception as exc:  # final for (one of) these records
            if len(records) > 1:  # which one? store them one by one
                unstored: set[str] = set()
                for record in records:
                    unstored |= await self._store([record])
                return unstored
            refusal = exc
        task_id, data = records[0]
        failure = _unstorable(task_id, data, refusal)
        log.error("result of task %s cannot be stored (%s); storing a FAILURE instead",
                  task_id, refusal)  # fmt: skip
        try:
            await _retrying(partial(self._backend.store, [failure], self._ttl_s), "store results")
        except Exception as exc:
            log.error("not even a FAILURE record of task %s can be stored (%r); its message"
                      " goes back", task_id, exc)  # fmt: skip
            return {task_id}
        return set()


def _unstorable(task_id: str, data: bytes, refusal: BaseException) -> Record:
    """A FAILURE record, small and plain, saying why the real result could not be stored."""
    try:
        original = decode_record(data)
        task, retries, parent = original.task, original.retries, original.parent_id
        codec = CODECS["json" if data[:1] == b"{" else "msgpack"]
    except Exception:
        task, retries, parent, codec = None, 0, None, CODECS["json"]
    message = f"the result of task {task or task_id} could not be stored: {refusal}"
    failure = Failure(type="BackendError", module="aiotq.exceptions", message=message,
                      args=[message])  # fmt: skip
    record = ResultRecord(
        task_id=task_id, state="FAILURE", failure=failure, date_done_s=time.time(),
        retries=retries, task=task, parent_id=parent,
    )  # fmt: skip
    return task_id, codec.encode(record)


async def _followed_up(outcome: Outcome) -> None:
    """A follow-up that meets an error that may pass is run again (at least once: a link may
    be sent twice, as after a redelivery); one that fails for good is logged, and if it was
    needed (a retry's new message), its message is dead-lettered instead of acked."""
    assert outcome.after is not None
    try:
        await _retrying(outcome.after, "send the follow-ups of a finished task")
    except Exception as exc:
        log.error("follow-up of task %s failed: %r", outcome.task_id, exc)
        if outcome.after_must_succeed and outcome.settle is Settle.ACK:
            outcome.settle = Settle.DEAD_LETTER
            outcome.reason = f"its follow-up failed: {exc!r}"


async def _settling(operation: Callable[[], Awaitable[object]], what: str) -> None:
    """An ack or reject the broker refuses for good is logged: the broker keeps the message
    and delivers it again (at least once), so nothing is lost by going on."""
    try:
        await _retrying(operation, what)
    except Exception as exc:
        log.error("could not %s: %r", what, exc)


async def _retrying(operation: Callable[[], Awaitable[object]], what: str) -> None:
    """Errors that may pass are retried with backoff (the message is not lost meanwhile: it
    stays unacknowledged); any other error is raised to the caller."""
    backoff = Backoff(initial=0.05, cap=2.0)
    attempts = 0
    while True:
        try:
            await operation()
            if attempts:
                log.warning("could %s again after %d attempt(s)", what, attempts)
            return
        except Transient as exc:
            attempts += 1
            delay = backoff.delay()
            # the first few at WARNING, then one line in ten: an outage must not flood the log
            if attempts <= 3 or attempts % 10 == 0:
                log.warning("could not %s (%s); retrying in %.2fs (attempt %d)",
                            what, exc, delay, attempts)  # fmt: skip
            await asyncio.sleep(delay)
