"""In-process broker with the full contract: delays, priorities, ack/reject, dead letters,
redelivery of unacknowledged messages when a consumer closes.

The same worker code consumes from it as from Redis. Its state is guarded by a thread lock
and waiters are woken on their own loop, so a sync producer (on the app's portal thread) and
a worker loop can share one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from .base import Consumer, Delivery, Outgoing, QueueStats, ack_many
from .bus import MemoryBus, Subscription

Item = tuple[bytes, dict[str, str], int]  # body, headers, times handed out before


class _Queues:
    """The primitives of one consume() call: its queues taken in turn (fair), and the
    waiter a publish from any thread resolves on this consumer's loop."""

    def __init__(self, broker: MemoryBroker, queues: Sequence[str]) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.turn = itertools.cycle(range(len(self.queues)))
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.loop.call_soon_threadsafe(_resolve, waiter)

    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        got, wait_s = self.broker._take(self, consumer, room)
        if got:
            return got
        self.waiter = self.loop.create_future()
        try:
            # a publish between the take and here is not missed: re-check under the waiter
            got, wait_s = self.broker._take(self, consumer, room)
            if not got:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self.waiter
        finally:
            self.waiter = None
        return got

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        return None  # taken out of its queue when handed out: nothing left to forget

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        self.broker._return(delivery, requeue, reason)

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)


class MemoryBroker:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, Item]]] = {}
        self._delayed: list[tuple[float, int, str, int, Item]] = []
        self._dead: dict[str, list[tuple[bytes, str]]] = {}
        self._consumers: set[Consumer[_Queues]] = set()  # consuming, or holding deliveries
        self._bus = MemoryBus()

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        """Like an AMQP channel closing: every unacknowledged delivery goes back."""
        for consumer in list(self._consumers):
            await consumer.return_held()

    async def declare(self, queues: Sequence[str]) -> None:
        with self._lock:
            for queue in queues:
                self._ready.setdefault(queue, [])

    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None:
        item: Item = (body, dict(headers), 0)
        with self._lock:
            self._put(queue, item, priority or 0, delay_s)
        self._wake_all()

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        with self._lock:
            for m in messages:
                self._put(m.queue, (m.body, dict(m.headers), 0), m.priority or 0, m.delay_s)
        self._wake_all()

    def _put(self, queue: str, item: Item, priority: int, delay_s: float = 0.0) -> None:
        if delay_s > 0:
            due = time.monotonic() + delay_s
            heapq.heappush(self._delayed, (due, next(self._seq), queue, priority, item))
        else:
            heapq.heappush(self._ready.setdefault(queue, []), (-priority, next(self._seq), item))

    def _move_due(self) -> float | None:
        """Move due delayed messages to their queues; return seconds until the next one."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, queue, priority, item = heapq.heappop(self._delayed)
            self._put(queue, item, priority)
        return self._delayed[0][0] - now if self._delayed else None

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)

    def _wake_all(self) -> None:
        for consumer in list(self._consumers):
            consumer.primitives.wake()

    def _return(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        with self._lock:
            if requeue:
                priority = int(delivery.headers.get("priority") or 0)
                item = (delivery.body, dict(delivery.headers), delivery.delivery_count)
                self._put(delivery.queue, item, priority)
            else:
                self._dead.setdefault(delivery.queue, []).append((delivery.body, reason))
        self._wake_all()

    async def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        consumer = Consumer(_Queues(self, queues), prefetch, on_ready)
        self._consumers.add(consumer)  # until drained: aclose() returns what it holds
        async with contextlib.aclosing(consumer.deliveries()) as deliveries:
            async for delivery in deliveries:
                yield delivery

    def _take(
        self, queues: _Queues, consumer: Consumer[Any], room: int
    ) -> tuple[list[Delivery], float | None]:
        """Up to `room` ready messages, the queues taken in turn; else seconds to wait."""
        with self._lock:
            wait_s = self._move_due()
            got: list[Delivery] = []
            names = queues.queues
            while len(got) < room:
                for _ in range(len(names)):
                    queue = names[next(queues.turn)]
                    ready = self._ready.get(queue)
                    if ready:
                        _, _, (body, headers, before) = heapq.heappop(ready)
                        delivery = Delivery(
                            body, headers, queue, before > 0, before + 1, None, consumer
                        )
                        got.append(delivery)
                        break
                else:
                    break  # every queue empty
            return got, None if got else wait_s

    async def tick(self) -> None:
        with self._lock:
            self._move_due()

    # -- the bus (bus.py): control, replies, events ----------------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._bus.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._bus.subscribe(topic, replay=replay)

    async def queue_stats(self, queue: str) -> QueueStats:
        with self._lock:
            ready = len(self._ready.get(queue, ()))
            delayed = sum(1 for entry in self._delayed if entry[2] == queue)
            dead = len(self._dead.get(queue, ()))
        unacked = sum(1 for c in list(self._consumers) for d in list(c.held) if d.queue == queue)
        return QueueStats(ready, delayed, unacked, dead)

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        wall = time.time() - time.monotonic()  # the heap is on the monotonic clock
        with self._lock:
            due = sorted(e for e in self._delayed if e[2] in queues)[:limit]
        return [(at + wall, item[0]) for at, _, _, _, item in due]

    async def purge(self, queue: str) -> int:
        with self._lock:
            count = len(self._ready.get(queue, ()))
            self._ready[queue] = []
            kept = [entry for entry in self._delayed if entry[2] != queue]
            count += len(self._delayed) - len(kept)
            self._delayed = kept
            heapq.heapify(self._delayed)
            return count

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        with self._lock:
            return list(self._dead.get(queue, [])[:limit])

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        with self._lock:
            dead = self._dead.get(queue, [])
            moved, self._dead[queue] = dead[:limit], dead[limit:]
            for body, _ in moved:
                self._put(queue, (body, {}, 1), 0)
        self._wake_all()
        return len(moved)

    def pending_count(self, queue: str) -> int:
        """Ready plus delayed messages of a queue (for tests and `aiotq purge`)."""
        with self._lock:
            return len(self._ready.get(queue, ())) + sum(1 for e in self._delayed if e[2] == queue)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
