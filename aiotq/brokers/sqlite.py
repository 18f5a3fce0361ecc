"""SQLite broker (`sqlite:///aiotq.db`): the default, a durable queue with no server.

One table holds every message. A message is ready when it is due (`due_ms`, for delays) and
not leased (`lease_ms` in the past). A consumer claims ready rows in one write transaction by
stamping its name and a lease of `visibility_timeout_s`; the scheduler tick renews the leases
of what it holds, so a live worker keeps a long task, and a killed worker's rows become ready
again when their lease runs out. Ack deletes the row; a dead letter moves it to `dead`.

An idle consumer does not poll: it sleeps until its doorbell rings (a publish in any process),
until the next delayed message or lease expiry is due, or at most `recheck_s`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import msgspec

from .._sqlite import Database, Doorbell, Listener, transaction
from ..exceptions import BrokerError, BrokerUnavailable
from ..protocol import BROKEN_ENVELOPE
from .base import SUSPECT_DELIVERIES, Consumer, Delivery, Outgoing, QueueStats, ack_many
from .bus import Subscription
from .sqlite_bus import SqliteBus

RECHECK_S = 5.0  # an idle consumer's safety net against a lost ring

_headers_codec = msgspec.json.Decoder(dict[str, str])


def _headers_of(raw: bytes) -> dict[str, str]:
    """A row whose headers are not ours to read is handed out as a broken envelope, so the
    worker dead-letters it with a reason (instead of dying on it, and again on restart)."""
    try:
        return _headers_codec.decode(raw)
    except Exception:  # msgspec raises DecodeError, ValidationError or UnicodeDecodeError
        return {"content-type": BROKEN_ENVELOPE}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _marks(ids: Sequence[object]) -> str:
    return ",".join("?" * len(ids))


class _Claims:
    """The primitives of one consume() call: its name (the owner of the rows it claims),
    its queues taken in turn, its doorbell. A delivery's token is its row id."""

    def __init__(self, broker: SqliteBroker, queues: Sequence[str], listener: Listener) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.name = uuid.uuid4().hex
        self.turn = itertools.count()
        self.listener = listener

    async def fetch(self, consumer: Consumer[Any], room: int) -> list[Delivery]:
        broker = self.broker
        self.listener.arm()
        rows, wait_s = await broker._db.run(
            functools.partial(broker._claim, claims=self, room=room)
        )
        if not rows:
            await self.listener.wait(min(wait_s, broker.recheck_s))
        return [
            Delivery(body, _headers_of(headers), queue, n > 0, n + 1, row_id, consumer)
            for row_id, queue, n, headers, body in rows
        ]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        ids = [delivery.token for delivery in deliveries]
        # owner checked: a row taken over after a lost lease is the new owner's
        sql = f"DELETE FROM messages WHERE owner = ? AND id IN ({_marks(ids)})"
        await self.broker._db.run(lambda connection: connection.execute(sql, (self.name, *ids)))

    async def settle(self, delivery: Delivery, requeue: bool, reason: str) -> None:
        owner, row_id = self.name, delivery.token
        if requeue:
            await self.broker._release(owner, row_id, delivery.delivery_count)
            return

        def dead_letter(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT INTO dead (queue, reason, headers, body) SELECT queue, ?, headers,"
                    " body FROM messages WHERE id = ? AND owner = ?",
                    (reason, row_id, owner),
                )
                connection.execute(
                    "DELETE FROM messages WHERE id = ? AND owner = ?", (row_id, owner)
                )

        await self.broker._db.run(dead_letter)

    async def drained(self, consumer: Consumer[Any]) -> None:
        self.broker._consumers.discard(consumer)


