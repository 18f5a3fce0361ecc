"""rpc:// result backend: results come back as messages to the caller's own reply queue.

For deployments with RabbitMQ and nothing else (Celery's rpc://). Each producer process and
event loop declares an exclusive, auto-deleted queue `aiotq.reply.<id>` and names it in every
message it sends (`reply_to`); the worker publishes the task's states there, and a waiting
`get()` wakes when one arrives.

What it cannot do, by design: results are not kept anywhere but in the memory of the process
that sent the task, so only that process (and that event loop) can fetch them, `AsyncResult(id)`
from elsewhere never completes, and results that arrive while the caller is disconnected are
lost. It is a ResultStore with `ReplyRouting` and no Coordinator (no counters, leases or
values), so chains, chords and beat need a backend that keeps results (redis://, sqlite://);
they refuse rpc:// with an error that says so.

It rides on the broker's connection through `AmqpBroker.open_channel()`: per event loop one
channel for the caller's reply queue and one for the worker's replies (publisher confirms on).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from .._loops import PerLoop
from ..exceptions import BackendConnectionError, BrokerConnectionError, ConfigurationError
from ..protocol import READY_STATES, decode_record

TASK_ID = "x-aiotq-task-id"
# what a publish on a lost connection raises (ConnectionError and TimeoutError are OSErrors)
CONNECTION_ERRORS = (
    aio_pika.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)


@runtime_checkable
class ChannelSource(Protocol):
    """What rpc:// needs of its broker (AmqpBroker's public `open_channel()`)."""

    url: str

    async def open_channel(self) -> AbstractChannel: ...


@dataclass(eq=False)
class _Channel:
    """One loop's channel of a kind, opened on first use (once, however many ask at once)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    channel: AbstractChannel | None = None

    async def close(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(Exception):  # the broker may have closed the connection
                await self.channel.close()
            self.channel = None


@dataclass(eq=False)
class _Inbox(_Channel):
    """One loop's reply queue (declared on first use) and what has arrived in it."""

    queue: str | None = None
    results: dict[str, bytes] = field(default_factory=dict)
    watchers: dict[str, set[asyncio.Queue[bytes]]] = field(default_factory=dict)


class RpcBackend:
    keeps_results = False  # see the module's docstring

    def __init__(self, url: str, broker: object) -> None:
        if not isinstance(broker, ChannelSource):
            raise ConfigurationError("the rpc:// result backend needs an amqp:// broker")
        self.url = url
        self._broker: ChannelSource = broker
        self._inboxes = PerLoop(_Inbox)  # the caller's side
        self._outboxes = PerLoop(_Channel)  # the worker's side
        self._reply_to: dict[str, str] = {}  # worker side: task id -> the caller's queue

    def __repr__(self) -> str:
        return "RpcBackend('rpc://')"

    async def connect(self) -> None:
        return None  # the broker's connection is used

    async def aclose(self) -> None:
        for per_loop in (self._inboxes, self._outboxes):
            state = per_loop.pop()
            if state is not None:
                await state.close()

    # -- the caller's side ------------------------------------------------------------------
    async def reply_to(self) -> str:
        """The reply queue of this process and loop (declared on first use)."""
        inbox = await self._inbox()
        assert inbox.queue is not None
        return inbox.queue

    async def _inbox(self) -> _Inbox:
        inbox = self._inboxes.get()
        if inbox.queue is None:
            async with inbox.lock:  # a burst of first sends declares one queue, not many
                if inbox.queue is None:
                    await self._declare(inbox)
        return inbox

    async def _declare(self, inbox: _Inbox) -> None:
        channel = await self._broker.open_channel()
        name = f"aiotq.reply.{uuid.uuid4().hex}"
        try:
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.consume(lambda message: self._arrived(inbox, message), no_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):  # not left open: the next call opens another
                await channel.close()
            raise
        inbox.channel, inbox.queue = channel, name

    async def _arrived(self, inbox: _Inbox, message: AbstractIncomingMessage) -> None:
        task_id = str((message.headers or {}).get(TASK_ID, ""))
        inbox.results[task_id] = message.body
        for watcher in inbox.watchers.get(task_id, ()):
            watcher.put_nowait(message.body)

    async def get(self, task_id: str) -> bytes | None:
        inbox = self._inboxes.peek()
        return inbox.results.get(task_id) if inbox else None

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        inbox = await self._inbox()
        watcher: asyncio.Queue[bytes] = asyncio.Queue()
        inbox.watchers.setdefault(task_id, set()).add(watcher)
        try:
            if task_id in inbox.results:
                yield inbox.results[task_id]
            while True:
                yield await watcher.get()
        finally:
            watchers = inbox.watchers.get(task_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del inbox.watchers[task_id]

    async def forget(self, task_id: str) -> None:
        inbox = self._inboxes.peek()
        if inbox is not None:
            inbox.results.pop(task_id, None)

    # -- the worker's side ------------------------------------------------------------------
    def expect_reply(self, task_id: str, reply_to: str) -> None:
        """The worker received a message naming its caller's queue."""
        self._reply_to[task_id] = reply_to

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        replies = [(task_id, data) for task_id, data in items if task_id in self._reply_to]
        if not replies:
            return  # sent by nobody waiting (no reply_to): rpc:// keeps nothing
        channel = await self._outbox()
        try:
            for task_id, data in replies:
                message = aio_pika.Message(data, headers={TASK_ID: task_id})
                with contextlib.suppress(aio_pika.exceptions.DeliveryError):  # the caller left
                    await channel.default_exchange.publish(
                        message, self._reply_to[task_id], mandatory=True
                    )
                if decode_record(data).state in READY_STATES:
                    del self._reply_to[task_id]  # after the publish: a retried store resends
        except CONNECTION_ERRORS as exc:  # the publisher retries while the message waits
            raise BackendConnectionError(f"rpc:// could not send a reply: {exc!r}") from exc

    async def _outbox(self) -> AbstractChannel:
        outbox = self._outboxes.get()
        async with outbox.lock:
            if outbox.channel is None or outbox.channel.is_closed:
                try:
                    outbox.channel = await self._broker.open_channel()
                except BrokerConnectionError as exc:  # a store error that may pass
                    raise BackendConnectionError(str(exc)) from exc
            return outbox.channel
