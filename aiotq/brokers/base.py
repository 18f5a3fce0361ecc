"""The Broker contract: small on purpose. Registry, routing and settings stay out of it.

A delivery carries its own ack. Delayed delivery is the broker's job: a delayed message
is durable in the broker, not held in worker memory.

Consuming is written once, here: every broker hands out the same `Delivery` and keeps its
bookkeeping in one `Consumer` per consume() call (the prefetch window, what it holds, what
it fetched and has not handed out, the hand-out loop). A broker writes only its
`Primitives`: fetch, ack a batch, settle one, let go.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from .._backoff import Backoff
from ..exceptions import BrokerError
from .bus import Bus

log = logging.getLogger("aiotq.broker")

# A message handed out this many times has been running in two workers that died (or has
# been returned twice): it may be what killed them. The worker runs such a message alone,
# and brokers keep the ones near it from being counted with it: Redis takes over a dead
# consumer's messages one at a time, SQLite claims a suspect alone. (RabbitMQ pushes its
# prefetch regardless: messages prefetched beside a poison one are counted again.)
SUSPECT_DELIVERIES = 3


class Broker(Bus, Protocol):
    """A broker (one module per kind, chosen by URL scheme in `brokers/__init__.py`).

    Event loops: the sync portal runs a loop thread of its own, so one broker object may
    serve several loops at once. Whatever belongs to a loop (a client, a connection, a
    channel) lives in a `PerLoop` (`aiotq/_loops.py`): made on first use on that loop, and
    none inherited across a fork. A consume() call and its deliveries stay on its loop.
    """

    url: str

    async def connect(self) -> None:
        """Connect (idempotent). Raises BrokerConnectionError naming the masked URL."""

    async def aclose(self) -> None:
        """Close everything; idempotent. Unacknowledged deliveries go back to their queue."""

    async def declare(self, queues: Sequence[str]) -> None: ...

    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None: ...

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish a batch in one round trip where the broker can (a Redis pipeline, one
        SQLite transaction, RabbitMQ confirms awaited together). Returns once every message
        is as safe as `publish` makes one. On an error, some may have been published."""
        await publish_each(self, messages)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge several deliveries of this broker in one round trip where it can."""

    def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        """Deliveries from `queues`, at most `prefetch` fetched and not yet finished.
        `on_ready(consumer)` is called once the consumer is really subscribed (queues declared, a
        RabbitMQ consumer registered), before the first fetch: a worker reports ready then.
        Closing it gives back what was fetched and never handed out; handed-out deliveries
        stay valid (the caller settles them, or aclose() returns them)."""
        ...

    async def tick(self) -> None:
        """Upkeep from the worker's scheduler tick: move due delayed messages, keep leases."""

    async def queue_stats(self, queue: str) -> QueueStats:
        """Ready, delayed, unacknowledged and dead-lettered counts (dashboard, metrics)."""
        ...

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        """Delayed messages of `queues` (countdown, eta, retries) with their due time (epoch
        seconds), soonest first: `aiotq inspect scheduled`."""
        ...

    async def purge(self, queue: str) -> int: ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """Dead-lettered bodies of a queue with their reasons, oldest first."""
        ...

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        """Move up to `limit` dead letters (oldest first) back to the queue; return how many."""
        ...


class Outgoing(NamedTuple):
    """One message of a `publish_many` batch: `publish`'s arguments."""

    queue: str
    body: bytes
    headers: Mapping[str, str]
    delay_s: float = 0.0
    priority: int | None = None


async def publish_each(broker: Broker, messages: Sequence[Outgoing]) -> None:
    """`publish_many` for a broker that has no batch of its own: one publish after another."""
    for out in messages:
        await broker.publish(
            out.queue, out.body, out.headers, delay_s=out.delay_s, priority=out.priority
        )


@dataclass(slots=True)
class QueueStats:
    """One queue's counts (None where the broker cannot tell)."""

    ready: int | None
    delayed: int | None
    unacked: int | None
    dead: int | None


class Primitives(Protocol):
    """What a broker writes for one consume() call; `Consumer` does the rest."""

    async def fetch(self, consumer: Consumer[Any], room: int) -> Sequence[Delivery]:
        """Up to about `room` new deliveries (made with `consumer`), or none after waiting
        a while for some. A BrokerError is waited out with backoff and fetched again."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge these (unsettled, of this consumer) in one round trip where it can."""

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        """Give one back to its queue (`requeue`) or dead-letter it with `reason`."""

    async def drained(self, consumer: Consumer[Any]) -> None:
        """Consuming ended and nothing fetched is held any more: let go of what the consumer
        kept (its place in the broker's registry, its channel). Called once."""


@dataclass(slots=True, eq=False)
class Delivery:
    """One message handed to the worker; the same class for every broker.

    `token` is the broker's own handle (a stream entry, a row id, an AMQP message); the
    `consumer` it came from knows how to settle it. `settled` is set once the broker has
    confirmed, so an ack or reject that failed can be retried."""

    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    delivery_count: int  # 1 on the first delivery; the worker dead-letters past the limit
    token: Any = field(repr=False)
    consumer: Consumer[Any] = field(repr=False)
    settled: bool = False
    slot: Prefetch | None = field(default=None, repr=False)  # in the window until finished()

    def finished(self) -> None:
        """The worker is done running it and has queued its result and ack: it no longer
        counts against prefetch. Idempotent; ack and reject imply it."""
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.give()

    async def ack(self) -> None:
        """Done with the message: the broker forgets it."""
        if not self.settled:
            await self.consumer.ack([self])

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        """Give the message back (`requeue=True`) or dead-letter it with the reason."""
        if not self.settled:
            await self.consumer.settle(self, requeue, reason or "rejected")


