"""Redis broker on Streams with one consumer group per queue.

Key layout (every key of a queue shares the hash tag `{queue}`, so it works on Cluster):

    aiotq:{q}:stream      ready messages of priority 0, field `e` = envelope (msgpack
                          [headers, body]), `r` = 1 when it was returned to the queue
    aiotq:{q}:stream:pN   the same for priority N (1-9); higher levels are handed out first
    aiotq:{q}:delayed     sorted set of (priority byte + envelope) scored by due time in ms
    aiotq:{q}:dead        stream of dead letters: fields `e` and `reason`

Priorities: a read runs one Lua script per queue that takes from the levels high to low
until its share of the free prefetch slots is spent, so a higher level is always taken
first; queues get equal shares and are interleaved, so a queue that only has low-priority
work is not starved by a busy one. Only when every level of every queue is empty does the
consumer block (XREADGROUP COUNT 1 over all streams) to wait for new work; on a Redis Cluster
a command cannot span queues of different slots, so a consumer of several queues waits with
one XREAD per queue at once (redis_streams.Streams._ring).

A consumer reads with XREADGROUP (COUNT = free prefetch slots); a message stays in the
group's pending list, owned by that consumer, until XACK. Messages of a consumer that died
are taken over one at a time (XPENDING IDLE, then XCLAIM) once idle for the visibility
timeout; a live consumer
refreshes the idle time of the messages it still holds on every tick, so a long task is not
delivered twice. Due delayed messages move to the stream in one Lua script (atomic: each is
moved exactly once however many workers call it). Every script touches one queue's keys
(one slot), except a batch of sends off a Cluster: one script for the whole batch.
The consumer's side is in redis_streams.py, the scripts in _redis_lua.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors

from .._backoff import Backoff
from .._loops import PerLoop
from .._redis import REDIS_ERRORS, LoopClients, retry_may_help, translate
from ..exceptions import BrokerConnectionError, Transient
from ..urls import mask_password
from ._redis_lua import ADD_MANY, MOVE_DUE, PURGE, REQUEUE_DEAD
from .base import Consumer, Delivery, Outgoing, QueueStats, ack_many
from .bus import Subscription
from .redis_bus import RedisBus
from .redis_streams import (
    BLOCK_S,
    GROUP,
    LEVELS,
    QueueKeys,
    Streams,
    decode_envelope,
    encode_envelope,
    keys,
    level_of,
)

MIN_ATTEMPT_S = 1.0  # the least a publish attempt may take, however small publish_retry_s


class _Held:
    """A pool connection kept for one loop's publishes: a producer sending one message after
    another skips the pool's checkout and release on every command (about a quarter of the
    cost of an awaited send). A command that fails or is cancelled drops the connection, so a
    reply is never read by the wrong caller; the next command reconnects.

    The connection is checked out by the first command, under the lock: concurrent first
    sends (a web app's first burst) share that one, instead of each taking one of the pool's
    that nobody gives back (a burst as large as the pool then waited for ever)."""

    def __init__(self, clients: LoopClients) -> None:
        self.clients = clients
        self.connection: Any = None
        self.lock = asyncio.Lock()

    async def command(self, *args: Any) -> Any:
        async with self.lock:
            if self.connection is None:
                pool = (await self.clients.client()).connection_pool
                self.connection = await pool.get_connection()
            try:
                await self.connection.send_command(*args)
                return await self.connection.read_response()
            except BaseException:
                await asyncio.shield(self.connection.disconnect())
                raise


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        visibility_timeout_s: float = 60.0,
        publish_retry_s: float = 10.0,
        socket_timeout_s: float | None = 10.0,
        transport_options: Mapping[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
    ) -> None:
        """`transport_options`: Celery's broker_transport_options (a sentinel:// URL's
        master_name and sentinel_kwargs); `wait_replicas`: a send returns once that many
        replicas have the message (WAIT), see docs/deployment.md."""
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.publish_retry_s = publish_retry_s
        self._clients = LoopClients(
            url, pool_size, connect_timeout_s, socket_timeout_s,
            transport_options=transport_options, wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
        )  # fmt: skip
        self._declared: set[str] = set()
        # consuming, or holding deliveries: tick() keeps their leases, aclose() returns them
        self._consumers: set[Consumer[Streams]] = set()
        self._last_claim = 0.0
        self._held: PerLoop[_Held] = PerLoop(lambda: _Held(self._clients))
        self._bus = RedisBus(self._clients)

    def __repr__(self) -> str:
        return f"RedisBroker({mask_password(self.url)!r})"

    async def connect(self) -> None:
        async with self._clients.guarded(BrokerConnectionError):
            await (await self._clients.client()).ping()

    async def aclose(self) -> None:
        """Return what this process still holds (a cold stop's cancelled tasks, results that
        could not be stored) at once, not after the visibility timeout, then disconnect."""
        for consumer in list(self._consumers):
            await consumer.return_held()
        self._consumers.clear()
        self._held.pop()  # closed with the pool just below
        await self._clients.aclose()

    async def declare(self, queues: Sequence[str]) -> None:
        new = [queue for queue in queues if queue not in self._declared]
        if not new:
            return
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for queue in new:
                for stream in keys(queue).streams:
                    pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for answer in await pipe.execute(raise_on_error=False):
                if isinstance(answer, Exception) and "BUSYGROUP" not in str(answer):
                    raise answer
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
        envelope = encode_envelope((dict(headers), body))
        level = level_of(priority)
        queue_keys = keys(queue)
        deadline = time.monotonic() + self.publish_retry_s
        backoff: Backoff | None = None  # made on the first failure: not on the hot path
        while True:
            # Each attempt gets what is left of the deadline (MIN_ATTEMPT_S at least): a
            # server that accepts and never answers must not hold a send past the bound.
            bound = max(deadline - time.monotonic(), MIN_ATTEMPT_S)
            if self._clients.socket_timeout_s is not None:
                bound = min(bound, self._clients.socket_timeout_s)
            try:  # translate() inline, not translated(): this is the producer's hot path
                async with asyncio.timeout(bound):
                    client = await self._clients.client()
                    if self._clients.wait_replicas:  # on the connection that WAITs after it
                        pipe = client.pipeline(transaction=False)
                        written = self._add(pipe, queue_keys, level, envelope, delay_s)
                        waits = self._clients.wait(pipe, [written])
                        self._clients.replicated(await pipe.execute(), waits)
                        return
                    if delay_s > 0:
                        due_ms = int((time.time() + delay_s) * 1000)
                        await client.zadd(queue_keys.delayed, {bytes([level]) + envelope: due_ms})
                        return
                    held = self._held.get()
                    # concurrent sends: the pool serves the others; a Cluster has no one pool
                    if held.lock.locked() or self._clients.cluster:
                        await client.xadd(queue_keys.streams[level], {"e": envelope})
                    else:
                        await held.command("XADD", queue_keys.streams[level], "*", "e", envelope)
                    return
            except REDIS_ERRORS as raw:
                backoff = backoff or Backoff(initial=0.05, cap=1.0)
                await asyncio.sleep(self._retry_delay(raw, bound, deadline, backoff))

    @staticmethod
    def _add(pipe: Any, queue_keys: QueueKeys, level: int, envelope: bytes, delay_s: float) -> str:
        """Queue the write of one message on a pipeline; the key it writes."""
        if delay_s > 0:
            due_ms = int((time.time() + delay_s) * 1000)
            pipe.zadd(queue_keys.delayed, {bytes([level]) + envelope: due_ms})
            return queue_keys.delayed
        pipe.xadd(queue_keys.streams[level], {"e": envelope})
        return queue_keys.streams[level]

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """One script (ADD_MANY): the batch is added whole or not at all, in one round trip
        (a retry after a lost reply may add it twice: at least once). On a Cluster, one
        script per queue (a slot each), pipelined: each queue's part whole or not at all."""
        if not messages:
            return
        deadline = time.monotonic() + self.publish_retry_s
        backoff: Backoff | None = None
        client = None
        batches: dict[str, tuple[list[str], list[Any]]] = {}  # by queue (Cluster) or one
        now_ms = time.time() * 1000
        while True:
            bound = max(deadline - time.monotonic(), MIN_ATTEMPT_S)
            if self._clients.socket_timeout_s is not None:
                bound = min(bound, self._clients.socket_timeout_s)
            try:
                async with asyncio.timeout(bound):
                    client = client or await self._clients.client()  # Cluster or not: known
                    batches = batches or self._batches(messages, now_ms)
                    pipe = client.pipeline(transaction=False)
                    for script_keys, args in batches.values():
                        pipe.eval(ADD_MANY, len(script_keys), *script_keys, *args)
                    written = [script_keys[0] for script_keys, _ in batches.values()]
                    waits = self._clients.wait(pipe, written)
                    self._clients.replicated(await pipe.execute(), waits)
                    return
            except REDIS_ERRORS as raw:
                backoff = backoff or Backoff(initial=0.05, cap=1.0)
                await asyncio.sleep(self._retry_delay(raw, bound, deadline, backoff))

    def _batches(
        self, messages: Sequence[Outgoing], now_ms: float
    ) -> dict[str, tuple[list[str], list[Any]]]:
        """ADD_MANY's keys and arguments: one script for the batch, or one per queue."""
        batches: dict[str, tuple[list[str], list[Any]]] = {}
        index: dict[str, int] = {}  # a queue's place among its script's queues
        for out in messages:
            batch = out.queue if self._clients.cluster else ""
            script_keys, args = batches.setdefault(batch, ([], []))
            if out.queue not in index:
                index[out.queue] = len(script_keys) // (1 + LEVELS)
                script_keys += [keys(out.queue).delayed, *keys(out.queue).streams]
            due_ms = int(now_ms + out.delay_s * 1000) if out.delay_s > 0 else 0
            envelope = encode_envelope((dict(out.headers), out.body))
            args += [index[out.queue], level_of(out.priority), due_ms, envelope]
        return batches

    def _retry_delay(
        self, raw: Exception, bound: float, deadline: float, backoff: Backoff
    ) -> float:
        """How long to wait before publishing again, or the error that ends the publish."""
        exc = translate(self.url, BrokerConnectionError, raw, bound)
        if not isinstance(exc, Transient):
            raise exc from raw
        # unreachable, or up but refusing for now: retried until the deadline
        left = deadline - time.monotonic()  # retried for the whole bound, no less
        if left <= 0 or not retry_may_help(raw):
            waited = self.publish_retry_s - left
            reason = str(raw) or str(exc)
            raise type(exc)(
                f"cannot publish to Redis at {mask_password(self.url)} "
                f"(gave up after {waited:.1f}s): {reason}"
            ) from raw
        return min(backoff.delay(), left)

    async def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        await self.declare(queues)
        async with self._clients.guarded(BrokerConnectionError):  # a Cluster's reads the
            # queues' slots at once (`_ring`): a connection each, on their nodes
            reader = await self._clients.dedicated(BLOCK_S + 4, connections=len(queues) + 1)
        streams = Streams(self, queues, reader)
        consumer = Consumer(streams, prefetch, on_ready)
        self._consumers.add(consumer)
        try:
            async with contextlib.aclosing(consumer.deliveries()) as deliveries:
                async for delivery in deliveries:
                    yield delivery
        finally:
            await streams.stop_ringing()  # and closes the reader

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)  # one XACK + XDEL pipeline per consume() call

    async def tick(self) -> None:
        async with self._clients.guarded(BrokerConnectionError):
            client = await self._clients.client()
            for queue in list(self._declared):  # a gone group's queues leave it meanwhile
                queue_keys = keys(queue)
                await client.eval(
                    MOVE_DUE,
                    1 + LEVELS,
                    queue_keys.delayed,
                    *queue_keys.streams,
                    int(time.time() * 1000),
                    500,
                )
            await self._refresh_leases(client)

    async def _refresh_leases(self, client: Any) -> None:
        """Reset the idle time of messages a live consumer still holds (XCLAIM to itself)."""
        for consumer in list(self._consumers):
            by_stream: dict[str, list[bytes]] = {}
            for delivery in list(consumer.held):
                stream, entry_id, _ = delivery.token
                by_stream.setdefault(stream, []).append(entry_id)
            name = consumer.primitives.name
            for stream, ids in by_stream.items():
                # JUSTID: the idle time is reset without counting a delivery
                try:
                    await client.xclaim(stream, GROUP, name, 0, ids, justid=True)
                except redis_errors.ResponseError as exc:
                    if "NOGROUP" not in str(exc):  # gone with a flush: nothing left to keep
                        raise

    # -- the bus (bus.py): control, replies, events ----------------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._bus.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._bus.subscribe(topic, replay=replay)

    async def queue_stats(self, queue: str) -> QueueStats:
        queue_keys = keys(queue)
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for stream in queue_keys.streams:
                pipe.xlen(stream)
                pipe.xpending(stream, GROUP)
            pipe.zcard(queue_keys.delayed)
            pipe.xlen(queue_keys.dead)
            answers = await pipe.execute(raise_on_error=False)
        total = pending = 0
        for length, summary in zip(answers[0:-2:2], answers[1:-2:2], strict=True):
            total += length if isinstance(length, int) else 0
            if isinstance(summary, dict):  # NOGROUP (never declared) is an error: none
                pending += int(summary.get("pending") or 0)
        delayed, dead = (a if isinstance(a, int) else 0 for a in answers[-2:])
        return QueueStats(total - pending, delayed, pending, dead)

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for queue in queues:
                pipe.zrange(keys(queue).delayed, 0, limit - 1, withscores=True)
            answers = await pipe.execute()
        found: list[tuple[float, bytes]] = []
        for members in answers:
            for member, due_ms in members:
                with contextlib.suppress(Exception):  # a broken envelope is not listed
                    found.append((due_ms / 1000, decode_envelope(member[1:])[1]))
        return sorted(found)[:limit]

    async def purge(self, queue: str) -> int:
        queue_keys = keys(queue)
        purged = (*queue_keys.streams, queue_keys.delayed)
        async with self._clients.guarded(BrokerConnectionError):
            dropped = await (await self._clients.client()).eval(PURGE, len(purged), *purged, GROUP)
        return int(dropped)

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        queue_keys = keys(queue)
        async with self._clients.guarded(BrokerConnectionError):
            moved = await (await self._clients.client()).eval(
                REQUEUE_DEAD, 2, queue_keys.dead, queue_keys.streams[0], limit
            )
        return int(moved)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        async with self._clients.guarded(BrokerConnectionError):
            client = await self._clients.client()
            entries: Any = await client.xrange(keys(queue).dead, count=limit)
        out = []
        for _, fields in entries:
            try:
                body = decode_envelope(fields[b"e"])[1]
            except Exception:
                body = fields[b"e"]
            out.append((body, fields.get(b"reason", b"").decode()))
        return out
