"""rpc:// result backend: results come back as messages to the caller's own reply queue.

For deployments with RabbitMQ and nothing else (Celery's rpc://). Each producer process and
event loop declares an exclusive, auto-deleted queue `aiotq.reply.<id>` and names it in every
message it sends (`reply_to`); the worker publishes the task's states there, and a waiting
`get()` wakes when one arrives.

What it cannot do, by design: results are not kept anywhere but in the memory of the process
that sent the task, so only that process (and that event loop) can fetch them, `AsyncResult(id)`
from elsewhere never completes, and results that arrive while the caller is disconnected are
lost. It holds no counters or leases, so chords and beat need a backend that keeps results
(redis://, sqlite://); they refuse rpc:// with an error that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from ..exceptions import BackendError, ConfigurationError
from ..protocol import READY_STATES, decode_record

TASK_ID = "x-aiotq-task-id"


@dataclass(eq=False)
class _Inbox:
    """One loop's reply queue and what has arrived in it."""

    queue: str
    connection: Any
    channel: Any
    results: dict[str, bytes] = field(default_factory=dict)
    watchers: dict[str, set[asyncio.Queue[bytes]]] = field(default_factory=dict)


class RpcBackend:
    keeps_results = False  # see the module's docstring

    def __init__(self, url: str, broker: Any) -> None:
        if not str(getattr(broker, "url", "")).startswith(("amqp://", "amqps://")):
            raise ConfigurationError("the rpc:// result backend needs an amqp:// broker")
        self.url = url
        self._broker = broker
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
            weakref.WeakKeyDictionary()
        )
        self._reply_to: dict[str, str] = {}  # worker side: task id -> the caller's queue

    def __repr__(self) -> str:
        return "RpcBackend('rpc://')"

    async def connect(self) -> None:
        return None  # the broker's connection is used

    async def aclose(self) -> None:
        inbox = self._inboxes.pop(asyncio.get_running_loop(), None)
        if inbox is not None:
            with contextlib.suppress(Exception):
                await inbox.channel.close()

    # -- the caller's side ------------------------------------------------------------------
    async def reply_to(self) -> str:
        """The reply queue of this process and loop (declared on first use)."""
        return (await self._inbox()).queue

    async def _inbox(self) -> _Inbox:
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            link = await self._broker._link()
            channel = await link.connection.channel()
            name = f"aiotq.reply.{uuid.uuid4().hex}"
            queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            inbox = self._inboxes.setdefault(loop, _Inbox(name, link.connection, channel))
            await queue.consume(lambda message: self._arrived(inbox, message), no_ack=True)
        return inbox

    async def _arrived(self, inbox: _Inbox, message: AbstractIncomingMessage) -> None:
        task_id = str((message.headers or {}).get(TASK_ID, ""))
        inbox.results[task_id] = message.body
        for watcher in inbox.watchers.get(task_id, ()):
            watcher.put_nowait(message.body)

    async def get(self, task_id: str) -> bytes | None:
        inbox = self._inboxes.get(asyncio.get_running_loop())
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
            inbox.watchers[task_id].discard(watcher)

    async def forget(self, task_id: str) -> None:
        inbox = self._inboxes.get(asyncio.get_running_loop())
        if inbox is not None:
            inbox.results.pop(task_id, None)

    # -- the worker's side ------------------------------------------------------------------
    def expect_reply(self, task_id: str, reply_to: str) -> None:
        """The worker received a message naming its caller's queue."""
        self._reply_to[task_id] = reply_to

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        link = await self._broker._link()
        for task_id, data in items:
            queue = self._reply_to.get(task_id)
            if queue is None:
                continue  # sent by nobody waiting (no reply_to): rpc:// keeps nothing
            if decode_record(data).state in READY_STATES:
                del self._reply_to[task_id]
            message = aio_pika.Message(data, headers={TASK_ID: task_id})
            with contextlib.suppress(aio_pika.exceptions.DeliveryError):  # the caller left
                await link.channel.default_exchange.publish(message, queue, mandatory=True)

    async def incr(self, key: str, ttl_s: float) -> int:
        raise BackendError(_CANNOT.format(what="chord counters"))

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        raise BackendError(_CANNOT.format(what="beat's leader lease"))

    async def release(self, name: str, holder: str) -> None:
        return None


_CANNOT = (
    "the rpc:// result backend keeps nothing, so it cannot hold {what}: use redis:// or sqlite://"
)
