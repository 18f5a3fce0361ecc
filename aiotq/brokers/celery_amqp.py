"""RabbitMQ broker in Celery's format (`task_protocol = "celery"`): a Celery producer or
worker shares its queues. Messages are Celery's protocol 2 (aiotq/celery_wire.py) in AMQP
properties (content_type, content_encoding, correlation_id, priority, persistent) and
headers, published through the default exchange to the queue, as Celery's producer does.

Topology as Celery declares it: each queue durable, bound to its exchange (direct, durable,
named after the queue unless task_queues says otherwise) with its routing key. A queue that
already exists is used as it is, never redeclared (a redeclare with other arguments is a
RabbitMQ error): its priorities and dead-letter settings stay Celery's. A queue this module
creates gets the arguments of its task_queues entry (Queue(..., queue_arguments=...)) and
nothing else (Celery's default queue has none: no x-max-priority).

Dead letters: a queue whose arguments name an `x-dead-letter-exchange` is RabbitMQ's to
dead-letter (reject without requeue; the reason is logged); any other goes to `<queue>.dead`
(ours, with the reason in the `x-aiotq-reason` header). A Celery message whose `eta` is
ahead waits in aiotq's delay levels (brokers/amqp.py), not in a worker's memory: the queue is
bound to their exchange, and the message comes back in Celery's format when due.

Connection, channels and the bus are brokers/amqp.py's: this class holds an AmqpBroker and
uses only what it exposes (connect, aclose, open_channel, declare, post, subscribe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from .._loops import PerLoop
from ..celery_wire import DELIVERED_HEADER, from_celery, to_celery
from ..exceptions import BrokerConnectionError, BrokerError, MessageRejected
from ..protocol import CODECS, CONTENT_TYPES, decode_message
from ..urls import mask_password
from .amqp import CONNECTION_ERRORS, DELAY_PREFIX, DELIVER, LEVELS, REASON, AmqpBroker, delay_key
from .base import Consumer, Delivery, QueueStats, ack_many
from .bus import Subscription

log = logging.getLogger("aiotq.broker.celery_amqp")

ALL_CONTENT = frozenset(CONTENT_TYPES)
# an aiotq queue declared once so that AmqpBroker declares its delay levels (no other way
# to have them declared from outside brokers/amqp.py)
DELAYS_ANCHOR = "aiotq.celery.delays"
SETTLE_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError, RuntimeError)


def _text(value: Any) -> Any:
    """AMQP table values as Celery wrote them: bytes are text, inside lists and maps too."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_text(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _text(item) for key, item in value.items()}
    return value


def _count(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> int:
    before = headers.get(DELIVERED_HEADER)
    returns = headers.get("x-delivery-count")  # a quorum queue's own count
    if isinstance(returns, int):
        return 1 + returns + (before if isinstance(before, int) else 0)
    if isinstance(before, int):
        return before + 1 + (1 if message.redelivered else 0)
    return 2 if message.redelivered else 1


class _Channel:
    """The primitives of one consume() call: its channel and what arrived, in order."""

    def __init__(self, broker: CeleryAmqpBroker, channel: AbstractChannel) -> None:
        self.broker = broker
        self.channel = channel
        self.arrived: deque[Delivery] = deque()
        self.wake = asyncio.Event()

    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        got: list[Delivery] = []
        while self.arrived and len(got) < room:
            got.append(self.arrived.popleft())
        if not got:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.wake.wait()
        return got

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            with contextlib.suppress(*SETTLE_ERRORS):  # channel gone: RabbitMQ redelivers
                await delivery.token.ack()

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        message: AbstractIncomingMessage = delivery.token
        with contextlib.suppress(*SETTLE_ERRORS):
            if requeue:
                await message.reject(requeue=True)
            else:
                await self.broker._dead(message, delivery.queue, reason)

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)
        if not self.channel.is_closed:
            with contextlib.suppress(*SETTLE_ERRORS):
                await self.channel.close()


