"""Consuming from RabbitMQ: deliveries straight from aiormq's frames, acks in batches.

aio-pika builds an IncomingMessage (some thirty attribute writes) and a second task for
every delivery, and acks one frame and one socket drain at a time. Here a queue is
consumed through aio-pika (its robust channel restores the consumer after a reconnect),
but aiormq's callback for it is replaced by ours, which takes the raw delivery; and a batch
of acks is one write: a single `multiple=True` ack for the run of the channel's oldest
unacknowledged deliveries that are all in the batch, single acks for the rest. (A multiple
ack covers every earlier delivery of the channel, so the channel's unacknowledged tags are
tracked, and none is taken for granted once a consumer is cancelled: RabbitMQ may still
deliver for a cancelled consumer, and aiormq drops those without telling.)

A delivery's token is `(aiormq channel, delivery tag)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec

from ..exceptions import BrokerError
from .base import Consumer, Delivery

if TYPE_CHECKING:
    from .amqp import AmqpBroker, _Link

log = logging.getLogger("aiotq.broker")

REASON = "x-aiotq-reason"
REQUEUED = "x-aiotq-requeued"  # a dead letter put back: delivered before
# Deliveries before this copy. A classic queue only says "redelivered", not how often, so
# a redelivered message is published again with its count and the original acked.
DELIVERED = "x-aiotq-delivered"
RETURNS = "x-delivery-count"  # a quorum queue's own count of returned deliveries


def _number(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def headers_of(
    table: Mapping[str, Any] | None, content_type: str | None, message_id: str | None
) -> dict[str, str]:
    """A message's headers as aiotq reads them; the id and content type travel as its
    properties (older aiotq producers sent them as headers too: those win)."""
    headers = {
        key: value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for key, value in (table or {}).items()
    }
    if "content-type" not in headers and content_type:
        headers["content-type"] = content_type
    if "id" not in headers and message_id:
        headers["id"] = message_id
    return headers


def count_of(headers: Mapping[str, str]) -> int:
    """This delivery's number: the copies' count before it (classic), or the returns."""
    return 1 + _number(headers.get(DELIVERED)) + _number(headers.get(RETURNS))


class Stream:
    """The primitives of one consume() call: its channel (whose QoS is RabbitMQ's side of
    the window) and what arrived per queue, handed out taking the queues in turn (fair)."""

    def __init__(
        self, broker: AmqpBroker, link: _Link, channel: AbstractChannel, queues: Sequence[str]
    ) -> None:
        self.broker = broker
        self.link = link
        self.channel = channel
        self.buffers: dict[str, deque[Delivery]] = {name: deque() for name in queues}
        self.turn = itertools.cycle(queues)
        self.arrived = asyncio.Event()
        self.consumer: Consumer[Stream] | None = None
        # per aiormq channel (a new one after a reconnect), its unacknowledged delivery
        # tags, oldest first; `whole`: no consumer of it was cancelled (see the docstring)
        self.unacked: dict[Any, dict[int, None]] = {}
        self.whole = True
        self.counting = broker.queue_type != "quorum"  # classic queues: count redeliveries

    # -- arrivals ---------------------------------------------------------------------------
    def handler(self, queue: str) -> Callable[[DeliveredMessage], Awaitable[None]]:
        """aiormq's callback for `queue` (see `take_over`): a raw delivery."""
        arrive = self._arrive

        async def on_delivery(message: DeliveredMessage) -> None:
            frame, properties = message.delivery, message.header.properties
            assert isinstance(frame, spec.Basic.Deliver)
            await arrive(
                queue, message.channel, frame.delivery_tag, frame.redelivered, message.body,
                properties.headers, properties.content_type, properties.message_id,
                properties.priority,
            )  # fmt: skip

        return on_delivery

    def incoming_handler(self, queue: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        """aio-pika's callback for `queue`: what arrives before `take_over` (and between a
        reconnect and the next one)."""
        arrive = self._arrive

        async def on_message(message: AbstractIncomingMessage) -> None:
            await arrive(
                queue, message.channel, message.delivery_tag, message.redelivered,
                message.body, message.headers, message.content_type, message.message_id,
                message.priority,
            )  # fmt: skip

        return on_message

    async def take_over(self, tags: Sequence[tuple[str, str]]) -> None:
        """Put our raw callback in place of aio-pika's for each (queue, consumer tag) of
        this channel (again after the robust channel restored its consumers)."""
        underlay: Any = await self.channel.get_underlay_channel()
        for queue, tag in tags:
            if tag in underlay.consumers:
                underlay.consumers[tag] = self.handler(queue)

    async def _arrive(
        self, queue: str, channel: Any, tag: int | None, redelivered: bool | None, body: bytes,
        table: Mapping[str, Any] | None, content_type: str | None, message_id: str | None,
        priority: int | None,
    ) -> None:  # fmt: skip
        assert tag is not None and self.consumer is not None
        pending = self.unacked.get(channel)
        if pending is None:
            pending = self.unacked[channel] = {}
        pending[tag] = None
        headers = headers_of(table, content_type, message_id)
        if redelivered and self.counting:
            await self._count_again(queue, channel, tag, body, headers, priority)
            return
        count = count_of(headers)
        again = bool(redelivered) or REQUEUED in headers or count > 1
        self.buffers[queue].append(
            Delivery(body, headers, queue, again, count, (channel, tag), self.consumer)
        )
        self.arrived.set()

    async def _count_again(
        self, queue: str, channel: Any, tag: int, body: bytes, headers: dict[str, str],
        priority: int | None,
    ) -> None:  # fmt: skip
        """A classic queue's redelivery: publish a copy that carries the delivery count, then
        ack this one (a copy twice, if we die in between: at least once, as ever). The copy
        waits a second in the delay levels: handed out at once, it could run (and kill this
        worker again) before the original's ack left, and come back uncounted."""
        headers[DELIVERED] = str(count_of(headers))
        try:
            await self.broker._publish_raw(queue, body, headers, priority, 1)
        except (*self.broker.settle_errors, BrokerError) as exc:  # unacked: it comes back
            log.warning("could not count a redelivery of %s (%s)", headers.get("id", "?"), exc)
            return
        await self._send_acks(channel, [tag])

    # -- Primitives -------------------------------------------------------------------------
    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        got: list[Delivery] = []
        while len(got) < room:
            for _ in range(len(self.buffers)):
                buffer = self.buffers[next(self.turn)]
                if buffer:
                    got.append(buffer.popleft())
                    break
            else:
                break  # every buffer empty
        if not got:
            self.arrived.clear()
            await self.arrived.wait()
        return got

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """One write per channel; nothing waits for the socket (an ack has no reply, and one
        lost with its connection is a redelivery, as ever)."""
        first = deliveries[0].token[0]
        if all(delivery.token[0] is first for delivery in deliveries):
            await self._send_acks(first, [delivery.token[1] for delivery in deliveries])
            return
        by_channel: dict[Any, list[int]] = {}
        for delivery in deliveries:
            channel, tag = delivery.token
            by_channel.setdefault(channel, []).append(tag)
        for channel, tags in by_channel.items():
            await self._send_acks(channel, tags)

    async def _send_acks(self, channel: Any, tags: list[int]) -> None:
        try:
            frame = self._ack_frame(channel, tags)
            try:
                channel.write_queue.put_nowait(frame)
            except asyncio.QueueFull:  # the socket is behind: wait, but not for ever
                async with asyncio.timeout(self.broker.publish_retry_s):
                    await channel.write_queue.put(frame)
        except (*self.broker.settle_errors, TimeoutError) as exc:
            log.warning("could not acknowledge %d message(s) (%s); RabbitMQ will"
                        " redeliver them", len(tags), exc)  # fmt: skip
            return
        pending = self.unacked.get(channel)
        if pending is not None:
            for tag in tags:
                pending.pop(tag, None)

    def _ack_frame(self, channel: Any, tags: list[int]) -> ChannelFrame:
        """The acks of `tags` as frames: one multiple ack for the leading run (the oldest
        unacknowledged tags of the channel, every one of them in `tags`), single ones after."""
        if channel.is_closed:
            self.unacked.pop(channel, None)
            raise ConnectionError(f"{channel!r} closed")
        tags.sort()
        frames: list[Any] = []
        pending = self.unacked.get(channel)
        lead = 0
        if self.whole and pending is not None and len(tags) > 1:
            chosen = set(tags)
            for tag in pending:  # oldest first; stops at the first one still running
                if tag not in chosen:
                    break
                lead += 1
            if lead > 1:
                frames.append(spec.Basic.Ack(delivery_tag=tags[lead - 1], multiple=True))
            else:
                lead = 0
        frames.extend(spec.Basic.Ack(delivery_tag=tag) for tag in tags[lead:])
        return ChannelFrame.marshall(channel.number, frames)

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        if not requeue:  # the reason travels with it, so dead-letter it ourselves
            headers = {**delivery.headers, REASON: reason}
            await self.broker._publish_raw(f"{delivery.queue}.dead", delivery.body, headers, None)
        channel, tag = delivery.token
        try:
            await channel.basic_reject(tag, requeue=requeue)
        except self.broker.settle_errors as exc:  # its channel is gone: RabbitMQ redelivers
            log.warning("could not settle %s (%s); RabbitMQ will redeliver it",
                        delivery.headers.get("id", "?"), exc)  # fmt: skip
            return
        pending = self.unacked.get(channel)
        if pending is not None:
            pending.pop(tag, None)

    async def drained(self, consumer: Consumer[Any]) -> None:
        """The last handed-out delivery settled after consuming ended: close the channel,
        so anything RabbitMQ still had in flight to it goes back at once."""
        self.link.consumers.discard(consumer)
        if not self.channel.is_closed:
            with contextlib.suppress(*self.broker.settle_errors):
                await self.channel.close()
