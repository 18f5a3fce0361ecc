"""Redis broker in kombu's layout (`task_protocol = "celery"`): a Celery producer or worker
shares its queues. The producer and the worker above it see aiotq messages; this module
writes and reads Celery's protocol 2 (aiotq/celery_wire.py) in kombu's keys
(kombu/transport/redis.py):

    <queue>                   list of JSON envelopes, priority step 0 (LPUSH in, RPOP out)
    <queue>\\x06\\x163, ...6, ...9  the other priority steps (kombu's `priority_steps`); step 0
                              is taken first: on Redis, kombu's priority 0 is the highest
    unacked                   hash delivery_tag -> JSON [envelope, exchange, routing_key]
    unacked_index             sorted set delivery_tag -> when it was taken (epoch seconds)
    _kombu.binding.<exchange> set of `routing_key\\x06\\x16pattern\\x06\\x16queue` (written at
                              declare, so a Celery producer can route by exchange)

and two of aiotq's own, which kombu has not:

    aiotq:celery:{q}:delayed  sorted set of (step byte + envelope) by due time (ms): a
                              message whose `eta` is ahead waits here, not in a worker
    aiotq:celery:{q}:dead     stream of dead letters: `e` = envelope, `reason`

An envelope is kombu's JSON (celery_wire.Envelope). Taking a message moves it into `unacked`
in the same Lua script that pops it (kombu pops, then writes `unacked`). Only when every
list is empty does the consumer block on BRPOP, and the message it wakes with is recorded
the moment it comes back: a worker killed in that instant loses it, as a kombu worker would.
A message held past the visibility timeout (kombu's 3600 s unless set) is put back by any
worker's tick, Celery's or aiotq's; a live aiotq worker renews the `unacked_index` time of
what it holds. The scripts are in `_celery_redis_lua.py`. Sentinel works as for aiotq's own
layout; Redis Cluster does not (kombu's keys share no hash tag).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._backoff import Backoff
from .._redis import REDIS_ERRORS, LoopClients, close, translate
from ..celery_wire import (
    DELIVERED_HEADER,
    Envelope,
    delivery_count,
    iso,
    marked_redelivered,
)
from ..exceptions import BrokerConnectionError, MessageRejected, Transient
from ..routing import topic_matches
from ..urls import mask_password
from ._celery_redis_lua import DEAD, MOVE_DUE, PARK, RECORD, REQUEUE, REQUEUE_DEAD, RESTORE, TAKE
from .base import Consumer, Delivery, QueueStats, ack_many
from .bus import Subscription
from .redis_bus import RedisBus

log = logging.getLogger("aiotq.broker.celery_redis")

SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
BINDINGS = "_kombu.binding."
VISIBILITY_TIMEOUT_S = 3600.0  # kombu's default: what a Celery worker sharing Redis uses
BLOCK_S = 1.0
RESTORE_EVERY_S = 5.0


def delayed_key(queue: str) -> str:
    return f"aiotq:celery:{{{queue}}}:delayed"


def dead_key(queue: str) -> str:
    return f"aiotq:celery:{{{queue}}}:dead"


@dataclass(frozen=True, slots=True)
class Token:
    """A delivery's handle: its delivery tag, the envelope as taken, and its step's index."""

    tag: str
    envelope: bytes
    step: int


class _Lists:
    """The primitives of one consume() call: its queues' lists, highest step first."""

    def __init__(self, broker: CeleryRedisBroker, queues: Sequence[str], reader: Any) -> None:
        self.broker = broker
        self.reader = reader
        self.queues = list(dict.fromkeys(queues))
        self.take = reader.register_script(TAKE)
        self.record = reader.register_script(RECORD)
        self.turn = 0

    def _lists(self) -> list[tuple[str, str, int]]:
        """(list, queue, step index), step-major as kombu reads, the queues taken in turn."""
        start = self.turn % len(self.queues)
        self.turn += 1
        queues = self.queues[start:] + self.queues[:start]
        return [
            (self.broker.list_key(queue, index), queue, index)
            for index in range(len(self.broker.steps))
            for queue in queues
        ]

    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        lists = self._lists()
        keys = [UNACKED, UNACKED_INDEX]
        for key, queue, _ in lists:
            keys += [key, dead_key(queue)]
        async with self.broker._clients.guarded(BrokerConnectionError):
            taken = await self.take(keys=keys, args=[room, time.time()])
        found = []
        for index, envelope, tag in taken:
            where = lists[int(index)]
            if tag is None:
                log.error("Rejected message on %s: not a kombu envelope: %r", where[1],
                          envelope[:200])  # fmt: skip
            else:
                found.append((where, envelope, tag.decode()))
        if not found:
            found = await self._wait(lists)
        deliveries = []
        for (_, queue, step), envelope, tag in found:
            delivery = await self._delivery(consumer, queue, step, envelope, tag)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    async def _wait(self, lists: list[tuple[str, str, int]]) -> list[Any]:
        """Everything empty: block for the next message, then record it at once."""
        try:
            popped = await self.reader.brpop([key for key, _, _ in lists], timeout=BLOCK_S)
        except REDIS_ERRORS as exc:
            raise translate(self.broker.url, BrokerConnectionError, exc) from exc
        if not popped:
            return []
        key, envelope = popped[0].decode(), popped[1]
        where = next(entry for entry in lists if entry[0] == key)
        async with self.broker._clients.guarded(BrokerConnectionError):
            tag = await self.record(
                keys=[UNACKED, UNACKED_INDEX, dead_key(where[1])], args=[envelope, time.time()]
            )
        if not tag:
            log.error("Rejected message on %s: not a kombu envelope: %r", where[1],
                      envelope[:200])  # fmt: skip
            return []
        return [(where, envelope, tag.decode())]

    async def _delivery(
        self, consumer: Consumer[Any], queue: str, step: int, envelope: bytes, tag: str
    ) -> Delivery | None:
        token = Token(tag, envelope, step)
        try:
            payload = json.loads(envelope)
            body, headers, message = Envelope.read(payload, queue)
        except (MessageRejected, ValueError) as exc:
            reason = exc.reason if isinstance(exc, MessageRejected) else f"bad JSON: {exc}"
            log.error("Rejected Celery message on %s: %s", queue, reason)
            await self.broker._dead(queue, token, reason)
            return None
        if message.eta_at_s is not None and message.eta_at_s > time.time() + 0.05:
            await self.broker._park(queue, token, message.eta_at_s)
            return None
        count = delivery_count(payload)
        return Delivery(body, headers, queue, count > 1, count, token, consumer)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """kombu's ack: the tags leave `unacked` and its index, one round trip."""
        tags = [delivery.token.tag for delivery in deliveries]
        clients = self.broker._clients
        async with clients.guarded(BrokerConnectionError):
            pipe = (await clients.client()).pipeline(transaction=True)
            pipe.zrem(UNACKED_INDEX, *tags)
            pipe.hdel(UNACKED, *tags)
            await pipe.execute()

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        token: Token = delivery.token
        if requeue:  # back to the front, where it was taken from (kombu's restore)
            again = marked_redelivered(token.envelope, delivery.delivery_count)
            target = self.broker.steps_keys(delivery.queue)[token.step]
            await self.broker._eval(REQUEUE, [UNACKED, UNACKED_INDEX, target], token.tag, again)
        else:
            await self.broker._dead(delivery.queue, token, reason)

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)


