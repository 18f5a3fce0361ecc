"""Redis broker on Streams with one consumer group per queue.

Key layout (every key of a queue shares the hash tag `{queue}`, so it works on Cluster):

    aiotq:{q}:stream    stream of ready messages, field `e` = envelope (msgpack [headers, body]),
                        `r` = 1 when it was returned to the queue (redelivered)
    aiotq:{q}:delayed   sorted set of envelopes scored by due time in ms
    aiotq:{q}:dead      stream of dead letters: fields `e` and `reason`

A consumer reads with XREADGROUP (COUNT = free prefetch slots); a message stays in the
group's pending list, owned by that consumer, until XACK. Messages of a consumer that died
are taken over with XAUTOCLAIM once idle for the visibility timeout; a live consumer
refreshes the idle time of the messages it still holds on every tick, so a long task is not
delivered twice. Due delayed messages move to the stream in one Lua script (atomic: each is
moved exactly once however many workers call it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis import exceptions as redis_errors

from .._redis import CONNECTION_ERRORS, LoopClients, translated
from ..exceptions import BrokerConnectionError
from ..protocol import BROKEN_ENVELOPE
from ..urls import mask_password

log = logging.getLogger("aiotq.broker.redis")

GROUP = "aiotq"
Envelope = tuple[dict[str, str], bytes]
_encode_envelope = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(Envelope).decode

MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'e', member)
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


def keys(queue: str) -> tuple[str, str, str]:
    return f"aiotq:{{{queue}}}:stream", f"aiotq:{{{queue}}}:delayed", f"aiotq:{{{queue}}}:dead"


@dataclass(slots=True, eq=False)
class RedisDelivery:
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    entry_id: bytes
    envelope: bytes
    _consumer: _Consumer
    _settled: bool = False

    # Settled only once the broker confirmed, so a failed ack can be retried.
    async def ack(self) -> None:
        await self._consumer.broker.ack_many([self])

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        if not self._settled:
            await self._consumer.broker._settle(self, requeue, reason or "rejected")
            self._done()

    def _done(self) -> None:
        self._settled = True
        self._consumer.release(self)


class _Consumer:
    """Bookkeeping of one consume() call: its name and the messages it holds (read and not
    yet settled), which prefetch bounds and whose leases the tick refreshes."""

    def __init__(self, broker: RedisBroker, prefetch: int) -> None:
        self.broker = broker
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held: dict[bytes, RedisDelivery] = {}
        self.prefetch = prefetch
        self.slot_freed = asyncio.Event()

    def release(self, delivery: RedisDelivery) -> None:
        if self.held.pop(delivery.entry_id, None) is not None:
            self.slot_freed.set()

    def free_slots(self) -> int:
        return self.prefetch - len(self.held)

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

    def __repr__(self) -> str:
        return f"RedisBroker({mask_password(self.url)!r})"

    async def connect(self) -> None:
        async with translated(self.url, BrokerConnectionError):
            await self._clients.get().ping()

    async def aclose(self) -> None:
        """Return what this process still holds on the current loop, then disconnect."""
        for consumer in list(self._consumers):
            await self._return(consumer.held.values())
        await self._clients.aclose()

    async def declare(self, queues: Sequence[str]) -> None:
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            for queue in queues:
                if queue in self._declared:
                    continue
                try:
                    await client.xgroup_create(keys(queue)[0], GROUP, id="0", mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._declared.add(queue)

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
        stream, delayed, _ = keys(queue)
        deadline = time.monotonic() + self.publish_retry_s
        backoff = 0.05
        while True:
            try:
                client = self._clients.get()
                if delay_s > 0:
                    due_ms = int((time.time() + delay_s) * 1000)
                    await client.zadd(delayed, {envelope: due_ms})
                else:
                    await client.xadd(stream, {"e": envelope})
                return
            except CONNECTION_ERRORS as exc:
                if time.monotonic() + backoff > deadline:
                    raise BrokerConnectionError(
                        f"cannot publish to Redis at {mask_password(self.url)} "
                        f"after {self.publish_retry_s:g}s: {exc}"
                    ) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def consume(self, queues: Sequence[str], prefetch: int) -> AsyncIterator[RedisDelivery]:
        await self.declare(queues)
        consumer = _Consumer(self, prefetch)
        self._consumers.add(consumer)
        reader = self._clients.dedicated()
        streams = [keys(q)[0] for q in queues]
        queue_of = {s.encode(): q for s, q in zip(streams, queues, strict=True)}
        fetched: deque[RedisDelivery] = deque()  # read, not yet handed out
        backoff = 0.1
        try:
            while True:
                if not fetched:
                    await consumer.wait_until(lambda: consumer.free_slots() > 0)
                    try:
                        entries = await self._read(reader, consumer, streams)
                        backoff = 0.1
                    except CONNECTION_ERRORS as exc:
                        log.warning("redis connection lost (%s); retrying in %.1fs", exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    for stream, entry_id, fields, redelivered in entries:
                        delivery = self._delivery(consumer, queue_of[stream], entry_id, fields)
                        delivery.redelivered = redelivered or b"r" in fields
                        consumer.held[entry_id] = delivery
                        fetched.append(delivery)
                    continue
                # hand out at most `prefetch` unsettled (a read may return a few more)
                await consumer.wait_until(lambda: len(consumer.held) - len(fetched) < prefetch)
                yield fetched.popleft()
        finally:
            # Handed-out deliveries stay valid (a warm shutdown lets them finish); what was
            # read but never handed out goes back now rather than after the visibility timeout.
            self._consumers.discard(consumer)
            await self._return(fetched)
            await reader.aclose()
            await reader.connection_pool.disconnect()

    async def _read(
        self, reader: Any, consumer: _Consumer, streams: list[str]
    ) -> list[tuple[bytes, bytes, dict[bytes, bytes], bool]]:
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
        free = max(1, consumer.free_slots())
        response = await reader.xreadgroup(
            GROUP,
            consumer.name,
            dict.fromkeys(streams, ">"),
            count=-(-free // len(streams)),  # COUNT is per stream
            block=1000,
        )
        # interleave the streams so one busy queue does not starve the others
        per_stream = [[(s, i, f, False) for i, f in entries] for s, entries in response or ()]
        for round_ in itertools.zip_longest(*per_stream):
            out.extend(entry for entry in round_ if entry is not None)
        return out

    def _delivery(
        self, consumer: _Consumer, queue: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> RedisDelivery:
        envelope = fields.get(b"e", b"")
        try:
            headers, body = _decode_envelope(envelope)
        except Exception:  # msgspec also raises UnicodeDecodeError: any input must not kill us
            # Not ours to run; surface it to the worker as an undecodable body so it is
            # dead-lettered with a reason through the one rejection path.
            headers, body = {"content-type": BROKEN_ENVELOPE}, envelope
        return RedisDelivery(body, headers, queue, False, entry_id, envelope, consumer)

    async def ack_many(self, deliveries: Sequence[RedisDelivery]) -> None:
        """XACK + XDEL of a whole batch in one pipelined round trip."""
        pending = [d for d in deliveries if not d._settled]
        if not pending:
            return
        by_stream: dict[str, list[bytes]] = {}
        for delivery in pending:
            by_stream.setdefault(keys(delivery.queue)[0], []).append(delivery.entry_id)
        async with translated(self.url, BrokerConnectionError):
            pipe = self._clients.get().pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()
        for delivery in pending:
            delivery._done()

    async def _settle(self, delivery: RedisDelivery, requeue: bool, reason: str) -> None:
        stream, _, dead = keys(delivery.queue)
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
                stream, delayed, _ = keys(queue)
                await client.eval(MOVE_DUE, 2, delayed, stream, int(time.time() * 1000), 500)
            await self._refresh_leases(client)

    async def _refresh_leases(self, client: Any) -> None:
        """Reset the idle time of messages a live consumer still holds (XCLAIM to itself)."""
        for consumer in list(self._consumers):
            by_stream: dict[str, list[bytes]] = {}
            for delivery in consumer.held.values():
                by_stream.setdefault(keys(delivery.queue)[0], []).append(delivery.entry_id)
            for stream, ids in by_stream.items():
                await client.xclaim(stream, GROUP, consumer.name, 0, ids, justid=True)

    async def purge(self, queue: str) -> int:
        stream, delayed, _ = keys(queue)
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            pipe = client.pipeline(transaction=True)
            pipe.xlen(stream)
            pipe.zcard(delayed)
            pipe.delete(stream, delayed)
            ready, waiting, _ = await pipe.execute()
            self._declared.discard(queue)
        return int(ready) + int(waiting)

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        stream, _, dead = keys(queue)
        async with translated(self.url, BrokerConnectionError):
            moved = await self._clients.get().eval(REQUEUE_DEAD, 2, dead, stream, limit)
        return int(moved)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        client = self._clients.get()
        async with translated(self.url, BrokerConnectionError):
            entries: Any = await client.xrange(keys(queue)[2], count=limit)
        out = []
        for _, fields in entries:
            try:
                body = _decode_envelope(fields[b"e"])[1]
            except Exception:
                body = fields[b"e"]
            out.append((body, fields.get(b"reason", b"").decode()))
        return out
