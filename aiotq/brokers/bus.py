"""The bus: small broadcast messages over the broker's own fan-out, for remote control, its
replies and events. Every broker writes the same two operations, and control and events are
written once on top of them:

- `post(topic, body, keep=, ttl_s=)` reaches every current subscriber of the topic. The
  broker keeps at most `keep` recent posts of a topic for `ttl_s` where it can, so a
  subscriber that reconnects (or one that asks for `replay`) sees what it missed, and
  nothing grows without bound when nobody listens.
- `subscribe(topic, replay=False)` returns once subscribed: whatever is posted after it
  returns is seen. `Subscription.next(timeout_s)` gives what arrived, oldest first, or []
  after waiting `timeout_s` (no wait is unbounded).

How each broker does it:
    redis    a capped stream per topic (XADD MAXLEN ~keep, PEXPIRE ttl), read with XREAD
             BLOCK from the last id seen: pushed at once, and a reconnect resumes where it was
    amqp     one topic exchange `aiotq.bus`; a subscriber binds an exclusive, auto-deleted,
             length-capped queue of its own (gone with its connection: no queue left behind)
    sqlite   a capped table read by id, woken by the database's doorbell
    memory   in-process, capped per topic

Topics: `control` (commands to workers), `reply.<id>` (one caller's replies), `events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Protocol

BUS_EXCHANGE = "aiotq.bus"


class Subscription(Protocol):
    async def next(self, timeout_s: float) -> list[bytes]:
        """What was posted since the last call, oldest first; [] after `timeout_s`."""
        ...

    async def aclose(self) -> None:
        """Stop listening; idempotent."""


class Bus(Protocol):
    """The part of a broker that control and events ride on (every broker has it)."""

    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None: ...

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription: ...


class Inbox:
    """A Subscription for brokers that push (memory, RabbitMQ): `push()` from any thread,
    `next()` on the subscriber's loop. Holds at most `cap` bodies (the oldest are dropped:
    a slow subscriber loses old events, never blocks the sender or grows)."""

    def __init__(self, cap: int = 10_000) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[bytes] = deque(maxlen=cap)
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def push(self, body: bytes) -> None:
        with self._lock:
            self._items.append(body)
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            if asyncio._get_running_loop() is self._loop:
                waiter.set_result(None)
            else:
                self._loop.call_soon_threadsafe(_resolve, waiter)

    def _take(self) -> list[bytes]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    async def next(self, timeout_s: float) -> list[bytes]:
        items = self._take()
        if items or self.closed:
            return items
        self._waiter = self._loop.create_future()
        try:
            items = self._take()  # re-checked with the waiter in place: no push is missed
            if items:
                return items
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._waiter
        finally:
            self._waiter = None
        return self._take()

    async def aclose(self) -> None:
        self.closed = True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class MemoryBus:
    """The memory broker's bus: topics in this process, capped; a topic is dropped once its
    last post is older than its TTL (reply topics come and go)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[deque[bytes], float, float]] = {}  # posts, ttl, last post
        self._subscribers: dict[str, set[Inbox]] = {}

    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        now = asyncio.get_running_loop().time()
        with self._lock:
            kept = self._kept.get(topic)
            posts = kept[0] if kept is not None and kept[0].maxlen == keep else deque(maxlen=keep)
            if kept is not None and posts is not kept[0]:
                posts.extend(kept[0])
            posts.append(body)
            self._kept[topic] = (posts, ttl_s, now)
            for name in [n for n, (_, ttl, at) in self._kept.items() if now - at > ttl]:
                del self._kept[name]
            subscribers = list(self._subscribers.get(topic, ()))
        for inbox in subscribers:
            inbox.push(body)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        inbox = _MemoryInbox(self, topic)
        with self._lock:
            self._subscribers.setdefault(topic, set()).add(inbox)
            kept = self._kept.get(topic)
            if replay and kept is not None:
                for body in kept[0]:
                    inbox.push(body)
        return inbox

    def _leave(self, topic: str, inbox: Inbox) -> None:
        with self._lock:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(inbox)
                if not subscribers:
                    del self._subscribers[topic]


class _MemoryInbox(Inbox):
    def __init__(self, bus: MemoryBus, topic: str) -> None:
        super().__init__()
        self._bus = bus
        self._topic = topic

    async def aclose(self) -> None:
        self.closed = True
        self._bus._leave(self._topic, self)