async def ack_many(deliveries: Sequence[Delivery]) -> None:
    """`Broker.ack_many` for every broker: one `ack` per consume() call (a worker has one)."""
    pending = [delivery for delivery in deliveries if not delivery.settled]
    if not pending:
        return
    first = pending[0].consumer
    if all(delivery.consumer is first for delivery in pending):
        await first.ack(pending)
        return
    by_consumer: dict[Consumer[Any], list[Delivery]] = {}
    for delivery in pending:
        by_consumer.setdefault(delivery.consumer, []).append(delivery)
    for consumer, group in by_consumer.items():
        await consumer.ack(group)


class Prefetch:
    """A consumer's prefetch window: messages fetched and not yet finished.

    A message leaves the window when the worker has queued its outcome, not when its ack
    lands: the next message is fetched while the last one's result is still being written
    (one store and one ack round trip per batch), instead of every slot waiting for both.
    Finished-but-unacknowledged messages stay bounded by the result publisher's own queue.
    (RabbitMQ also bounds what it sends by the channel's QoS, which counts until the ack.)
    """

    __slots__ = ("_wake", "out", "size")

    def __init__(self, size: int, wake: Callable[[], None]) -> None:
        self.size = size
        self.out = 0
        self._wake = wake

    def free(self) -> int:
        return self.size - self.out

    def take(self) -> Prefetch:
        self.out += 1
        return self

    def give(self) -> None:
        self.out -= 1
        self._wake()


P = TypeVar("P", bound=Primitives)


class Consumer(Generic[P]):
    """The bookkeeping of one consume() call, the same for every broker.

    `held`: fetched and not settled, in fetch order (what a lease renewal keeps and what
    aclose() returns); `fetched`: held and not yet handed out (given back when consuming
    ends); `window`: the prefetch window that `deliveries()` waits on before fetching."""

    __slots__ = (
        "_drained", "_on_ready", "_waiter", "ended", "fetched", "held", "primitives", "window",
    )  # fmt: skip

    def __init__(
        self,
        primitives: P,
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> None:
        self.primitives = primitives
        self._on_ready = on_ready
        self.window = Prefetch(prefetch, self._wake)
        self.held: dict[Delivery, None] = {}
        self.fetched: deque[Delivery] = deque()
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._drained = False

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        """The hand-out loop: fetch while the window has room, hand out one at a time."""
        fetched, window, held = self.fetched, self.window, self.held
        backoff = Backoff(initial=0.1, cap=5.0)
        if self._on_ready is not None:
            self._on_ready(self)  # the broker set up everything before handing us the loop
        try:
            while True:
                _honour_cancellation()
                if fetched:
                    yield fetched.popleft()
                    continue
                room = window.free()
                if room <= 0:  # wait for a finished message, not for the broker
                    await self._room()
                    continue
                try:
                    got = await self.primitives.fetch(self, room)
                except BrokerError as exc:  # a consumer never dies of a refusal: wait, again
                    delay = backoff.delay()
                    log.warning("cannot fetch messages (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                for delivery in got:
                    delivery.slot = window.take()
                    held[delivery] = None
                fetched.extend(got)
        finally:
            # Handed-out deliveries stay valid (a warm shutdown lets them finish); what was
            # fetched and never handed out goes back now, not after a lease runs out.
            unhanded = list(fetched)
            fetched.clear()
            for delivery in unhanded:  # fetched, never handed out: not a delivery to count
                delivery.delivery_count -= 1
            self.ended = True
            await self.give_back(unhanded)
            if not held:
                await self._drain()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self.primitives.ack(deliveries)
        for delivery in deliveries:
            self.settled(delivery)
        if self.ended and not self.held:
            await self._drain()

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        await self.primitives.settle(delivery, requeue, reason)
        self.settled(delivery)
        if self.ended and not self.held:
            await self._drain()

    def settled(self, delivery: Delivery) -> None:
        """The broker confirmed: the delivery is done with, and out of the window."""
        delivery.settled = True
        delivery.finished()
        self.held.pop(delivery, None)

    async def give_back(self, deliveries: Iterable[Delivery]) -> None:
        """Requeue each now; one the broker cannot take back now it delivers again later
        (after its lease, or when its channel closes)."""
        for delivery in list(deliveries):
            if delivery.settled:
                continue
            try:
                await self.settle(delivery, True, "given back")
            except BrokerError as exc:
                log.warning("could not return message %s (%s); it will be delivered again",
                            delivery.headers.get("id", "?"), exc)  # fmt: skip

    async def return_held(self) -> None:
        """The broker closes: everything this consumer still holds goes back now (a
        consumer whose consuming ended then lets go of what it kept)."""
        await self.give_back(list(self.held))

    async def _drain(self) -> None:
        if not self._drained:
            self._drained = True
            await self.primitives.drained(self)

    async def _room(self) -> None:
        while self.window.free() <= 0:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if self.window.free() <= 0:  # re-checked with the waiter in place
                    await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        """A slot freed: wake the hand-out loop if it waits (from any thread: a memory
        broker's deliveries may be returned by another loop's aclose())."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        if asyncio._get_running_loop() is loop:
            waiter.set_result(None)
        else:
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _honour_cancellation() -> None:
    """If a library below swallowed our CancelledError, the request is still on the task:
    act on it here rather than fetch on (seen with a Redis read cancelled mid-command)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