class SqliteBroker:
    def __init__(
        self,
        url: str,
        *,
        visibility_timeout_s: float = 60.0,
        recheck_s: float = RECHECK_S,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.visibility_ms = int(visibility_timeout_s * 1000)
        self.recheck_s = recheck_s
        self._db = Database(url, busy_timeout_s, (BrokerUnavailable, BrokerError))
        self._bell = Doorbell(self._db.path, "messages")
        self._bus = SqliteBus(self._db)
        self._consumers: set[Consumer[_Claims]] = set()  # consuming, or holding rows

    def __repr__(self) -> str:
        return f"SqliteBroker({self.url!r})"

    async def connect(self) -> None:
        await self._db.run(lambda connection: None)  # opens (and creates) the file, or names it

    async def aclose(self) -> None:
        """Every claimed, unsettled row goes back at once (not after its lease)."""
        consumers = list(self._consumers)
        self._consumers.clear()
        for consumer in consumers:
            await consumer.return_held()
        await self._db.aclose()
        self._bell.close()
        self._bus.close()

    async def declare(self, queues: Sequence[str]) -> None:
        return None  # a queue is a value in a column

    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None:
        row = (queue, priority or 0, _now_ms() + int(delay_s * 1000), msgspec.json.encode(headers))

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO messages (queue, priority, due_ms, lease_ms, headers, body)"
                " VALUES (?, ?, ?, 0, ?, ?)",
                (*row, body),
            )
            self._bell.ring()

        await self._db.run(insert)

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """One transaction: the batch is committed whole or not at all."""
        now = _now_ms()
        rows = [
            (m.queue, m.priority or 0, now + int(m.delay_s * 1000), msgspec.json.encode(m.headers),
             m.body)
            for m in messages
        ]  # fmt: skip

        def insert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(
                    "INSERT INTO messages (queue, priority, due_ms, lease_ms, headers, body)"
                    " VALUES (?, ?, ?, 0, ?, ?)",
                    rows,
                )
            self._bell.ring()

        if rows:
            await self._db.run(insert)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await ack_many(deliveries)

    async def _release(self, owner: str, row_id: int, deliveries: int) -> None:
        """Make a claimed row ready again now, with its delivery count as the delivery says
        (one less when it was given back without being handed out: that was no delivery)."""

        def release(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE messages SET owner = NULL, lease_ms = 0, deliveries = ?"
                " WHERE owner = ? AND id = ?",
                (deliveries, owner, row_id),
            )
            self._bell.ring()

        await self._db.run(release)

    async def consume(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_ready: Callable[[Consumer[Any]], None] | None = None,
    ) -> AsyncIterator[Delivery]:
        listener = self._bell.listen()
        consumer = Consumer(_Claims(self, queues, listener), prefetch, on_ready)
        # known until drained: tick() renews the leases of what it holds, aclose() returns it
        self._consumers.add(consumer)
        try:
            async with contextlib.aclosing(consumer.deliveries()) as deliveries:
                async for delivery in deliveries:
                    yield delivery
        finally:
            listener.close()

    def _claim(
        self, connection: sqlite3.Connection, claims: _Claims, room: int
    ) -> tuple[list[tuple[int, str, int, bytes, bytes]], float]:
        """Claim up to `room` ready rows, queues taken in turn (fair); else seconds to wait."""
        now = _now_ms()
        queues = claims.queues
        start = next(claims.turn) % len(queues)
        order = [*queues[start:], *queues[:start]]
        rows: list[tuple[int, str, int, bytes, bytes]] = []
        alone: list[bool] = []  # set once a suspect ends this claim

        def take(queue: str, limit: int) -> None:
            if limit <= 0 or alone:
                return
            got = connection.execute(
                "SELECT id, queue, deliveries, headers, body FROM messages"
                " WHERE queue = ? AND due_ms <= ? AND lease_ms <= ?"
                " ORDER BY priority DESC, id LIMIT ?",
                (queue, now, now, limit),
            ).fetchall()
            for index, row in enumerate(got):  # a suspect is claimed alone (see base.py)
                if row[2] + 1 >= SUSPECT_DELIVERIES:
                    got = got[:index] if index or rows else got[:1]
                    alone.append(True)
                    break
            if got:
                ids = [row[0] for row in got]
                connection.execute(
                    "UPDATE messages SET owner = ?, lease_ms = ?, deliveries = deliveries + 1"
                    f" WHERE id IN ({_marks(ids)})",
                    (claims.name, now + self.visibility_ms, *ids),
                )
                rows.extend(got)

        with transaction(connection):
            share = max(1, room // len(queues))
            for queue in order:  # a fair share of each queue first, then fill the room
                take(queue, min(share, room - len(rows)))
            for queue in order:
                take(queue, room - len(rows))
        if rows:
            return rows, 0.0
        (next_ms,) = connection.execute(
            f"SELECT MIN(MAX(due_ms, lease_ms)) FROM messages WHERE queue IN ({_marks(queues)})",
            tuple(queues),
        ).fetchone()
        return [], self.recheck_s if next_ms is None else max(0.0, (next_ms - now) / 1000)

    async def tick(self) -> None:
        """Renew the leases of every row this process holds."""
        owners = [consumer.primitives.name for consumer in self._consumers if consumer.held]
        if not owners:
            return

        def renew(connection: sqlite3.Connection) -> None:
            lease = _now_ms() + self.visibility_ms
            with transaction(connection):
                for name in owners:
                    connection.execute(
                        "UPDATE messages SET lease_ms = ? WHERE owner = ?", (lease, name)
                    )

        await self._db.run(renew)

    # -- the bus (bus.py): control, replies, events ----------------------------------------
    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        await self._bus.post(topic, body, keep=keep, ttl_s=ttl_s)

    async def subscribe(self, topic: str, *, replay: bool = False) -> Subscription:
        return await self._bus.subscribe(topic, replay=replay)

    async def queue_stats(self, queue: str) -> QueueStats:
        def count(connection: sqlite3.Connection) -> QueueStats:
            now = _now_ms()
            ready, delayed, unacked = connection.execute(
                "SELECT COALESCE(SUM(due_ms <= ? AND lease_ms <= ?), 0),"
                " COALESCE(SUM(due_ms > ?), 0), COALESCE(SUM(lease_ms > ?), 0)"
                " FROM messages WHERE queue = ?",
                (now, now, now, now, queue),
            ).fetchone()
            (dead,) = connection.execute(
                "SELECT COUNT(*) FROM dead WHERE queue = ?", (queue,)
            ).fetchone()
            return QueueStats(int(ready), int(delayed), int(unacked), int(dead))

        return await self._db.run(count)

    async def scheduled(self, queues: Sequence[str], limit: int = 100) -> list[tuple[float, bytes]]:
        def read(connection: sqlite3.Connection) -> list[tuple[float, bytes]]:
            rows = connection.execute(
                f"SELECT due_ms, body FROM messages WHERE queue IN ({_marks(queues)})"
                " AND due_ms > ? AND owner IS NULL ORDER BY due_ms LIMIT ?",
                (*queues, _now_ms(), limit),
            ).fetchall()
            return [(due_ms / 1000, bytes(body)) for due_ms, body in rows]

        return await self._db.run(read)

    async def purge(self, queue: str) -> int:
        def purge(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "DELETE FROM messages WHERE queue = ? AND lease_ms <= ?", (queue, _now_ms())
            )
            return cursor.rowcount

        return await self._db.run(purge)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        def read(connection: sqlite3.Connection) -> list[tuple[bytes, str]]:
            rows = connection.execute(
                "SELECT body, reason FROM dead WHERE queue = ? ORDER BY id LIMIT ?", (queue, limit)
            )
            return [(bytes(body), reason) for body, reason in rows]

        return await self._db.run(read)

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        def move(connection: sqlite3.Connection) -> int:
            with transaction(connection):
                rows = connection.execute(
                    "SELECT id, headers, body FROM dead WHERE queue = ? ORDER BY id LIMIT ?",
                    (queue, limit),
                ).fetchall()
                for row_id, headers, body in rows:
                    priority = int(_headers_of(headers).get("priority") or 0)
                    connection.execute(
                        "INSERT INTO messages (queue, priority, due_ms, lease_ms, deliveries,"
                        " headers, body) VALUES (?, ?, 0, 0, 1, ?, ?)",
                        (queue, priority, headers, body),
                    )
                    connection.execute("DELETE FROM dead WHERE id = ?", (row_id,))
            if rows:
                self._bell.ring()
            return len(rows)

        return await self._db.run(move)
