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

import asyncio
import functools
import itertools
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from .._backoff import Backoff
from .._sqlite import Database, Doorbell, transaction
from ..exceptions import BrokerError, BrokerUnavailable
from ..protocol import BROKEN_ENVELOPE
from .base import SUSPECT_DELIVERIES, InWindow, Prefetch

RECHECK_S = 5.0  # an idle consumer's safety net against a lost ring

_headers_codec = msgspec.json.Decoder(dict[str, str])
log = logging.getLogger("aiotq.broker.sqlite")


def _headers_of(raw: bytes) -> dict[str, str]:
    """A row whose headers are not ours to read is handed out as a broken envelope, so the
    worker dead-letters it with a reason (instead of dying on it, and again on restart)."""
    try:
        return _headers_codec.decode(raw)
    except Exception:  # msgspec raises DecodeError, ValidationError or UnicodeDecodeError
        return {"content-type": BROKEN_ENVELOPE}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


@dataclass(slots=True, eq=False)
class SqliteDelivery(InWindow):
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    delivery_count: int
    row_id: int
    _consumer: _Consumer
    _settled: bool = False
    _window: Prefetch | None = None

    async def ack(self) -> None:
        await self._consumer.broker.ack_many([self])

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        if not self._settled:
            await self._consumer.broker._reject(self, requeue, reason or "rejected")
            self._consumer.settle(self)


@dataclass(eq=False)
class _Consumer:
    broker: SqliteBroker
    queues: Sequence[str]
    name: str = field(default_factory=lambda: uuid.uuid4().hex)
    held: set[int] = field(default_factory=set)  # claimed row ids not yet settled
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    window: Prefetch = field(default_factory=lambda: Prefetch(0, lambda: None))
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def settle(self, delivery: SqliteDelivery) -> None:
        delivery._settled = True
        delivery.finished()
        self.held.discard(delivery.row_id)


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
        self._consumers: set[_Consumer] = set()

    def __repr__(self) -> str:
        return f"SqliteBroker({self.url!r})"

    async def connect(self) -> None:
        await self._db.run(lambda connection: None)  # opens (and creates) the file, or names it

    async def aclose(self) -> None:
        """Every claimed, unsettled row goes back at once (not after its lease)."""
        held = [(consumer.name, list(consumer.held)) for consumer in self._consumers]
        self._consumers.clear()
        for name, ids in held:
            await self._release(name, ids)
        await self._db.aclose()
        self._bell.close()

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

    async def ack_many(self, deliveries: Sequence[SqliteDelivery]) -> None:
        pending = [d for d in deliveries if not d._settled]
        if not pending:
            return
        by_owner: dict[str, list[int]] = {}
        for delivery in pending:
            by_owner.setdefault(delivery._consumer.name, []).append(delivery.row_id)

        def delete(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                for owner, ids in by_owner.items():
                    # owner checked: a row taken over after a lost lease is the new owner's
                    connection.execute(
                        f"DELETE FROM messages WHERE owner = ? AND id IN ({_marks(ids)})",
                        (owner, *ids),
                    )

        await self._db.run(delete)
        for delivery in pending:
            delivery._consumer.settle(delivery)

    async def _reject(self, delivery: SqliteDelivery, requeue: bool, reason: str) -> None:
        owner, row_id = delivery._consumer.name, delivery.row_id

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

        if requeue:
            await self._release(owner, [row_id])
        else:
            await self._db.run(dead_letter)

    async def _release(self, owner: str, ids: Sequence[int]) -> None:
        """Make claimed rows ready again now."""
        if not ids:
            return

        def release(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE messages SET owner = NULL, lease_ms = 0"
                f" WHERE owner = ? AND id IN ({_marks(ids)})",
                (owner, *ids),
            )
            self._bell.ring()

        await self._db.run(release)

    async def consume(self, queues: Sequence[str], prefetch: int) -> AsyncIterator[SqliteDelivery]:
        consumer = _Consumer(self, list(queues))
        consumer.window = Prefetch(prefetch, consumer.freed.set)
        self._consumers.add(consumer)
        listener = self._bell.listen()
        fetched: deque[SqliteDelivery] = deque()  # claimed, not yet handed out
        backoff = Backoff(initial=0.1, cap=5.0)
        try:
            while True:
                if fetched:
                    yield fetched.popleft()
                    continue
                room = consumer.window.free()
                if room <= 0:  # wait for a finished message, not for the database
                    consumer.freed.clear()
                    if consumer.window.free() <= 0:
                        await consumer.freed.wait()
                    continue
                listener.arm()
                try:
                    rows, wait_s = await self._db.run(
                        functools.partial(self._claim, consumer=consumer, room=room)
                    )
                    backoff.reset()
                except BrokerError as exc:  # locked past the busy timeout, disk full: wait
                    delay = backoff.delay()
                    log.warning("cannot claim messages (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                for row_id, queue, deliveries, headers, body in rows:
                    consumer.held.add(row_id)
                    fetched.append(
                        SqliteDelivery(
                            body, _headers_of(headers), queue, deliveries > 0, deliveries + 1,
                            row_id, consumer, _window=consumer.window.take(),
                        )
                    )  # fmt: skip
                if not rows:
                    await listener.wait(min(wait_s, self.recheck_s))
        finally:
            # The consumer stays known: deliveries handed out and still running keep their
            # leases renewed by tick() and are released by aclose().
            listener.close()
            unhanded = [d.row_id for d in fetched]
            consumer.held.difference_update(unhanded)
            await asyncio.shield(self._release(consumer.name, unhanded))

    def _claim(
        self, connection: sqlite3.Connection, consumer: _Consumer, room: int
    ) -> tuple[list[tuple[int, str, int, bytes, bytes]], float]:
        """Claim up to `room` ready rows, queues taken in turn (fair); else seconds to wait."""
        now = _now_ms()
        queues = consumer.queues
        start = next(consumer.turn) % len(queues)
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
                    (consumer.name, now + self.visibility_ms, *ids),
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
            f"SELECT MIN(MAX(due_ms, lease_ms)) FROM messages WHERE queue IN ({_marks(queues)})",  # type: ignore[arg-type]
            tuple(queues),
        ).fetchone()
        return [], self.recheck_s if next_ms is None else max(0.0, (next_ms - now) / 1000)

    async def tick(self) -> None:
        """Renew the leases of every row this process holds."""
        held = [(consumer.name, list(consumer.held)) for consumer in self._consumers]
        held = [(name, ids) for name, ids in held if ids]
        if not held:
            return

        def renew(connection: sqlite3.Connection) -> None:
            lease = _now_ms() + self.visibility_ms
            with transaction(connection):
                for name, _ in held:
                    connection.execute(
                        "UPDATE messages SET lease_ms = ? WHERE owner = ?", (lease, name)
                    )

        await self._db.run(renew)

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