class CeleryRedisBroker:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        visibility_timeout_s: float = VISIBILITY_TIMEOUT_S,
        publish_retry_s: float = 10.0,
        socket_timeout_s: float | None = 10.0,
        priority_steps: Sequence[int] = PRIORITY_STEPS,
        bindings: Mapping[str, tuple[str, str]] | None = None,
        transport_options: Mapping[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
    ) -> None:
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.publish_retry_s = publish_retry_s
        self.steps = sorted(priority_steps)
        self.bindings = dict(bindings or {})  # queue -> (exchange, routing key)
        self._clients = LoopClients(
            url, pool_size, connect_timeout_s, socket_timeout_s,
            transport_options=transport_options, wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
            cluster_refused="kombu's keys share no hash tag: task_protocol = 'celery' runs on"
            " one Redis (or Sentinel)",
        )  # fmt: skip
        self._declared: set[str] = set()
        self._consumers: set[Consumer[_Lists]] = set()
        self._last_restore = 0.0
        self._bus = RedisBus(self._clients)

    def __repr__(self) -> str:
        return f"CeleryRedisBroker({mask_password(self.url)!r})"

    # -- kombu's keys ---------------------------------------------------------------------
    def step_of(self, priority: int | None) -> int:
        """The index of kombu's priority step for a priority (`_q_for_pri`)."""
        return max(bisect.bisect(self.steps, priority or 0) - 1, 0)

    def list_key(self, queue: str, index: int) -> str:
        step = self.steps[index]
        return f"{queue}{SEP}{step}" if step else queue

    def steps_keys(self, queue: str) -> list[str]:
        return [self.list_key(queue, index) for index in range(len(self.steps))]

    async def _eval(self, script: str, keys: Sequence[str], *args: Any) -> Any:
        async with self._clients.guarded(BrokerConnectionError):
            return await (await self._clients.client()).eval(script, len(keys), *keys, *args)

    async def _dead(self, queue: str, token: Token, reason: str) -> None:
        keys = [UNACKED, UNACKED_INDEX, dead_key(queue)]
        await self._eval(DEAD, keys, token.tag, token.envelope, reason)

    async def _park(self, queue: str, token: Token, due_s: float) -> None:
        """An `eta` ahead: wait in our delayed set, not in a worker's memory (kombu's way)."""
        member = bytes([token.step]) + token.envelope
        keys = [UNACKED, UNACKED_INDEX, delayed_key(queue)]
        await self._eval(PARK, keys, token.tag, member, int(due_s * 1000))

    # -- the Broker protocol --------------------------------------------------------------
    async def connect(self) -> None:
        async with self._clients.guarded(BrokerConnectionError):
            await (await self._clients.client()).ping()

    async def aclose(self) -> None:
        for consumer in list(self._consumers):
            await consumer.return_held()
        self._consumers.clear()
        await self._clients.aclose()

    async def declare(self, queues: Sequence[str]) -> None:
        """kombu's binding of each queue (as a Celery worker writes it), so a Celery
        producer that publishes through the queue's exchange reaches it."""
        new = [queue for queue in queues if queue not in self._declared]
        if not new:
            return
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for queue in new:
                exchange, key = self.bindings.get(queue, (queue, queue))
                pipe.sadd(BINDINGS + exchange, SEP.join([key, "", queue]))
            await pipe.execute()
        self._declared.update(new)

    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None:
        """Celery's way: at once, with its `eta` in the message (a Celery worker waits for
        it; an aiotq worker parks it in the delayed set until due)."""
        payload = Envelope.write(body, headers.get("content-type", ""), queue, priority)
        if delay_s > 0 and payload["headers"].get("eta") is None:
            payload["headers"]["eta"] = iso(time.time() + delay_s)
        key = self.list_key(queue, self.step_of(priority))
        data = json.dumps(payload).encode()
        deadline = time.monotonic() + self.publish_retry_s
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            try:
                async with self._clients.guarded(BrokerConnectionError):
                    pipe = (await self._clients.client()).pipeline(transaction=False)
                    pipe.lpush(key, data)
                    waits = self._clients.wait(pipe)  # redis_wait_replicas: WAIT on this connection
                    self._clients.replicated(await pipe.execute(), waits)
                return
            except Transient as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise type(exc)(
                        f"cannot publish to Redis at {mask_password(self.url)} "
                        f"(gave up after {self.publish_retry_s:g}s): {exc}"
                    ) from exc
                await asyncio.sleep(min(backoff.delay(), left))

    async def publish_many(self, messages: Sequence[Any]) -> None:
        """A batch (brokers/base.py `Outgoing`: queue, body, headers, delay_s, priority),
        one message after another: each is converted to Celery's form on its own."""
        for out in messages:
            await self.publish(
                out.queue, out.body, out.headers, delay_s=out.delay_s, priority=out.priority
            )

    def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        return self._consume(queues, prefetch, on_ready)

    async def _consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None,
    ) -> AsyncIterator[Delivery]:
        await self.declare(queues)
        async with self._clients.guarded(BrokerConnectionError):
            reader = await self._clients.dedicated(socket_timeout_s=BLOCK_S + 4)
        consumer = Consumer(_Lists(self, queues, reader), prefetch, on_ready)
        self._consumers.add(consumer)
        try:
            async with contextlib.aclosing(consumer.deliveries()) as deliveries:
                async for delivery in deliveries:
                    yield delivery
        finally:
            await close(reader)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)

    async def tick(self) -> None:
        """Due delayed messages to their lists; renew what we hold; every few seconds, put
        back what any worker (Celery's too) held past the visibility timeout."""
        now = time.time()
        for queue in list(self._declared):
            keys = [delayed_key(queue), *self.steps_keys(queue)]
            await self._eval(MOVE_DUE, keys, int(now * 1000), 500)
        held = [d.token.tag for c in list(self._consumers) for d in list(c.held)]
        if held:
            async with self._clients.guarded(BrokerConnectionError):
                client = await self._clients.client()
                await client.zadd(UNACKED_INDEX, dict.fromkeys(held, now), xx=True)
        if now - self._last_restore >= RESTORE_EVERY_S:
            self._last_restore = now
            await self._restore_visible(now - self.visibility_timeout_s, set(held))

    async def _restore_visible(self, ceil: float, held: set[str]) -> None:
        async with self._clients.guarded(BrokerConnectionError):
            client: Any = await self._clients.client()
            stale = await client.zrangebyscore(UNACKED_INDEX, "-inf", ceil, start=0, num=100)
            for raw_tag in stale:
                tag = raw_tag.decode()
                if tag in held:
                    continue
                value = await client.hget(UNACKED, tag)
                if value is None:
                    await client.zrem(UNACKED_INDEX, tag)
                    continue
                await self._restore_one(client, tag, value, ceil)

    async def _restore_one(self, client: Any, tag: str, value: bytes, ceil: float) -> None:
        try:
            payload, exchange, routing_key = json.loads(value)
            before = (payload.get("headers") or {}).get(DELIVERED_HEADER)
            again = marked_redelivered(json.dumps(payload).encode(), (before or 0) + 1)
            step = self.step_of(payload["properties"].get("priority"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("cannot restore unacked message %s: %s; dropping its entry", tag, exc)
            await client.hdel(UNACKED, tag)
            await client.zrem(UNACKED_INDEX, tag)
            return
        queues = await self._lookup(client, exchange, routing_key)
        targets = [self.list_key(queue, step) for queue in queues]
        restored = await client.eval(
            RESTORE, 2 + len(targets), UNACKED, UNACKED_INDEX, *targets, tag, value, again, ceil
        )
        if restored:
            log.warning("restored message %s (held past the visibility timeout) to %s",
                        tag, ", ".join(queues))  # fmt: skip

    async def _lookup(self, client: Any, exchange: str, routing_key: str) -> list[str]:
        """kombu's `_lookup`: the default exchange routes by queue name, others by binding."""
        if not exchange:
            return [routing_key]
        members = await client.smembers(BINDINGS + exchange)
        queues = []
        for member in members:
            key, _, queue = member.decode().split(SEP, 2)
            if key == routing_key or topic_matches(key, routing_key):
                queues.append(queue)
        return queues or [routing_key]

    # -- the bus (bus.py): aiotq's own control and events ---------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._bus.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._bus.subscribe(topic, replay=replay)

    # -- administration -------------------------------------------------------------------
    async def queue_stats(self, queue: str) -> QueueStats:  # `unacked` is every queue's
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for key in self.steps_keys(queue):
                pipe.llen(key)
            pipe.zcard(delayed_key(queue))
            pipe.xlen(dead_key(queue))
            answers = await pipe.execute()
        *lengths, delayed, dead = answers
        return QueueStats(sum(lengths), delayed, None, dead)

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for queue in queues:
                pipe.zrange(delayed_key(queue), 0, limit - 1, withscores=True)
            answers = await pipe.execute()
        found: list[tuple[float, bytes]] = []
        for queue, members in zip(queues, answers, strict=True):
            for member, due_ms in members:
                with contextlib.suppress(MessageRejected, ValueError):
                    body, _, _ = Envelope.read(json.loads(member[1:]), queue)
                    found.append((due_ms / 1000, body))
        return sorted(found)[:limit]

    async def purge(self, queue: str) -> int:
        keys = [*self.steps_keys(queue), delayed_key(queue)]
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=True)
            for key in keys[:-1]:
                pipe.llen(key)
            pipe.zcard(keys[-1])
            pipe.delete(*keys)
            *counts, _ = await pipe.execute()
        return sum(counts)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        async with self._clients.guarded(BrokerConnectionError):
            client = await self._clients.client()
            entries: Any = await client.xrange(dead_key(queue), count=limit)
        out = []
        for _, fields in entries:
            envelope = fields.get(b"e", b"")
            try:
                body = Envelope.read(json.loads(envelope), queue)[0]
            except (MessageRejected, ValueError):
                body = envelope
            out.append((body, fields.get(b"reason", b"").decode()))
        return out

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        moved = 0
        async with self._clients.guarded(BrokerConnectionError):
            client = await self._clients.client()
            entries: Any = await client.xrange(dead_key(queue), count=limit)
            for entry_id, fields in entries:
                envelope = fields.get(b"e", b"")
                try:
                    payload = json.loads(envelope)
                    step = self.step_of(payload["properties"].get("priority"))
                    envelope = marked_redelivered(envelope, 1)
                except (ValueError, TypeError, KeyError, AttributeError):
                    step = 0  # not an envelope: it goes back as it was, and is refused again
                target = self.list_key(queue, step)
                await client.eval(REQUEUE_DEAD, 2, dead_key(queue), target, entry_id, envelope)
                moved += 1
        return moved


def celery_redis_broker(url: str, settings: Any) -> CeleryRedisBroker:
    """The broker of `task_protocol = "celery"` on Redis, from the app's settings: kombu's
    visibility timeout (3600 s) unless one is set (broker_transport_options, or
    broker_visibility_timeout_s other than aiotq's default), kombu's priority steps, and
    each task_queues entry's exchange and routing key for its binding."""
    from ..routing import Topology
    from ..settings import Settings

    options = settings.broker_transport_options
    visibility = options.get("visibility_timeout")
    if visibility is None and settings.broker_visibility_timeout_s != (
        Settings().broker_visibility_timeout_s  # aiotq's default: not meant for Celery's
    ):
        visibility = settings.broker_visibility_timeout_s
    topology = Topology(
        settings.task_queues, settings.task_default_queue, settings.task_default_exchange,
        settings.task_default_exchange_type, settings.task_default_routing_key,
    )  # fmt: skip
    return CeleryRedisBroker(
        url,
        pool_size=settings.broker_pool_size,
        connect_timeout_s=settings.broker_connection_timeout_s,
        visibility_timeout_s=float(visibility or VISIBILITY_TIMEOUT_S),
        publish_retry_s=settings.broker_publish_retry_s,
        socket_timeout_s=settings.broker_socket_timeout_s,
        priority_steps=options.get("priority_steps") or PRIORITY_STEPS,
        bindings={b.queue: (b.exchange, b.key) for b in topology.bindings.values()},
        transport_options=options,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_s=settings.redis_wait_timeout_s,
    )