class CeleryAmqpBroker:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        publish_retry_s: float = 10.0,
        queue_type: str = "classic",
        queue_arguments: Mapping[str, Mapping[str, Any]] | None = None,
        bindings: Mapping[str, tuple[str, str, str]] | None = None,
    ) -> None:
        self.url = url
        self.publish_retry_s = publish_retry_s
        self.queue_type = queue_type
        self.queue_arguments = {name: dict(args) for name, args in (queue_arguments or {}).items()}
        self.bindings = dict(bindings or {})  # queue -> (exchange, type, routing key)
        self._amqp = AmqpBroker(
            url, connect_timeout_s=connect_timeout_s, publish_retry_s=publish_retry_s
        )
        self._publishing: PerLoop[AbstractChannel] = PerLoop()
        self._declared: PerLoop[set[str]] = PerLoop(set)
        self._consumers: set[Consumer[_Channel]] = set()

    def __repr__(self) -> str:
        return f"CeleryAmqpBroker({mask_password(self.url)!r})"

    async def connect(self) -> None:
        await self._amqp.connect()

    async def aclose(self) -> None:
        for consumer in list(self._consumers):  # unacknowledged deliveries go back
            with contextlib.suppress(*SETTLE_ERRORS):
                await consumer.primitives.channel.close()
        self._consumers.clear()
        channel = self._publishing.pop()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()
        self._declared.pop()
        await self._amqp.aclose()

    async def _channel(self) -> AbstractChannel:
        channel = self._publishing.peek()
        if channel is None or channel.is_closed:
            channel = await self._amqp.open_channel()
            self._publishing.set(channel)
        return channel

    # -- topology, as Celery declares it --------------------------------------------------
    async def declare(self, queues: Sequence[str]) -> None:
        declared = self._declared.get()
        new = [queue for queue in queues if queue not in declared]
        if not new:
            return
        await self._amqp.declare([DELAYS_ANCHOR])  # the delay levels, declared once
        for queue in new:
            await self._declare(queue)
            declared.add(queue)

    async def _declare(self, queue: str) -> None:
        try:
            probe = await self._amqp.open_channel()
            try:
                await probe.declare_queue(queue, passive=True)
                exists = True
            except aiormq.exceptions.ChannelNotFoundEntity:
                exists = False
            finally:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await probe.close()
            channel = await self._channel()
            if exists:  # Celery's (or an operator's): its arguments stay as they are
                declared = await channel.declare_queue(queue, passive=True)
            else:
                declared = await channel.declare_queue(
                    queue, durable=True, arguments=self._arguments(queue) or None
                )
            exchange_name, kind, key = self.bindings.get(queue, (queue, "direct", queue))
            if exchange_name:
                exchange = await channel.declare_exchange(
                    exchange_name, aio_pika.ExchangeType(kind), durable=True
                )
                await declared.bind(exchange, key)
            await self._amqp.declare_dead_queue(channel, queue)
            await declared.bind(DELIVER, "*." * LEVELS + queue)  # due delayed messages
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ refused the topology of queue {queue!r} (an exchange of another"
                f" type?): {exc}"
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"cannot reach RabbitMQ: {exc}") from exc

    def _arguments(self, queue: str) -> dict[str, Any]:
        arguments = dict(self.queue_arguments.get(queue, {}))
        if self.queue_type == "quorum":
            arguments.setdefault("x-queue-type", "quorum")
        return arguments

    # -- publishing -----------------------------------------------------------------------
    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None:
        """Celery's way: at once, through the default exchange, `eta` in the message (a
        Celery worker waits for it; an aiotq worker parks it in the delay levels)."""
        content_type = headers.get("content-type", "")
        message = decode_message(body, content_type, ALL_CONTENT)
        serializer = "msgpack" if content_type == CONTENT_TYPES["msgpack"] else "json"
        task = to_celery(message, serializer)
        await self._publish(queue, self._message(task.body, task.headers, {
            **task.properties, "content_type": task.content_type,
            "content_encoding": task.content_encoding, "priority": priority,
        }))  # fmt: skip

    async def publish_many(self, messages: Sequence[Any]) -> None:
        """A batch (brokers/base.py `Outgoing`: queue, body, headers, delay_s, priority),
        one message after another: each is converted to Celery's form on its own."""
        for out in messages:
            await self.publish(
                out.queue, out.body, out.headers, delay_s=out.delay_s, priority=out.priority
            )

    @staticmethod
    def _message(body: bytes, headers: Mapping[str, Any], properties: Mapping[str, Any]) -> Any:
        return aio_pika.Message(
            body,
            headers=dict(headers),
            content_type=properties.get("content_type"),
            content_encoding=properties.get("content_encoding"),
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to") or None,
            priority=properties.get("priority"),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def _publish(self, queue: str, message: Any, delay_s: int = 0) -> None:
        await self.declare([queue.removesuffix(".dead")])
        deadline = time.monotonic() + self.publish_retry_s
        while True:
            try:
                channel = await self._channel()
                if delay_s:
                    exchange = await channel.get_exchange(f"{DELAY_PREFIX}.{LEVELS - 1}")
                    await exchange.publish(message, delay_key(delay_s, queue))
                else:
                    await channel.default_exchange.publish(message, queue, mandatory=True)
                return
            except aio_pika.exceptions.DeliveryError as exc:
                raise BrokerError(f"RabbitMQ refused a message for queue {queue!r}: {exc}") from exc
            except CONNECTION_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise BrokerConnectionError(
                        f"cannot publish to RabbitMQ at {mask_password(self.url)}: {exc}"
                    ) from exc
                await asyncio.sleep(0.1)

    async def _dead(self, message: AbstractIncomingMessage, queue: str, reason: str) -> None:
        if "x-dead-letter-exchange" in self.queue_arguments.get(queue, {}):
            log.error("dead-lettering %s through the queue's own exchange: %s",
                      message.correlation_id, reason)  # fmt: skip
            await message.reject(requeue=False)
            return
        headers = {**(message.headers or {}), REASON: reason}
        await self._publish(f"{queue}.dead", self._copy(message, headers))
        await message.ack()

    @classmethod
    def _copy(cls, message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> Any:
        return cls._message(message.body, headers, {
            "content_type": message.content_type, "content_encoding": message.content_encoding,
            "correlation_id": message.correlation_id, "reply_to": message.reply_to,
            "priority": message.priority,
        })  # fmt: skip

    async def _park(self, message: AbstractIncomingMessage, queue: str, due_s: float) -> None:
        """A Celery message whose eta is ahead: into the delay levels, then acked."""
        seconds = min(max(1, math.ceil(due_s - time.time())), 2**LEVELS - 1)
        await self._publish(queue, self._copy(message, message.headers or {}), seconds)
        await message.ack()

    # -- consuming ------------------------------------------------------------------------
    async def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        await self.declare(queues)
        channel = await self._amqp.open_channel()
        await channel.set_qos(prefetch_count=prefetch)
        primitives = _Channel(self, channel)
        consumer = Consumer(primitives, prefetch, on_ready)
        self._consumers.add(consumer)
        tags = []
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)

            async def on_message(message: AbstractIncomingMessage, name: str = name) -> None:
                delivery = await self._delivery(message, name, consumer)
                if delivery is not None:
                    primitives.arrived.append(delivery)
                    primitives.wake.set()

            tags.append((queue, await queue.consume(on_message, no_ack=False)))
        deliveries = consumer.deliveries()
        try:
            async for delivery in deliveries:
                yield delivery
        finally:
            if not channel.is_closed:
                for queue, tag in tags:
                    with contextlib.suppress(*SETTLE_ERRORS):
                        await queue.cancel(tag)
                while primitives.arrived:  # arrived, never fetched: back now
                    await primitives.settle(primitives.arrived.popleft(), True, "given back")
            await deliveries.aclose()

    async def _delivery(
        self, message: AbstractIncomingMessage, queue: str, consumer: Consumer[Any]
    ) -> Delivery | None:
        headers = _text(dict(message.headers or {}))
        properties = {"priority": message.priority, "correlation_id": message.correlation_id}
        try:
            task, serializer = from_celery(
                headers, properties, message.body, message.content_type, queue
            )
            if task.eta_at_s is not None and task.eta_at_s > time.time() + 0.05:
                await self._park(message, queue, task.eta_at_s)
                return None
        except MessageRejected as exc:
            log.error("Rejected Celery message on %s: %s", queue, exc.reason)
            with contextlib.suppress(*SETTLE_ERRORS, BrokerError):
                await self._dead(message, queue, exc.reason)
            return None
        except (*SETTLE_ERRORS, BrokerError) as exc:  # unacknowledged: it comes back
            log.warning("could not delay %s (%s)", message.correlation_id, exc)
            return None
        codec = CODECS[serializer]
        delivery_headers = {"content-type": codec.content_type, "id": task.id, "task": task.task}
        count = _count(message, headers)
        return Delivery(
            codec.encode(task), delivery_headers, queue, count > 1, count, message, consumer
        )

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)

    async def tick(self) -> None:
        return None  # delays live in RabbitMQ's TTL queues; leases are RabbitMQ's own

    # -- the bus (aiotq's own control and events) -------------------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._amqp.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._amqp.subscribe(topic, replay=replay)

    # -- administration -------------------------------------------------------------------
    async def queue_stats(self, queue: str) -> QueueStats:
        channel = await self._amqp.open_channel()
        try:
            ready = await channel.declare_queue(queue, passive=True)
            dead = await channel.declare_queue(f"{queue}.dead", passive=True)
            return QueueStats(
                int(ready.declaration_result.message_count or 0), None, None,
                int(dead.declaration_result.message_count or 0),
            )  # fmt: skip
        except aiormq.exceptions.ChannelNotFoundEntity:
            return QueueStats(0, None, None, 0)
        finally:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        return []  # the delay levels cannot be browsed (as brokers/amqp.py)

    async def purge(self, queue: str) -> int:
        await self.declare([queue])
        channel = await self._channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = await declared.purge()
        return int(result.message_count or 0)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        return await self._amqp.dead_letters(queue, limit)

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        await self.declare([queue])
        channel = await self._amqp.open_channel()
        moved = 0
        try:
            dead = await self._amqp.declare_dead_queue(channel, queue)
            for _ in range(limit):
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                headers = {k: v for k, v in (message.headers or {}).items() if k != REASON}
                headers[DELIVERED_HEADER] = 1
                await self._publish(queue, self._copy(message, headers))
                await message.ack()
                moved += 1
        finally:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()
        return moved


def celery_amqp_broker(url: str, settings: Any) -> CeleryAmqpBroker:
    """The broker of `task_protocol = "celery"` on RabbitMQ, from the app's settings."""
    from ..routing import Topology, queue_arguments

    topology = Topology(
        settings.task_queues, settings.task_default_queue, settings.task_default_exchange,
        settings.task_default_exchange_type, settings.task_default_routing_key,
    )  # fmt: skip
    return CeleryAmqpBroker(
        url,
        connect_timeout_s=settings.broker_connection_timeout_s,
        publish_retry_s=settings.broker_publish_retry_s,
        queue_type=settings.broker_queue_type,
        queue_arguments=queue_arguments(settings.task_queues),
        bindings={
            b.queue: (b.exchange, b.exchange_type, b.key) for b in topology.bindings.values()
        },
    )
