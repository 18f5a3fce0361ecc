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
are taken over with XAUTOCLAIM once idle for the visibility timeout; a live consumer
refreshes the idle time of the messages it still holds on every tick, so a long task is not
delivered twice. Due delayed messages move to the stream in one Lua script (atomic: each is
moved exactly once however many workers call it).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .._redis import CONNECTION_ERRORS, LoopClients, retry_may_help, translated
from ..exceptions import BrokerConnectionError
from ..protocol import BROKEN_ENVELOPE
from ..urls import mask_password
from .base import InWindow, Prefetch

log = logging.getLogger("aiotq.broker.redis")

GROUP = "aiotq"
Envelope = tuple[dict[str, str], bytes]
_encode_envelope = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode

LEVELS = 10  # priorities 0-9
BLOCK_S = 1.0  # longest blocking read, so a stop or a cancellation is seen within it

# KEYS: one queue's streams, highest level first. Take up to ARGV[3] in that order.
READ_BY_PRIORITY = """
local budget = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if budget <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', budget,
                         'STREAMS', key, '>')
  if got then
    table.insert(out, got[1])
    budget = budget - #got[1][2]
  end
end
return out
"""

# KEYS: delayed, then the streams of levels 0..9. A member's first byte is its level.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2 + string.byte(member, 1)], '*', 'e', string.sub(member, 2))
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
"""

# Move the oldest dead letters back to the stream, atomically.
REQUEUE_DEAD = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then redis.call('XADD', KEYS[2], '*', 'e', fields[i + 1], 'r', '1') end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
return #entries
"""

# Move one pending entry elsewhere (requeue or dead letter) and ack it, atomically.
SETTLE = """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2], unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""


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


def _honour_cancellation() -> None:
    """If a library below swallowed our CancelledError, the request is still on the task:
    act on it here rather than read on (seen with a read cancelled mid-command)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A Lua reply gives an entry's fields as a flat list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def level_of(priority: int | None) -> int:
    return min(max(priority or 0, 0), LEVELS - 1)


@dataclass(slots=True, eq=False)
class RedisDelivery(InWindow):
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    stream: str
    entry_id: bytes
    envelope: bytes
    _consumer: _Consumer
    _settled: bool = False
    _window: Prefetch | None = None

    # Settled only once the broker confirmed, so a failed ack can be retried.
    async def ack(self) -> None:
        await self._consumer.broker.ack_many([self])

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        if not self._settled:
            await self._consumer.broker._settle(self, requeue, reason or "rejected")
            self._done()

    def _done(self) -> None:
        self._settled = True
        self.finished()
        self._consumer.held.pop(self.entry_id, None)


