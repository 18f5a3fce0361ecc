"""Confirmed publishing on one RabbitMQ channel, pipelined.

aiormq's `basic_publish` holds the channel lock until its frames are drained to the socket
and waits for the confirm inside the same call: concurrent publishes left one at a time,
each with an aio-pika Message, a timeout and a write of its own, and with a deep stack of
coroutines and callbacks alive per message until its confirm (which the garbage collector
walks again and again during a burst: that, more than framing, made 10,000 concurrent sends
slow). Here:

- one writer at a time per channel; publishes that arrive meanwhile go out in its next
  write, in order (a burst of concurrent sends becomes a few large writes);
- each message gets a plain future in the channel's confirm table, so aiormq's reader
  settles it (Basic.Ack, Nack, Return); what aiormq's per-message futures did besides, fail
  on a lost channel and on a silent server, is done once per write: one guard future in the
  channel's future store (rejected with the close reason) and one timer per channel.

It writes through the attributes aiormq's own `basic_publish` uses (`lock`, `delivery_tag`,
`confirmations`, `message_id_delivery_tag`, `write_queue`, `create_future`);
tests/test_amqp_speed.py covers confirms, refusals, returns, lost channels and timeouts.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError
from pamqp import commands as spec
from pamqp.frame import marshal

PERSISTENT = 2
_CACHED = 1024  # publish frames kept per channel (one per queue, for the default exchange)


class Publication:
    """One message to publish: the exchange and routing key it goes to, and its content."""

    __slots__ = (
        "body", "content_type", "exchange", "headers", "message_id", "priority", "queue",
        "routing_key",
    )  # fmt: skip

    def __init__(
        self,
        queue: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        message_id: str | None,
        priority: int | None,
        content_type: str | None = None,
    ) -> None:
        self.content_type = content_type
        self.queue = queue  # where it ends up (through the delay levels, if delayed)
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.headers = headers
        self.message_id = message_id
        self.priority = priority


class Writer:
    """Publishing on one aiormq channel (made anew with the channel after a reconnect)."""

    __slots__ = ("_expiry", "_publish", "_queue", "_writes", "_writing", "channel")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._publish: dict[tuple[str, str], bytes] = {}
        self._queue: list[Batch] = []
        self._writing = False
        self._writes: deque[_Write] = deque()  # unfinished, oldest first
        self._expiry: asyncio.TimerHandle | None = None

    async def publish(self, items: Sequence[Publication], deadline: float) -> Batch:
        """Write `items` (with whatever else waits meanwhile) and return their batch: await
        `batch.confirmed()`, which fails with TimeoutError if RabbitMQ has not confirmed by
        `deadline` (the loop's clock). If this raises, nothing of theirs was written."""
        batch = Batch(items, deadline)
        self._queue.append(batch)
        if self._writing:
            batch.turn = asyncio.get_running_loop().create_future()
            try:
                written = await batch.turn  # the writer writes it, or hands the pen to us
            except asyncio.CancelledError:
                if batch in self._queue:  # not taken yet: it never goes out
                    self._queue.remove(batch)
                raise
            if written:
                return batch
        self._writing = True
        try:
            while self._queue:
                taken, self._queue = self._queue, []
                try:
                    await self._write(taken)
                except asyncio.CancelledError:  # we stop; the others were not written
                    self._queue[:0] = [b for b in taken if b is not batch]
                    raise
                except BaseException as exc:
                    for other in taken:
                        if other is not batch and other.turn is not None:
                            _settle(other.turn, exc)
                    if batch in taken:
                        raise
                    continue
                for other in taken:
                    if other is not batch and other.turn is not None:
                        _settle(other.turn, True)
        finally:
            self._writing = False
            if self._queue:  # left behind by a cancelled writer: the first one writes next
                self._writing = True
                first = self._queue[0]
                if first.turn is not None:
                    _settle(first.turn, False)
        return batch

    async def _write(self, batches: list[Batch]) -> None:
        """Every batch's items in one write, in order, each with its confirm future. Nothing
        is written if this raises, and the channel's sequence is left as it was."""
        channel = self.channel
        frames = self._frames
        payload = b"".join([frames(item) for batch in batches for item in batch.items])
        loop = asyncio.get_running_loop()
        # No channel lock: only this writer publishes on the channel (the lock kept
        # aiormq's own publishes in sequence), and nothing below waits but a full queue.
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} closed")
        first = tag = channel.delivery_tag + 1
        table, by_id = channel.confirmations, channel.message_id_delivery_tag
        write = _Write(self, first, batches, channel.create_future())
        write.deadline = min(batch.deadline for batch in batches)
        for batch in batches:
            batch.write = write
            confirms = batch.confirms = []
            for item in batch.items:
                future = loop.create_future()
                table[tag] = future
                if item.message_id is not None:  # a Return names the message by its id
                    by_id[item.message_id] = tag
                confirms.append(future)
                tag += 1
        channel.delivery_tag = tag - 1
        frame = ChannelFrame(payload=payload, should_close=False)
        try:
            try:
                channel.write_queue.put_nowait(frame)
            except asyncio.QueueFull:  # the socket is behind: wait, but not for ever
                await _put_unless_closed(channel, frame, write.deadline)
        except BaseException:  # not written: the broker never saw these tags
            channel.delivery_tag = first - 1
            write.undo(tag)
            raise
        self._writes.append(write)
        if self._expiry is None or write.deadline < self._expiry.when():
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = loop.call_at(write.deadline, self._expire)

    def _frames(self, item: Publication) -> bytes:
        number = self.channel.number
        key = (item.exchange, item.routing_key)
        publish = self._publish.get(key)
        if publish is None:
            frame = spec.Basic.Publish(
                exchange=item.exchange, routing_key=item.routing_key, mandatory=True
            )
            publish = marshal(frame, number)
            if len(self._publish) >= _CACHED:
                self._publish.clear()
            self._publish[key] = publish
        body = item.body
        parts = [publish, content_header(number, len(body), item)]
        size = self.channel.max_content_size
        for start in range(0, len(body), size):
            chunk = body[start : start + size]
            parts.append(_FRAME.pack(3, number, len(chunk)) + chunk + _END)
        return b"".join(parts)

    def _finished(self) -> None:
        writes = self._writes
        while writes and writes[0].pending == 0:
            writes.popleft()

    def _expire(self) -> None:
        """Writes not confirmed by their deadline fail with TimeoutError (a server that
        accepts and never answers); then wait for the next deadline."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now, later = loop.time(), []
        for write in self._writes:
            if write.pending and not write.failed:
                if write.deadline <= now:
                    write.fail(TimeoutError("RabbitMQ did not confirm in time"))
                else:
                    later.append(write.deadline)
        self._finished()
        if later:
            self._expiry = loop.call_at(min(later), self._expire)


class Batch:
    """One caller's items in a write: their confirm futures, once written."""

    __slots__ = ("confirms", "deadline", "items", "turn", "write")

    def __init__(self, items: Sequence[Publication], deadline: float) -> None:
        self.items = items
        self.deadline = deadline
        self.confirms: list[asyncio.Future[Any]] = []
        self.turn: asyncio.Future[bool] | None = None  # made only when waiting for a writer
        self.write: _Write | None = None

    async def confirmed(self) -> tuple[list[Publication], BaseException | None]:
        """Wait for every confirm; return the items whose channel was lost (or that were not
        confirmed in time) with that error: the caller publishes them again (at least once).
        A refusal (Nack, Return) is raised once every confirm is in, naming the queue."""
        lost: list[Publication] = []
        error: BaseException | None = None
        refused: BaseException | None = None
        try:
            for item, confirm in zip(self.items, self.confirms, strict=True):
                try:
                    await confirm
                except DeliveryError as exc:
                    if refused is None:
                        refused = exc
                        exc.add_note(f"queue: {item.queue}")
                except Exception as exc:  # a lost channel (its close reason), a timeout
                    lost.append(item)
                    error = exc
        finally:
            if self.write is not None:
                self.write.release()
        if refused is not None:
            raise refused
        return lost, error


