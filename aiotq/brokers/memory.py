"""In-process broker with the full contract: delays, priorities, ack/reject, dead letters,
redelivery of unacknowledged messages when a consumer closes.

The same worker code consumes from it as from Redis. Its state is guarded by a thread lock
and waiters are woken on their own loop, so a sync producer (on the app's portal thread) and
a worker loop can share one instance.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from .base import InWindow, Prefetch

Item = tuple[bytes, dict[str, str], int]  # body, headers, times handed out before


@dataclass(slots=True, eq=False)
class MemoryDelivery(InWindow):
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    delivery_count: int
    _broker: MemoryBroker
    _consumer: _Consumer
    _settled: bool = False
    _window: Prefetch | None = None

    async def ack(self) -> None:
        self._settle()

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        if self._settle():
            self._broker._return(self, requeue, reason or "rejected")

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self.finished()
        self._consumer.unacked.discard(self)
        self._broker._unacked.discard(self)
        self._broker._wake_all()
        return True


@dataclass(eq=False)
class _Consumer:
    loop: asyncio.AbstractEventLoop
    unacked: set[MemoryDelivery] = field(default_factory=set)
    waiter: asyncio.Future[None] | None = None
    window: Prefetch = field(default_factory=lambda: Prefetch(0, lambda: None))

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.loop.call_soon_threadsafe(_resolve, waiter)


class MemoryBroker:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, Item]]] = {}
        self._delayed: list[tuple[float, int, str, int, Item]] = []
        self._dead: dict[str, list[tuple[bytes, str]]] = {}
        self._consumers: set[_Consumer] = set()
        self._unacked: set[MemoryDelivery] = set()

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        """Like an AMQP channel closing: every unacknowledged delivery goes back."""
        for delivery in list(self._unacked):
            await delivery.reject(requeue=True)

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

    async def ack_many(self, deliveries: Sequence[MemoryDelivery]) -> None:
        for delivery in deliveries:
            await delivery.ack()

    def _wake_all(self) -> None:
        for consumer in list(self._consumers):
            consumer.wake()

    def _return(self, delivery: MemoryDelivery, requeue: bool, reason: str) -> None:
        with self._lock:
            if requeue:
                priority = int(delivery.headers.get("priority") or 0)
                item = (delivery.body, dict(delivery.headers), delivery.delivery_count)
                self._put(delivery.queue, item, priority)
            else:
                self._dead.setdefault(delivery.queue, []).append((delivery.body, reason))
        self._wake_all()

    async def consume(self, queues: Sequence[str], prefetch: int) -> AsyncIterator[MemoryDelivery]:
        consumer = _Consumer(asyncio.get_running_loop())
        consumer.window = Prefetch(prefetch, consumer.wake)
        self._consumers.add(consumer)
        turn = itertools.cycle(range(len(queues)))  # fair between queues
        try:
            while True:
                delivery, wait_s = self._take(consumer, queues, turn)
                if delivery is not None:
                    yield delivery
                    continue
                consumer.waiter = consumer.loop.create_future()
                # a publish between _take and here is not missed: re-check once under the waiter
                delivery, wait_s = self._take(consumer, queues, turn)
                if delivery is not None:
                    consumer.waiter = None
                    yield delivery
                    continue
                try:
                    async with asyncio.timeout(wait_s):
                        await consumer.waiter
                except TimeoutError:
                    pass
                finally:
                    consumer.waiter = None
        finally:
            # Deliveries already handed out stay valid: the caller settles them (a warm
            # shutdown lets them finish); aclose() returns whatever is left unsettled.
            self._consumers.discard(consumer)

    def _take(
        self,
        consumer: _Consumer,
        queues: Sequence[str],
        turn: itertools.cycle[int],
    ) -> tuple[MemoryDelivery | None, float | None]:
        with self._lock:
            wait_s = self._move_due()
            if consumer.window.free() <= 0:
                return None, wait_s
            for _ in range(len(queues)):
                queue = queues[next(turn)]
                ready = self._ready.get(queue)
                if ready:
                    _, _, (body, headers, before) = heapq.heappop(ready)
                    delivery = MemoryDelivery(
                        body, headers, queue, before > 0, before + 1, self, consumer
                    )
                    delivery._window = consumer.window.take()
                    consumer.unacked.add(delivery)
                    self._unacked.add(delivery)
                    return delivery, None
            return None, wait_s

    async def tick(self) -> None:
        with self._lock:
            self._move_due()

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
