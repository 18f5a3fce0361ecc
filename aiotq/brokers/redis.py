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
consumer block (XREADGROUP COUNT 1 over all streams) to wait for new work.

A consumer reads with XREADGROUP (COUNT = free prefetch slots); a message stays in the
group's pending list, owned by that consumer, until XACK. Messages of a consumer that died
are taken over one at a time (XPENDING IDLE, then XCLAIM) once idle for the visibility
timeout; a live consumer
refreshes the idle time of the messages it still holds on every tick, so a long task is not
delivered twice. Due delayed messages move to the stream in one Lua script (atomic: each is
moved exactly once however many workers call it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis import exceptions as redis_errors

from .._backoff import Backoff
from .._loops import PerLoop
from .._redis import (
    CONNECTION_ERRORS,
    REDIS_ERRORS,
    LoopClients,
    retry_may_help,
    translate,
)
from ..exceptions import BrokerConnectionError, BrokerError, Transient
from ..protocol import BROKEN_ENVELOPE
from ..urls import mask_password
from ._redis_lua import MOVE_DUE, PURGE, READ_BY_PRIORITY, REQUEUE_DEAD, SETTLE
from .base import Consumer, Delivery, Outgoing, QueueStats, ack_many
from .bus import Subscription
from .redis_bus import RedisBus

log = logging.getLogger("aiotq.broker.redis")

GROUP = "aiotq"
Envelope = tuple[dict[str, str], bytes]
Entry = tuple[bytes, bytes, dict[bytes, bytes], int]  # stream, entry id, fields, times delivered
Token = tuple[str, bytes, bytes]  # a delivery's: its stream, entry id and envelope
_encode_envelope = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode

LEVELS = 10  # priorities 0-9
BLOCK_S = 1.0  # longest blocking read, so a stop or a cancellation is seen within it
MIN_ATTEMPT_S = 1.0  # the least a publish attempt may take, however small publish_retry_s


@dataclass(frozen=True, slots=True)
class QueueKeys:
    streams: tuple[str, ...]  # by priority level, 0..9
    delayed: str
    dead: str


@functools.cache
def keys(queue: str) -> QueueKeys:
    base = f"aiotq:{{{queue}}}"
    streams = (f"{base}:stream", *(f"{base}:stream:p{level}" for level in range(1, LEVELS)))
    return QueueKeys(streams, f"{base}:delayed", f"{base}:dead")


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A Lua reply gives an entry's fields as a flat list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _returned_before(fields: dict[bytes, bytes]) -> int:
    """Deliveries before this entry: a message given back is written anew, with its count."""
    try:
        return int(fields.get(b"r", b"0"))
    except ValueError:
        return 1


def level_of(priority: int | None) -> int:
    return min(max(priority or 0, 0), LEVELS - 1)


def _delivery(
    consumer: Consumer[Any],
    queue: str,
    stream: bytes,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    times: int,
) -> Delivery:
    envelope = fields.get(b"e", b"")
    try:
        headers, body = _decode_envelope(envelope)
    except Exception:  # msgspec also raises UnicodeDecodeError: any input must not kill us
        # Not ours to run; surface it to the worker as an undecodable body so it is
        # dead-lettered with a reason through the one rejection path.
        headers, body = {"content-type": BROKEN_ENVELOPE}, envelope
    count = _returned_before(fields) + times
    token: Token = (stream.decode(), entry_id, envelope)
    return Delivery(body, headers, queue, count > 1, count, token, consumer)


class _Held:
    """A pool connection kept for one loop's publishes: a producer sending one message after
    another skips the pool's checkout and release on every command (about a quarter of the
    cost of an awaited send). A command that fails or is cancelled drops the connection, so a
    reply is never read by the wrong caller; the next command reconnects.

    The connection is checked out by the first command, under the lock: concurrent first
    sends (a web app's first burst) share that one, instead of each taking one of the pool's
    that nobody gives back (a burst as large as the pool then waited for ever)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.connection: Any = None
        self.lock = asyncio.Lock()

    async def command(self, *args: Any) -> Any:
        async with self.lock:
            if self.connection is None:
                self.connection = await self.pool.get_connection()
            try:
                await self.connection.send_command(*args)
                return await self.connection.read_response()
            except BaseException:
                await asyncio.shield(self.connection.disconnect())
                raise


class _Streams:
    """The primitives of one consume() call: its consumer name in the groups, its own
    reader connection and the streams of its queues. A delivery's token is a `Token`."""

    def __init__(self, broker: RedisBroker, queues: Sequence[str], reader: Any) -> None:
        self.broker = broker
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reader = reader
        self.read_script = reader.register_script(READ_BY_PRIORITY)  # EVALSHA, not the text
        self.queues = list(dict.fromkeys(queues))
        # highest level first, so one read's answer comes back in priority order per queue
        self.queue_of = {
            stream.encode(): queue
            for queue in self.queues
            for stream in reversed(keys(queue).streams)
        }
        self.streams = [key.decode() for key in self.queue_of]

    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        try:
            entries = await self._read(room)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"redis connection lost: {exc}") from exc
        except redis_errors.ResponseError as exc:
            await self._after_refusal(exc)
            return []
        return [_delivery(consumer, self.queue_of[entry[0]], *entry) for entry in entries]

    async def _read(self, room: int) -> list[Entry]:
        broker, reader = self.broker, self.reader
        now = time.monotonic()
        if now - broker._last_claim > broker.visibility_timeout_s / 4:
            claimed = await self._claim_one()
            if claimed is not None:  # more may wait: claim again on the next read
                return [claimed]
            broker._last_claim = now
        share = -(-room // len(self.queues))
        per_queue: list[list[Entry]] = []
        for queue in self.queues:
            levels = list(reversed(keys(queue).streams))
            answer = await self.read_script(keys=levels, args=[GROUP, self.name, share])
            per_queue.append(
                [(stream, i, _fields(f), 1) for stream, entries in answer for i, f in entries]
            )
        if not any(per_queue):
            # all empty: wait for new work; a few may come back at once, at most one per stream
            response = await reader.xreadgroup(
                GROUP,
                self.name,
                dict.fromkeys(self.streams, ">"),
                count=1,
                block=int(BLOCK_S * 1000),
            )
            grouped: dict[str, list[Entry]] = {}
            for stream, entries in response or ():  # in the order asked: high levels first
                batch = grouped.setdefault(self.queue_of[stream], [])
                batch.extend((stream, i, f, 1) for i, f in entries)
            per_queue = list(grouped.values())
        out: list[Entry] = []
        for round_ in itertools.zip_longest(*per_queue):  # interleave the queues
            out.extend(entry for entry in round_ if entry is not None)
        return out

    async def _claim_one(self) -> Entry | None:
        """Take over one message idle past the visibility timeout (its consumer died), with
        the number of times it was delivered. One at a time: a message claimed but not run
        is counted as a delivery all the same, so a batch claimed with a poison message would
        be counted toward the limit with it every time it kills a worker."""
        reader = self.reader
        idle_ms = int(self.broker.visibility_timeout_s * 1000)
        for stream in self.streams:
            # XPENDING IDLE finds the candidates (with their counts) in one round trip,
            # however long the pending list; XCLAIM with the same idle time takes one only
            # if no other consumer took it meanwhile.
            idle = await reader.xpending_range(stream, GROUP, "-", "+", 10, idle=idle_ms)
            for entry in idle:
                entry_id = entry["message_id"]
                claimed = await reader.xclaim(stream, GROUP, self.name, idle_ms, [entry_id])
                for claimed_id, fields in claimed:
                    if fields:  # None when the entry was deleted meanwhile
                        times = int(entry["times_delivered"]) + 1  # XCLAIM counts this one
                        log.warning("took over message %s (delivery %d) from a consumer that"
                                    " stopped", claimed_id.decode(), times)  # fmt: skip
                        return stream.encode(), claimed_id, fields, times
        return None

    async def _after_refusal(self, exc: redis_errors.ResponseError) -> None:
        """A read Redis refused. The consumer group gone (a FLUSHDB, a restart without
        persistence, a stream deleted by hand): make it again and read on. Anything else
        (out of memory, loading) is a BrokerError: the consumer waits and reads again."""
        message = str(exc)
        if "NOGROUP" not in message and "no longer exists" not in message:
            raise BrokerError(f"redis refused a read: {exc}") from exc
        log.warning("the consumer group of %s is gone (Redis flushed or restarted?);"
                    " creating it again", ", ".join(self.queues))  # fmt: skip
        self.broker._declared.difference_update(self.queues)
        await self.broker.declare(self.queues)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """XACK + XDEL of a whole batch in one pipelined round trip."""
        by_stream: dict[str, list[bytes]] = {}
        for delivery in deliveries:
            stream, entry_id, _ = delivery.token
            by_stream.setdefault(stream, []).append(entry_id)
        clients = self.broker._clients
        async with clients.guarded(BrokerConnectionError):
            pipe = clients.get().pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        stream, entry_id, envelope = delivery.token
        returned = ["r", str(delivery.delivery_count)]  # times delivered, for the next count
        dead = keys(delivery.queue).dead
        target, extra = (stream, returned) if requeue else (dead, ["reason", reason])
        clients = self.broker._clients
        async with clients.guarded(BrokerConnectionError):
            await clients.get().eval(
                SETTLE, 2, stream, target, entry_id, envelope, GROUP, 100_000, *extra
            )

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)


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
    ) -> None:
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.publish_retry_s = publish_retry_s
        self._clients = LoopClients(url, pool_size, connect_timeout_s, socket_timeout_s)
        self._declared: set[str] = set()
        # consuming, or holding deliveries: tick() keeps their leases, aclose() returns them
        self._consumers: set[Consumer[_Streams]] = set()
        self._last_claim = 0.0
        self._held: PerLoop[_Held] = PerLoop(lambda: _Held(self._clients.get().connection_pool))
        self._bus = RedisBus(self._clients)

    def __repr__(self) -> str:
        return f"RedisBroker({mask_password(self.url)!r})"

    async def connect(self) -> None:
        async with self._clients.guarded(BrokerConnectionError):
            await self._clients.get().ping()

    async def aclose(self) -> None:
        """Return what this process still holds (a cold stop's cancelled tasks, results that
        could not be stored) at once, not after the visibility timeout, then disconnect."""
        for consumer in list(self._consumers):
            await consumer.return_held()
        self._consumers.clear()
        self._held.pop()  # closed with the pool just below
        await self._clients.aclose()

    async def declare(self, queues: Sequence[str]) -> None:
        client = self._clients.get()
        new = [queue for queue in queues if queue not in self._declared]
        if not new:
            return
        async with self._clients.guarded(BrokerConnectionError):
            pipe = client.pipeline(transaction=False)
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
        envelope = _encode_envelope((dict(headers), body))
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
                    client = self._clients.get()
                    if delay_s > 0:
                        due_ms = int((time.time() + delay_s) * 1000)
                        await client.zadd(queue_keys.delayed, {bytes([level]) + envelope: due_ms})
                        return
                    held = self._held.get()  # made before any await: one per loop
                    if held.lock.locked():  # concurrent sends: the pool serves the others
                        await client.xadd(queue_keys.streams[level], {"e": envelope})
                    else:
                        await held.command("XADD", queue_keys.streams[level], "*", "e", envelope)
                    return
            except REDIS_ERRORS as raw:
                backoff = backoff or Backoff(initial=0.05, cap=1.0)
                await asyncio.sleep(self._retry_delay(raw, bound, deadline, backoff))

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """One MULTI/EXEC pipeline: the batch is added whole or not at all, in one round trip
        (a retry after a lost reply may add it twice: at least once)."""
        if not messages:
            return
        deadline = time.monotonic() + self.publish_retry_s
        backoff: Backoff | None = None
        while True:
            bound = max(deadline - time.monotonic(), MIN_ATTEMPT_S)
            if self._clients.socket_timeout_s is not None:
                bound = min(bound, self._clients.socket_timeout_s)
            try:
                async with asyncio.timeout(bound):
                    pipe = self._clients.get().pipeline(transaction=True)
                    now_ms = time.time() * 1000
                    for out in messages:
                        envelope = _encode_envelope((dict(out.headers), out.body))
                        level = level_of(out.priority)
                        queue_keys = keys(out.queue)
                        if out.delay_s > 0:
                            due_ms = int(now_ms + out.delay_s * 1000)
                            pipe.zadd(queue_keys.delayed, {bytes([level]) + envelope: due_ms})
                        else:
                            pipe.xadd(queue_keys.streams[level], {"e": envelope})
                    await pipe.execute()
                    return
            except REDIS_ERRORS as raw:
                backoff = backoff or Backoff(initial=0.05, cap=1.0)
                await asyncio.sleep(self._retry_delay(raw, bound, deadline, backoff))

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
        reader = self._clients.dedicated(socket_timeout_s=BLOCK_S + 4)
        consumer = Consumer(_Streams(self, queues, reader), prefetch, on_ready)
        self._consumers.add(consumer)
        try:
            async with contextlib.aclosing(consumer.deliveries()) as deliveries:
                async for delivery in deliveries:
                    yield delivery
        finally:
            await reader.aclose()
            await reader.connection_pool.disconnect()

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)  # one XACK + XDEL pipeline per consume() call

    async def tick(self) -> None:
        client = self._clients.get()
        async with self._clients.guarded(BrokerConnectionError):
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
            pipe = self._clients.get().pipeline(transaction=False)
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
            pipe = self._clients.get().pipeline(transaction=False)
            for queue in queues:
                pipe.zrange(keys(queue).delayed, 0, limit - 1, withscores=True)
            answers = await pipe.execute()
        found: list[tuple[float, bytes]] = []
        for members in answers:
            for member, due_ms in members:
                with contextlib.suppress(Exception):  # a broken envelope is not listed
                    found.append((due_ms / 1000, _decode_envelope(member[1:])[1]))
        return sorted(found)[:limit]

    async def purge(self, queue: str) -> int:
        queue_keys = keys(queue)
        client = self._clients.get()
        async with self._clients.guarded(BrokerConnectionError):
            waiting = await client.eval(PURGE, len(queue_keys.streams), *queue_keys.streams, GROUP)
            pipe = client.pipeline(transaction=True)
            pipe.zcard(queue_keys.delayed)
            pipe.delete(queue_keys.delayed)
            delayed, _ = await pipe.execute()
        return int(waiting) + int(delayed)

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        queue_keys = keys(queue)
        async with self._clients.guarded(BrokerConnectionError):
            moved = await self._clients.get().eval(
                REQUEUE_DEAD, 2, queue_keys.dead, queue_keys.streams[0], limit
            )
        return int(moved)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        client = self._clients.get()
        async with self._clients.guarded(BrokerConnectionError):
            entries: Any = await client.xrange(keys(queue).dead, count=limit)
        out = []
        for _, fields in entries:
            try:
                body = _decode_envelope(fields[b"e"])[1]
            except Exception:
                body = fields[b"e"]
            out.append((body, fields.get(b"reason", b"").decode()))
        return out
