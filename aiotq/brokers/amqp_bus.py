"""The RabbitMQ broker's bus (see bus.py): one topic exchange, `aiotq.bus`.

A post is published to the exchange with the topic as its routing key (not mandatory: a
topic nobody listens to drops it, and a message outlives nobody's interest: its TTL is the
post's `ttl_s`). A subscriber declares a server-named queue of its own, exclusive and
auto-deleted (gone with its channel or connection: no queue is ever left behind), capped at
`SUBSCRIBER_CAP` messages (the oldest dropped: a slow monitor never grows RabbitMQ), bound
to the topic; aio-pika's robust connection restores it after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from .._loops import PerLoop
from ..exceptions import BrokerConnectionError
from .bus import BUS_EXCHANGE, Inbox

if TYPE_CHECKING:
    from .amqp import AmqpBroker

SUBSCRIBER_CAP = 10_000
WAIT_S = 10.0  # the longest a subscribe or a post waits for RabbitMQ


class AmqpBus:
    def __init__(self, broker: AmqpBroker, errors: tuple[type[BaseException], ...]) -> None:
        self._broker = broker
        self._errors = errors
        self._exchanges: PerLoop[tuple[AbstractChannel, AbstractExchange]] = PerLoop()
        self._opening: PerLoop[asyncio.Lock] = PerLoop(asyncio.Lock)

    async def _exchange(self, channel: AbstractChannel | None = None) -> AbstractExchange:
        if channel is not None:
            return await channel.declare_exchange(BUS_EXCHANGE, aio_pika.ExchangeType.TOPIC)
        kept = self._exchanges.peek()
        if kept is not None and not kept[0].is_closed:
            return kept[1]
        async with self._opening.get():
            kept = self._exchanges.peek()
            if kept is None or kept[0].is_closed:
                opened = await self._broker.open_channel()
                kept = (opened, await self._exchange(opened))
                self._exchanges.set(kept)
        return kept[1]

    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        message = aio_pika.Message(body, expiration=max(ttl_s, 0.001))
        try:
            exchange = await self._exchange()
            await exchange.publish(message, topic, mandatory=False, timeout=WAIT_S)
        except self._errors as exc:
            self._exchanges.pop()
            raise BrokerConnectionError(f"cannot post to RabbitMQ's {BUS_EXCHANGE}: {exc}") from exc

    async def subscribe(self, topic: str, *, replay: bool = False) -> _QueueInbox:
        try:
            async with asyncio.timeout(WAIT_S):
                channel = await self._broker.open_channel()
        except TimeoutError as exc:
            raise BrokerConnectionError(f"cannot subscribe to {topic!r}: no answer") from exc
        inbox = _QueueInbox(channel)
        try:
            async with asyncio.timeout(WAIT_S):  # a server that accepts and never answers
                exchange = await self._exchange(channel)
                queue = await channel.declare_queue(
                    "", exclusive=True, auto_delete=True,
                    arguments={"x-max-length": SUBSCRIBER_CAP, "x-overflow": "drop-head"},
                )  # fmt: skip
                await queue.bind(exchange, routing_key=topic)
                await queue.consume(inbox.on_message, no_ack=True)
        except BaseException as exc:
            await inbox.aclose()
            if isinstance(exc, self._errors):
                raise BrokerConnectionError(f"cannot subscribe to {topic!r}: {exc}") from exc
            raise
        return inbox


class _QueueInbox(Inbox):
    def __init__(self, channel: AbstractChannel) -> None:
        super().__init__(SUBSCRIBER_CAP)
        self._channel = channel

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.push(message.body)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):  # a channel already gone with its connection
                await self._channel.close()