class _Held:
    """A pool connection kept for one loop's publishes: a producer sending one message after
    another skips the pool's checkout and release on every command (about a quarter of the
    cost of an awaited send). A command that fails or is cancelled drops the connection, so a
    reply is never read by the wrong caller; the next command reconnects."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.lock = asyncio.Lock()

    async def command(self, *args: Any) -> Any:
        async with self.lock:
            try:
                await self.connection.send_command(*args)
                return await self.connection.read_response()
            except BaseException:
                await asyncio.shield(self.connection.disconnect())
                raise


class _Consumer:
    """Bookkeeping of one consume() call: its name, its prefetch window and the messages it
    holds (read and not yet settled), whose leases the tick refreshes."""

    def __init__(
        self, broker: RedisBroker, queues: Sequence[str], prefetch: int, reader: Any
    ) -> None:
        self.broker = broker
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held: dict[bytes, RedisDelivery] = {}
        self.slot_freed = asyncio.Event()
        self.window = Prefetch(prefetch, self.slot_freed.set)
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

    def free_slots(self) -> int:
        return self.window.free()

    async def wait_until(self, has_room: Callable[[], bool]) -> None:
        while not has_room():
            self.slot_freed.clear()
            await self.slot_freed.wait()


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        visibility_timeout_s: float = 60.0,
        publish_retry_s: float = 10.0,
    ) -> None:
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.publish_retry_s = publish_retry_s
        self._clients = LoopClients(url, pool_size, connect_timeout_s)
        self._declared: set[str] = set()
        self._consumers: set[_Consumer] = set()
        self._last_claim = 0.0
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Held] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"RedisBroker({mask_password(self.url)!r})"

    async def connect(self) -> None:
        async with translated(self.url, BrokerConnectionError):
            await self._clients.get().ping()

    async def aclose(self) -> None:
        """Return what this process still holds on the current loop, then disconnect."""
        for consumer in list(self._consumers):
            await self._return(consumer.held.values())
        self._held.pop(asyncio.get_running_loop(), None)  # closed with the pool just below
        await self._clients.aclose()

    async def declare(self, queues: Sequence[str]) -> None:
        client = self._clients.get()
        new = [queue for queue in queues if queue not in self._declared]
        if not new:
            return
        async with translated(self.url, BrokerConnectionError):
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
        backoff = 0.05
        while True:
            try:
                client = self._clients.get()
                if delay_s > 0:
                    due_ms = int((time.time() + delay_s) * 1000)
                    await client.zadd(queue_keys.delayed, {bytes([level]) + envelope: due_ms})
                    return
                held = self._held.get(asyncio.get_running_loop())
                if held is None:
                    held = _Held(await client.connection_pool.get_connection())
                    self._held[asyncio.get_running_loop()] = held
                if held.lock.locked():  # concurrent sends: the pool serves the others
                    await client.xadd(queue_keys.streams[level], {"e": envelope})
                else:
                    await held.command("XADD", queue_keys.streams[level], "*", "e", envelope)
                return
            except CONNECTION_ERRORS as exc:
                if time.monotonic() + backoff > deadline or not retry_may_help(exc):
                    waited = time.monotonic() - deadline + self.publish_retry_s
                    raise BrokerConnectionError(
                        f"cannot publish to Redis at {mask_password(self.url)} "
                        f"(gave up after {waited:.1f}s): {exc}"
                    ) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def consume(self, queues: Sequence[str], prefetch: int) -> AsyncIterator[RedisDelivery]:
        await self.declare(queues)
        reader = self._clients.dedicated(socket_timeout_s=BLOCK_S + 4)
        consumer = _Consumer(self, queues, prefetch, reader)
        self._consumers.add(consumer)
        fetched: deque[RedisDelivery] = deque()  # read, not yet handed out
        backoff = 0.1
        try:
            while True:
                _honour_cancellation()
                if not fetched:
                    await consumer.wait_until(lambda: consumer.free_slots() > 0)
                    try:
                        entries = await self._read(consumer)
                        backoff = 0.1
                    except CONNECTION_ERRORS as exc:
                        log.warning("redis connection lost (%s); retrying in %.1fs", exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    for stream, entry_id, fields, redelivered in entries:
                        queue = consumer.queue_of[stream]
                        delivery = self._delivery(consumer, queue, stream, entry_id, fields)
                        delivery.redelivered = redelivered or b"r" in fields
                        delivery._window = consumer.window.take()
                        consumer.held[entry_id] = delivery
                        fetched.append(delivery)
                    continue
                yield fetched.popleft()
        finally:
            # Handed-out deliveries stay valid (a warm shutdown lets them finish); what was
            # read but never handed out goes back now rather than after the visibility timeout.
            self._consumers.discard(consumer)
            await self._return(fetched)
            await reader.aclose()
            await reader.connection_pool.disconnect()

    async def _read(
        self, consumer: _Consumer
    ) -> list[tuple[bytes, bytes, dict[bytes, bytes], bool]]:
        reader, streams, queue_of = consumer.reader, consumer.streams, consumer.queue_of
        out: list[tuple[bytes, bytes, dict[bytes, bytes], bool]] = []
        now = time.monotonic()
        if now - self._last_claim > self.visibility_timeout_s / 4:
            self._last_claim = now
            idle_ms = int(self.visibility_timeout_s * 1000)
            for stream in streams:
                claimed = await reader.xautoclaim(
                    stream, GROUP, consumer.name, idle_ms, "0-0", count=consumer.free_slots()
                )
                for entry_id, fields in claimed[1]:
                    if fields:  # None when the entry was deleted meanwhile
                        out.append((stream.encode(), entry_id, fields, True))
            if out:
                log.warning("took over %d message(s) from a consumer that stopped", len(out))
                return out
        share = -(-consumer.free_slots() // len(consumer.queues))
        per_queue: list[list[tuple[bytes, bytes, dict[bytes, bytes], bool]]] = []
        for queue in consumer.queues:
            levels = list(reversed(keys(queue).streams))
            answer = await consumer.read_script(keys=levels, args=[GROUP, consumer.name, share])
            per_queue.append(
                [(stream, i, _fields(f), False) for stream, entries in answer for i, f in entries]
            )
        if not any(per_queue):
            # all empty: wait for new work; a few may come back at once, at most one per stream
            response = await reader.xreadgroup(
                GROUP,
                consumer.name,
                dict.fromkeys(streams, ">"),
                count=1,
                block=int(BLOCK_S * 1000),
            )
            grouped: dict[str, list[tuple[bytes, bytes, dict[bytes, bytes], bool]]] = {}
            for stream, entries in response or ():  # in the order asked: high levels first
                batch = grouped.setdefault(queue_of[stream], [])
                batch.extend((stream, i, f, False) for i, f in entries)
            per_queue = list(grouped.values())
        for round_ in itertools.zip_longest(*per_queue):  # interleave the queues
            out.extend(entry for entry in round_ if entry is not None)
        return out

    def _delivery(
        self,
        consumer: _Consumer,
        queue: str,
        stream: bytes,
        entry_id: bytes,
        fields: dict[bytes, bytes],
    ) -> RedisDelivery:
        envelope = fields.get(b"e", b"")
        try:
            headers, body = _decode_envelope(envelope)
        except Exception:  # msgspec also raises UnicodeDecodeError: any input must not kill us
            # Not ours to run; surface it to the worker as an undecodable body so it is
            # dead-lettered with a reason through the one rejection path.
            headers, body = {"content-type": BROKEN_ENVELOPE}, envelope
        return RedisDelivery(
            body, headers, queue, False, stream.decode(), entry_id, envelope, consumer
        )

    async def ack_many(self, deliveries: Sequence[RedisDelivery]) -> None:
        """XACK + XDEL of a whole batch in one pipelined round trip."""
        pending = [d for d in deliveries if not d._settled]
        if not pending:
            return
        by_stream: dict[str, list[bytes]] = {}
        for delivery in pending:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        async with translated(self.url, BrokerConnectionError):
            pipe = self._clients.get().pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()
        for delivery in pending:
            delivery._done()

    async def _settle(self, delivery: RedisDelivery, requeue: bool, reason: str) -> None:
        stream, dead = delivery.stream, keys(delivery.queue).dead
        target, extra = (stream, ["r", "1"]) if requeue else (dead, ["reason", reason])
        async with translated(self.url, BrokerConnectionError):
            await self._clients.get().eval(
                SETTLE,
                2,
                stream,
                target,
                delivery.entry_id,
                delivery.envelope,
                GROUP,
                100_000,
                *extra,
            )

    async def _return(self, deliveries: Iterable[RedisDelivery]) -> None:
        for delivery in list(deliveries):
            try:
                await delivery.reject(requeue=True)
            except BrokerConnectionError:
                # still in the pending list: another worker claims it after the timeout
                log.warning("could not return message %s; it will be reclaimed", delivery.entry_id)

    async def tick(self) -> None:
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            for queue in self._declared:
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
            for delivery in consumer.held.values():
                by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
            for stream, ids in by_stream.items():
                await client.xclaim(stream, GROUP, consumer.name, 0, ids, justid=True)

    async def purge(self, queue: str) -> int:
        queue_keys = keys(queue)
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            pipe = client.pipeline(transaction=True)
            for stream in queue_keys.streams:
                pipe.xlen(stream)
            pipe.zcard(queue_keys.delayed)
            pipe.delete(*queue_keys.streams, queue_keys.delayed)
            counts = await pipe.execute()
            self._declared.discard(queue)
        return sum(int(n) for n in counts[:-1])

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        queue_keys = keys(queue)
        async with translated(self.url, BrokerConnectionError):
            moved = await self._clients.get().eval(
                REQUEUE_DEAD, 2, queue_keys.dead, queue_keys.streams[0], limit
            )
        return int(moved)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            entries: Any = await client.xrange(keys(queue).dead, count=limit)
        out = []
        for _, fields in entries:
            try:
                body = _decode_envelope(fields[b"e"])[1]
            except Exception:
                body = fields[b"e"]
            out.append((body, fields.get(b"reason", b"").decode()))
        return out
