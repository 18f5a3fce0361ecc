"""The Redis broker's streams: the key layout (in brokers/redis.py's docstring), the
envelope, and `Streams`, the primitives of one consume() call (read by priority, take over
what a dead consumer held, ack, settle; on a Cluster, one blocking read per queue's slot)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from redis import exceptions as redis_errors

from .._redis import CONNECTION_ERRORS, close, translate
from ..exceptions import BrokerConnectionError, BrokerError
from ..protocol import BROKEN_ENVELOPE
from ._redis_lua import LAST_DELIVERED, READ_BY_PRIORITY, SETTLE
from .base import Consumer, Delivery

if TYPE_CHECKING:
    from .redis import RedisBroker

log = logging.getLogger("aiotq.broker.redis")

GROUP = "aiotq"
Envelope = tuple[dict[str, str], bytes]
Entry = tuple[bytes, bytes, dict[bytes, bytes], int]  # stream, entry id, fields, times delivered
Token = tuple[str, bytes, bytes]  # a delivery's: its stream, entry id and envelope
encode_envelope = msgspec.msgpack.Encoder().encode
decode_envelope = msgspec.msgpack.Decoder(Envelope).decode

LEVELS = 10  # priorities 0-9
BLOCK_S = 1.0  # longest blocking read, so a stop or a cancellation is seen within it


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
        headers, body = decode_envelope(envelope)
    except Exception:  # msgspec also raises UnicodeDecodeError: any input must not kill us
        # Not ours to run; surface it to the worker as an undecodable body so it is
        # dead-lettered with a reason through the one rejection path.
        headers, body = {"content-type": BROKEN_ENVELOPE}, envelope
    count = _returned_before(fields) + times
    token: Token = (stream.decode(), entry_id, envelope)
    return Delivery(body, headers, queue, count > 1, count, token, consumer)


class Streams:
    """The primitives of one consume() call: its consumer name in the groups, its own
    reader connection and the streams of its queues. A delivery's token is a `Token`."""

    def __init__(self, broker: RedisBroker, queues: Sequence[str], reader: Any) -> None:
        self.broker = broker
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reader = reader
        self.read_script = reader.register_script(READ_BY_PRIORITY)  # EVALSHA, not the text
        self.last_delivered = reader.register_script(LAST_DELIVERED)
        self.queues = list(dict.fromkeys(queues))
        # on a Cluster, one blocking read cannot cover queues of different slots: `_ring`
        self.per_slot = bool(broker._clients.cluster) and len(self.queues) > 1
        self.bells: dict[str, asyncio.Future[Any]] = {}  # queue -> its XREAD still waiting
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
        except redis_errors.RedisClusterException as exc:  # no node reachable, slots moving
            raise translate(self.broker.url, BrokerConnectionError, exc) from exc
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
        per_queue = await self._read_levels(share)
        if not any(per_queue) and self.per_slot:
            await self._ring()  # new work on any queue: read again, at once
            per_queue = await self._read_levels(share)
        elif not any(per_queue):
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

    async def _read_levels(self, share: int) -> list[list[Entry]]:
        """Up to `share` of each queue, highest level first (one script per queue)."""
        per_queue: list[list[Entry]] = []
        for queue in self.queues:
            levels = list(reversed(keys(queue).streams))
            answer = await self.read_script(keys=levels, args=[GROUP, self.name, share])
            per_queue.append(
                [(stream, i, _fields(f), 1) for stream, entries in answer for i, f in entries]
            )
        return per_queue

    async def _ring(self) -> None:
        """On a Cluster, wait (up to BLOCK_S) until any queue has a message the group has not
        handed out: one XREAD BLOCK per queue (a slot each) from the group's last-delivered
        ids, all at once. XREAD takes nothing, so a read still waiting when another answers
        is kept for the next wait, not cancelled: on Python 3.11 a cancellation that lands
        as redis-py writes the command is lost (asyncio.wait_for), and the read would hold
        its connection for its whole BLOCK."""
        for queue in self.queues:
            if queue not in self.bells:
                streams = list(keys(queue).streams)
                last = await self.last_delivered(keys=streams, args=[GROUP])
                ids = dict(zip(streams, last, strict=True))
                read = self.reader.xread(ids, count=1, block=int(BLOCK_S * 1000))
                self.bells[queue] = asyncio.ensure_future(read)
        await asyncio.wait(self.bells.values(), return_when=asyncio.FIRST_COMPLETED)
        failed: BaseException | None = None
        for queue, bell in list(self.bells.items()):
            if bell.done():
                del self.bells[queue]
                failed = failed or (bell.exception() if not bell.cancelled() else None)
        if failed is not None:  # a read that failed fails the fetch (a lost connection)
            raise failed

    async def stop_ringing(self) -> None:
        """The reads still waiting, ended with the reader (closing it fails them at once)."""
        bells = list(self.bells.values())
        self.bells.clear()
        for bell in bells:
            bell.cancel()
        await close(self.reader)
        await asyncio.gather(*bells, return_exceptions=True)

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
            pipe = (await clients.client()).pipeline(transaction=False)
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
            await (await clients.client()).eval(
                SETTLE, 2, stream, target, entry_id, envelope, GROUP, 100_000, *extra
            )

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)
