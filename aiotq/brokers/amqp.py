"""RabbitMQ broker (`amqp://user:pass@host:port/vhost`, `amqps://`) on aio-pika.

Several nodes of a cluster may be listed, `amqp://h1//;amqp://h2//`: the connection fails
over between them (`amqp_hosts.py`). Queues are durable, messages persistent, every publish
waits for the publisher confirm. Each queue `q` has a dead-letter queue `q.dead` (rejected
messages, with the reason in the `x-aiotq-reason` header) and priorities 0-9
(`x-max-priority`). Quorum queues (`queue_type="quorum"`) have no priorities; with them the
dead letters and the delay levels are quorum queues too, so nothing lives on one node only.
Routing (exchanges, routing keys) is resolved by aiotq in the producer, so a message is
published straight to its queue through the default exchange.

Delays use no plugin and hold nothing in worker memory: a fixed cascade of LEVELS TTL queues,
level L holding a message 2**L seconds. A delayed message's routing key spells its delay in
binary, highest level first, then the queue: `0.0.....1.0.1.sms`. Exchange `aiotq.delay.L`
(topic) sends it to queue `aiotq.delay.L` when bit L is 1, else straight on to level L-1;
that queue's TTL dead-letters it into `aiotq.delay.(L-1)` with the same key. After level 0,
`aiotq.delay.deliver` routes it to the queue named after the bits. Any whole number of
seconds up to 2**LEVELS - 1 (48 days) takes exactly that long; delays are rounded up to the
second, so a task never starts early. (NServiceBus uses the same scheme.) Quorum mode's
levels are `aiotq.delay.quorum.L`, with the same routing.

Publishing (`amqp_publish.py`): one writer per channel frames a batch (one send, a burst of
concurrent sends, a `publish_many`) into one write and awaits the confirms together.
Consuming (`amqp_consume.py`): raw deliveries from aiormq, acks written in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from .._backoff import Backoff
from .._loops import PerLoop
from ..exceptions import AccessRefused, BrokerConnectionError, BrokerError
from ..urls import mask_password
from .amqp_bus import AmqpBus
from .amqp_consume import REASON, REQUEUED, Stream, headers_of
from .amqp_hosts import FailoverConnection, mask_all, split_urls
from .amqp_publish import Publication, Writer
from .amqp_queues import CLASSIC_V2, QueueDeclarations
from .base import Consumer, Delivery, Outgoing, QueueStats, ack_many
from .bus import Subscription

log = logging.getLogger("aiotq.broker")

LEVELS = 22
DELAY_PREFIX = "aiotq.delay"
DELIVER = f"{DELAY_PREFIX}.deliver"
# quorum mode's levels: replicated, and named apart so that the classic levels of a vhost
# (or of an older aiotq) keep their messages and drain into DELIVER as before
QUORUM_DELAY_PREFIX = f"{DELAY_PREFIX}.quorum"
CONNECTION_ERRORS = (
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
    OSError,
    TimeoutError,
)
QOS_MAX = 65_535  # basic.qos prefetch_count is a short
_IN_PROPERTIES = frozenset({"id", "content-type"})  # message_id, content_type
SETTLE_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError, RuntimeError)


def delay_key(seconds: int, queue: str) -> str:
    bits = ".".join("1" if seconds >> level & 1 else "0" for level in reversed(range(LEVELS)))
    return f"{bits}.{queue}"


def _seconds(delay_s: float) -> int:
    """A delay in whole seconds, rounded up: a task never starts early."""
    seconds = math.ceil(delay_s) if delay_s > 0 else 0
    if seconds >= 2**LEVELS:
        days = (2**LEVELS) / 86400
        raise ValueError(f"a delay of {delay_s:.0f}s is past RabbitMQ's longest ({days:.0f} days)")
    return seconds


def _queue_of(exc: BaseException, items: list[Publication]) -> str:
    for note in getattr(exc, "__notes__", ()):
        if note.startswith("queue: "):
            return note.removeprefix("queue: ")
    return items[0].queue if items else "?"


@dataclass(eq=False)
class _Link:
    """This loop's connection, its confirming publish channel and what it declared."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    declared: set[str] = field(default_factory=set)
    delays_declared: bool = False
    writer: Writer | None = None  # for the channel's current aiormq channel
    consumers: set[Consumer[Stream]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AmqpBroker:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        publish_retry_s: float = 10.0,
        queue_type: str = "classic",
        queue_arguments: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.urls = split_urls(url)  # one node, or a cluster's (amqp_hosts.py)
        self.url = ";".join(self.urls)
        self.where = mask_all(self.url)  # for messages: every password masked
        self.connect_timeout_s = connect_timeout_s
        self.publish_retry_s = publish_retry_s
        self.queue_type = queue_type
        self.queue_arguments = dict(queue_arguments or {})
        self.delays = QUORUM_DELAY_PREFIX if queue_type == "quorum" else DELAY_PREFIX
        self._links: PerLoop[_Link] = PerLoop()  # set by _link() once opened
        self._linking: PerLoop[asyncio.Lock] = PerLoop(asyncio.Lock)
        self._bus = AmqpBus(self, SETTLE_ERRORS)
        self._queues = QueueDeclarations(connect_timeout_s)  # each waits this at most
        self.settle_errors = SETTLE_ERRORS  # for amqp_consume.py, which cannot import this

    def __repr__(self) -> str:
        return f"AmqpBroker({self.where!r})"

    # -- connection ---------------------------------------------------------------------------
    async def _link(self) -> _Link:
        link = self._links.peek()
        if link is not None:
            if not link.connection.connected.is_set():  # lost: reconnecting (another node?)
                await self._reconnected(link)
            return link
        # Concurrent first calls (a burst of first sends) wait for one connection instead of
        # each opening its own (a thousand of them, never closed, stalled every send).
        async with self._linking.get():
            link = self._links.peek()
            if link is None:
                link = await self._open()
                self._links.set(link)
        return link

    async def _reconnected(self, link: _Link) -> None:
        """Wait for the robust connection to be back, within `publish_retry_s`: a new
        channel cannot be opened meanwhile (aio-pika raises RuntimeError)."""
        try:
            async with asyncio.timeout(self.publish_retry_s):
                await link.connection.ready()
        except TimeoutError as exc:
            raise BrokerConnectionError(
                f"RabbitMQ at {self.where}: no node back within {self.publish_retry_s:g}s"
            ) from exc

    async def _open(self) -> _Link:
        """Connect to the first node that answers (in the URLs' order); the connection moves
        on to the next live one by itself after a loss (amqp_hosts.py)."""
        failures: list[str] = []
        last: BaseException | None = None
        for first, url in enumerate(self.urls):
            connection = FailoverConnection(
                self.urls, first, loop=asyncio.get_running_loop(),
                client_properties={"product": "aiotq"},
            )  # fmt: skip
            try:
                await connection.connect(timeout=self.connect_timeout_s)
                break
            except (*CONNECTION_ERRORS, aiormq.exceptions.InvalidFrameError, ValueError) as exc:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await connection.close()  # its reconnect loop ended with the attempt
                refused = self._refusal(url, exc)
                if refused is not None:  # users and vhosts are the cluster's: no node helps
                    raise refused from exc
                failures.append(f"{mask_password(url)}: {exc}")
                last = exc
        else:
            raise BrokerConnectionError(f"cannot reach RabbitMQ at {'; '.join(failures)}") from last
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException as exc:
            with contextlib.suppress(*SETTLE_ERRORS):
                await connection.close()  # else it goes on reconnecting in the background
            if isinstance(exc, CONNECTION_ERRORS):
                raise BrokerConnectionError(
                    f"cannot reach RabbitMQ at {self.where}: {exc}"
                ) from exc
            raise
        return _Link(connection, channel)

    @staticmethod
    def _refusal(url: str, exc: BaseException) -> AccessRefused | None:
        where = mask_password(url)
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):  # a ConnectionError
            return AccessRefused(f"RabbitMQ at {where} refused the login: {exc}")
        # RabbitMQ answers Connection.Open with Connection.Close (530 NOT_ALLOWED) when the
        # vhost does not exist or the user may not use it; aiormq drops the reason.
        if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
            path = urlsplit(url).path
            vhost = unquote(path[1:]) if len(path) > 1 else "/"
            return AccessRefused(
                f"RabbitMQ at {where} refused vhost {vhost!r}: it does not exist, "
                f"or the user may not use it (rabbitmqctl list_vhosts / list_permissions)"
            )
        return None

    async def _renew(self, link: _Link, nacked: Writer) -> None:
        """A new publish channel in place of one a quorum queue nacked: RabbitMQ 3.10 nacks
        for good a channel whose first publish to the queue met it between leaders, though
        a new leader was elected at once (seen after a node's loss in a three-node cluster;
        a new channel is acked). Once per nacking channel, however many sends met the nack."""
        async with link.lock:
            if link.writer is not nacked:
                return  # renewed already
            old = link.channel
            link.channel = await link.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            link.writer = None  # made again, for the new channel, by the next publish
        log.info("RabbitMQ nacked a publish: a new publish channel")
        with contextlib.suppress(*SETTLE_ERRORS):
            await old.close()  # its unconfirmed publishes fail over to the new one

    async def connect(self) -> None:
        await self._link()

    async def aclose(self) -> None:
        link = self._links.pop()
        if link is not None:
            for consumer in list(link.consumers):  # unacknowledged deliveries go back
                with contextlib.suppress(*SETTLE_ERRORS):
                    await consumer.primitives.channel.close()
            with contextlib.suppress(*SETTLE_ERRORS):
                await link.connection.close()

    # -- topology -----------------------------------------------------------------------------
    def _arguments(self, queue: str) -> dict[str, Any]:
        if self.queue_type == "quorum":
            arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        else:
            arguments = {"x-max-priority": 9, **CLASSIC_V2}
        return {**arguments, **self.queue_arguments.get(queue, {})}

    def _dead_arguments(self) -> dict[str, Any] | None:
        """Quorum mode replicates the dead letters too: a classic queue lives on one node,
        and while that node is down no channel that declared it is restored elsewhere."""
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else dict(CLASSIC_V2)

    def _delay_arguments(self, level: int, lower: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-message-ttl": (2**level) * 1000,
                                     "x-dead-letter-exchange": lower}  # fmt: skip
        if self.queue_type == "quorum":  # RabbitMQ 3.10+: TTL and safe dead-lettering
            # at-least-once: a due message leaves its level only once the next one has it
            # (RabbitMQ requires reject-publish overflow for it; no length limit is set)
            arguments.update({"x-queue-type": "quorum", "x-overflow": "reject-publish",
                              "x-dead-letter-strategy": "at-least-once"})  # fmt: skip
        else:
            arguments.update(CLASSIC_V2)
        return arguments

    async def _declare_queue(
        self, link: _Link, channel: AbstractChannel, queue: str
    ) -> aio_pika.abc.AbstractQueue:
        declare, connection = self._queues.declare, link.connection
        declared = await declare(connection, channel, queue, self._arguments(queue))
        await declare(connection, channel, f"{queue}.dead", self._dead_arguments())
        deliver = await channel.declare_exchange(DELIVER, aio_pika.ExchangeType.TOPIC, durable=True)
        await declared.bind(deliver, "*." * LEVELS + queue)
        return declared

    async def _declare_delays(self, link: _Link, channel: AbstractChannel) -> None:
        exchanges = [
            await channel.declare_exchange(
                f"{self.delays}.{level}", aio_pika.ExchangeType.TOPIC, durable=True
            )
            for level in range(LEVELS)
        ]
        deliver = await channel.declare_exchange(DELIVER, aio_pika.ExchangeType.TOPIC, durable=True)
        for level, exchange in enumerate(exchanges):
            lower = exchanges[level - 1] if level else deliver
            skip = "*." * (LEVELS - 1 - level)
            queue = await self._queues.declare(
                link.connection, channel, f"{self.delays}.{level}",
                self._delay_arguments(level, lower.name),
            )  # fmt: skip
            await queue.bind(exchange, f"{skip}1.#")
            await lower.bind(exchange, f"{skip}0.#")

    async def _ensure(self, link: _Link, queue: str, delayed: bool) -> None:
        if queue in link.declared and (link.delays_declared or not delayed):
            return
        async with link.lock:
            if queue not in link.declared:
                await self._declare_queue(link, link.channel, queue)
                link.declared.add(queue)
            if delayed and not link.delays_declared:
                await self._declare_delays(link, link.channel)
                link.delays_declared = True

    async def declare(self, queues: Sequence[str]) -> None:
        link = await self._link()
        for queue in queues:
            await self._ensure(link, queue, delayed=True)

    # -- publishing ---------------------------------------------------------------------------
    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None:
        await self._publish_raw(queue, body, headers, priority, _seconds(delay_s))

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Every message framed into one write, their confirms awaited together."""
        if messages:
            await self._confirmed(
                [self._publication(m.queue, m.body, m.headers, m.priority, _seconds(m.delay_s))
                 for m in messages],
                {(m.queue, m.delay_s > 0) for m in messages},
            )  # fmt: skip

    async def _publish_raw(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        priority: int | None,
        delay_s: int = 0,
    ) -> None:
        """Publish to `queue` (after `delay_s` seconds) and wait for the confirm."""
        item = self._publication(queue, body, headers, priority, delay_s)
        await self._confirmed([item], ((queue, delay_s > 0),))

    def _publication(
        self, queue: str, body: bytes, headers: Mapping[str, str], priority: int | None,
        delay_s: int,
    ) -> Publication:  # fmt: skip
        if delay_s:
            exchange, key = f"{self.delays}.{LEVELS - 1}", delay_key(delay_s, queue)
        else:
            exchange, key = "", queue
        # the id and content type travel as the message's properties, not twice in headers
        table = {k: v for k, v in headers.items() if k not in _IN_PROPERTIES}
        return Publication(queue, exchange, key, body, table, headers.get("id"), priority,
                           headers.get("content-type"))  # fmt: skip

    async def _confirmed(
        self, items: list[Publication], queues: Iterable[tuple[str, bool]]
    ) -> None:
        """Publish and wait for every confirm; on a connection error (or a quorum queue's
        nack) publish again what was not confirmed, within `publish_retry_s`, then name the
        problem."""
        deadline = time.monotonic() + self.publish_retry_s
        confirm_by = asyncio.get_running_loop().time() + self.publish_retry_s  # loop clock
        backoff: Backoff | None = None  # made on the first failure: not on the hot path
        nacked: Writer | None = None  # a quorum queue's nack came through it
        while True:
            try:
                link = await self._link()
                if nacked is not None:
                    await self._renew(link, nacked)
                    nacked = None
                for queue, delayed in queues:
                    await self._ensure(link, queue.removesuffix(".dead"), delayed)
                writer = link.writer
                if writer is None or writer.channel.is_closed:  # first, or after a reconnect
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        channel = await link.channel.get_underlay_channel()
                    if writer is None or writer.channel is not channel:
                        writer = link.writer = Writer(channel)
                batch = await writer.publish(items, confirm_by)
                items, lost = await batch.confirmed()
                if lost is None:
                    return
                failure: BaseException = lost  # the rest were confirmed: these go again
            except aio_pika.exceptions.DeliveryError as exc:
                # A quorum queue nacks what it could not take in while it has no leader (an
                # election, after a node's loss): that passes, so the call's messages go
                # again (those it confirmed too: at least once), on a fresh channel. A
                # classic queue's nack, and a return (no queue took it), are final.
                if self.queue_type != "quorum" or not isinstance(exc.frame, aiormq.spec.Basic.Nack):
                    queue = _queue_of(exc, items)
                    raise BrokerError(
                        f"RabbitMQ refused a message for queue {queue!r}: {exc}"
                    ) from exc
                failure = exc
                nacked = writer
            except (*CONNECTION_ERRORS, BrokerConnectionError) as exc:
                failure = exc
            backoff = backoff or Backoff(initial=0.05, cap=1.0)
            left = deadline - time.monotonic()  # retried for the whole bound, no less
            if left <= 0:
                raise BrokerConnectionError(
                    f"cannot publish to RabbitMQ at {self.where} "
                    f"(gave up after {self.publish_retry_s:g}s): {failure}"
                ) from failure
            # the robust connection reconnects meanwhile
            await asyncio.sleep(min(backoff.delay(), left))

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)  # one write: a multiple ack where it can (amqp_consume.py)

    # -- consuming ----------------------------------------------------------------------------
    async def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        """This hands out at most `prefetch` unfinished deliveries in all, taking the queues in
        turn (fair). Each queue's consumer may hold twice that unacknowledged in RabbitMQ's
        hands: a delivery leaves the window when its run ends, but RabbitMQ counts it until
        its ack, which goes out only once its result is stored. With the QoS equal to the
        window, every freed slot waited for a result store, an ack and a delivery before its
        next task; the headroom keeps the next one here (on Redis the window alone bounds
        the reads, so it never waits for acks)."""
        link = await self._link()
        channel = await link.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=min(2 * prefetch, QOS_MAX))
        subscription = Stream(self, link, channel, queues)
        consumer = subscription.consumer = Consumer(subscription, prefetch, on_ready)
        link.consumers.add(consumer)
        buffers, arrived = subscription.buffers, subscription.arrived
        tags, ready = [], set()
        for name in queues:
            queue = await self._declare_queue(link, channel, name)
            if queue.declaration_result.message_count:
                ready.add(name)
            tags.append((queue, await queue.consume(subscription.incoming_handler(name))))
        taken = [(queue.name, tag) for queue, tag in tags]
        await subscription.take_over(taken)

        async def restored(_: Any) -> None:  # the robust channel consumes again: ours again
            await subscription.take_over(taken)

        channel.reopen_callbacks.add(restored)
        # Fair from the first message: queues that had messages waiting get a moment to
        # deliver before the first one's burst is handed out (RabbitMQ starts them apart).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while any(not buffers[name] for name in ready):
                    arrived.clear()
                    await arrived.wait()
        deliveries = consumer.deliveries()
        try:
            async for delivery in deliveries:
                yield delivery
        finally:
            # Not once drained (a cancelled fetch ends the hand-out loop first): the closed
            # channel gave everything back.
            subscription.whole = False  # deliveries for a cancelled consumer may go unseen
            if not channel.is_closed:
                for queue, tag in tags:  # no new deliveries; handed-out ones stay valid
                    with contextlib.suppress(*SETTLE_ERRORS):
                        await queue.cancel(tag)
                for buffer in buffers.values():  # arrived, not fetched: back now
                    while buffer:
                        await subscription.settle(buffer.popleft(), True, "given back")
            await deliveries.aclose()  # gives back what was fetched, closes once drained

    async def tick(self) -> None:
        return None  # delays live in RabbitMQ's TTL queues; leases are RabbitMQ's own

    # -- administration -----------------------------------------------------------------------
    # -- the bus (bus.py): control, replies, events ----------------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._bus.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._bus.subscribe(topic, replay=replay)

    async def queue_stats(self, queue: str) -> QueueStats:
        """Ready counts from a passive declare; RabbitMQ tells neither the unacknowledged
        count (its management API does) nor which delayed messages are for this queue."""
        link = await self._link()
        try:
            async with asyncio.timeout(self.publish_retry_s):
                channel = await link.connection.channel()
        except CONNECTION_ERRORS as exc:  # TimeoutError included
            raise BrokerConnectionError(f"cannot reach RabbitMQ: {exc!r}") from exc
        try:
            async with asyncio.timeout(self.publish_retry_s):  # never an unbounded wait
                ready = await channel.declare_queue(queue, passive=True)
                dead = await channel.declare_queue(f"{queue}.dead", passive=True)
            ready_count = ready.declaration_result.message_count
            dead_count = dead.declaration_result.message_count
        except aiormq.exceptions.ChannelNotFoundEntity:
            return QueueStats(0, None, None, 0)  # not declared yet: nothing was sent to it
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach RabbitMQ: {exc}") from exc
        finally:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()
        return QueueStats(int(ready_count or 0), None, None, int(dead_count or 0))

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        """RabbitMQ cannot list what waits in the delay cascade without taking it (a TTL
        queue has no browse): nothing is listed (docs/monitoring.md)."""
        return []

    async def purge(self, queue: str) -> int:
        """Ready messages of the queue (delayed ones still in the delay levels are not)."""
        link = await self._link()
        declared = await self._declare_queue(link, link.channel, queue)
        result = await declared.purge()
        return int(result.message_count or 0)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        link = await self._link()
        channel = await link.connection.channel()
        try:
            dead = await self._queues.declare(
                link.connection, channel, f"{queue}.dead", self._dead_arguments()
            )
            out = []
            for _ in range(limit):
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                reason = (message.headers or {}).get(REASON, "")
                out.append(
                    (message.body, reason.decode() if isinstance(reason, bytes) else str(reason))
                )
            return out
        finally:
            await channel.close()  # unacknowledged: they all stay dead letters

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        link = await self._link()
        channel = await link.connection.channel()
        moved = 0
        try:
            dead = await self._queues.declare(
                link.connection, channel, f"{queue}.dead", self._dead_arguments()
            )
            for _ in range(limit):
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                found = headers_of(message.headers, message.content_type, message.message_id)
                headers = {k: v for k, v in found.items() if k != REASON}
                headers[REQUEUED] = "1"
                await self._publish_raw(queue, message.body, headers, message.priority)
                await message.ack()
                moved += 1
        finally:
            await channel.close()
        return moved

    # -- for what rides on the broker's connection (rpc://, Celery's protocol) ---------------
    async def declare_dead_queue(
        self, channel: AbstractChannel, queue: str
    ) -> aio_pika.abc.AbstractQueue:
        """`queue`'s dead letters, declared as this broker declares them (on `channel`)."""
        link = await self._link()
        return await self._queues.declare(
            link.connection, channel, f"{queue}.dead", self._dead_arguments()
        )

    async def open_channel(self) -> AbstractChannel:
        """A new channel on this loop's connection, with publisher confirms (a mandatory
        message no queue takes raises DeliveryError). The caller closes it; aio-pika restores
        it, with its queues and consumers, after a reconnect."""
        link = await self._link()
        try:
            return await link.connection.channel(publisher_confirms=True, on_return_raises=True)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach RabbitMQ at {self.where}: {exc}") from exc