class _Write:
    """The batches written together: one guard in the channel's future store (rejected with
    the close reason when the channel goes) and one deadline."""

    __slots__ = ("batches", "deadline", "failed", "first", "guard", "pending", "writer")

    def __init__(
        self, writer: Writer, first: int, batches: list[Batch], guard: asyncio.Future[Any]
    ) -> None:
        self.writer = writer
        self.first = first
        self.batches = batches
        self.pending = len(batches)  # callers still waiting for their confirms
        self.deadline = 0.0
        self.failed = False
        self.guard = guard
        guard.add_done_callback(self._guarded)

    def _guarded(self, guard: asyncio.Future[Any]) -> None:
        if not guard.cancelled() and guard.exception() is not None:
            self.fail(guard.exception() or ConnectionError("channel closed"))

    def fail(self, exc: BaseException) -> None:
        self.failed = True
        table = self.writer.channel.confirmations
        tag = self.first
        for batch in self.batches:
            for confirm in batch.confirms:
                if not confirm.done():
                    confirm.set_exception(exc)
                table.pop(tag, None)  # a late Ack finds nothing to settle
                tag += 1

    def undo(self, end: int) -> None:
        """Not written: the tags go, the futures are cancelled (never awaited by a caller
        that got the exception)."""
        table = self.writer.channel.confirmations
        for tag in range(self.first, end):
            future = table.pop(tag, None)
            if future is not None:
                future.cancel()
        for batch in self.batches:
            batch.confirms, batch.write = [], None
        self.pending = 0
        self.guard.cancel()

    def release(self) -> None:
        """One caller is done waiting; the last one lets go of the guard and the ids."""
        self.pending -= 1
        if self.pending:
            return
        if not self.guard.done():
            self.guard.set_result(None)  # leaves the channel's future store
        by_id = self.writer.channel.message_id_delivery_tag
        tag = self.first
        for batch in self.batches:
            for item in batch.items:
                if item.message_id is not None and by_id.get(item.message_id) == tag:
                    del by_id[item.message_id]
                tag += 1
        self.writer._finished()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# -- framing a message's content header without pamqp's generic encoder (a third of a send's
# own CPU): the fixed set of properties aiotq sends, string headers only.
_FRAME = struct.Struct(">BHI")  # frame type, channel, payload size
_END = b"\xce"
_HEADER = struct.Struct(">HHQH")  # class 60 (Basic), weight 0, body size, property flags
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _PRIORITY, _MESSAGE_ID = (
    1 << 15, 1 << 13, 1 << 12, 1 << 11, 1 << 7,
)  # fmt: skip


def _short(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def _table(headers: dict[str, Any]) -> bytes:
    out = []
    for key, value in headers.items():
        if not isinstance(value, str):  # pamqp's encoder knows every other AMQP type
            from pamqp.encode import field_table

            return field_table(headers)
        raw = value.encode()
        out.append(_short(key) + b"S" + len(raw).to_bytes(4, "big") + raw)
    payload = b"".join(out)
    return len(payload).to_bytes(4, "big") + payload


def content_header(channel: int, body_size: int, item: Publication) -> bytes:
    """The content header frame: persistent, with the item's type, headers, priority, id."""
    flags = _DELIVERY_MODE
    parts = [b""]
    if item.content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(_short(item.content_type))
    if item.headers:
        flags |= _HEADERS
        parts.append(_table(item.headers))
    parts.append(bytes((PERSISTENT,)))
    if item.priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((item.priority,)))
    if item.message_id is not None:
        flags |= _MESSAGE_ID
        parts.append(_short(item.message_id))
    parts[0] = _HEADER.pack(60, 0, body_size, flags)
    payload = b"".join(parts)
    return _FRAME.pack(2, channel, len(payload)) + payload + _END


async def _put_unless_closed(channel: Any, frame: Any, deadline: float) -> None:
    """Wait for room in the connection's write queue, until `deadline` or until the channel
    or its connection closes: a queue a dead connection no longer drains never has room,
    and waiting it out would spend the whole publish bound that a retry on the reconnected
    channel needs."""
    put = asyncio.ensure_future(channel.write_queue.put(frame))
    closed = {channel.closing, channel.connection.closing}
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait({put, *closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (put, *closed):
            if not waiter.done():
                waiter.cancel()
    if not put.done() or put.cancelled():
        raise ChannelInvalidStateError(f"{channel!r} closed while its write queue was full")
