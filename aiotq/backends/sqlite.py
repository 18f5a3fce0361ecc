"""SQLite result backend and coordinator: results with expiry, watchers woken by a doorbell,
atomic counters, leases and a key-value (table `kv`, apart from the results). Rate-limit
slots (`reserve`) keep their next free slot, in microseconds, as a row of `counters` named
`rate:<key>` (chord counters are `chord:`/`chord-fired:`), expiring once it is past.

One hub per event loop watches every task id its waiters care about: when a worker in any
process stores results it rings the "results" doorbell, and the hub reads all watched ids in
one query. So a thousand waiting `get()`s cost one query per stored batch, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence

from .._backoff import Backoff
from .._loops import PerLoop
from .._sqlite import Database, Doorbell, Listener, transaction
from ..exceptions import AiotqError, BackendError, BackendUnavailable
from .base import reserve_slots
from .history_sqlite import SqliteHistory

log = logging.getLogger("aiotq.backend")

RECHECK_S = 5.0  # a waiter's safety net against a lost ring
SWEEP_EVERY_S = 60.0  # expired results, counters and values are deleted at most this often
CHUNK = 500  # ids per IN (...) query


def _now_ms() -> int:
    return int(time.time() * 1000)


def _sweep(connection: sqlite3.Connection, now_ms: int) -> None:
    for table in ("results", "counters", "kv"):
        connection.execute(f"DELETE FROM {table} WHERE expires_ms < ?", (now_ms,))


class SqliteBackend:
    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self._db = Database(url, busy_timeout_s, (BackendUnavailable, BackendError))
        self._busy_timeout_s = busy_timeout_s
        self._history_db: Database | None = None
        self._bell = Doorbell(self._db.path, "results")
        self._hubs = PerLoop(lambda: _Hub(self._db, self._bell.listen()))
        self._swept_at = 0.0

    def __repr__(self) -> str:
        return f"SqliteBackend({self.url!r})"

    def task_history(self, max_tasks: int, max_age_s: float) -> SqliteHistory:
        """History lives in a file of its own beside this one (`<name>-history.db`): its
        writes then never wait for, or hold up, the broker's and the results' write lock."""
        if self._history_db is None:
            path = self._db.path.with_name(self._db.path.stem + "-history.db")
            self._history_db = Database(f"sqlite:///{path}", self._busy_timeout_s,
                                        (BackendUnavailable, BackendError))  # fmt: skip
        return SqliteHistory(self._history_db, max_tasks, max_age_s)

    async def connect(self) -> None:
        await self._db.run(lambda connection: None)

    async def aclose(self) -> None:
        hub = self._hubs.pop()
        if hub is not None:
            await hub.aclose()
        await self._db.aclose()
        if self._history_db is not None:
            await self._history_db.aclose()
        self._bell.close()

    def _sweep_due(self) -> bool:
        due = time.monotonic() - self._swept_at > SWEEP_EVERY_S
        if due:
            self._swept_at = time.monotonic()
        return due

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        sweep = self._sweep_due()

        def write(connection: sqlite3.Connection) -> None:
            now = _now_ms()
            expires = now + int(ttl_s * 1000)
            with transaction(connection):
                connection.executemany(
                    "INSERT INTO results (task_id, value, version, expires_ms) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (task_id) DO UPDATE SET value = excluded.value,"
                    " version = excluded.version, expires_ms = excluded.expires_ms",
                    # a version per store, so a watcher sees STARTED and then SUCCESS
                    [(task_id, data, time.time_ns(), expires) for task_id, data in items],
                )
                if sweep:
                    _sweep(connection, now)
            self._bell.ring()

        await self._db.run(write)

    async def get(self, task_id: str) -> bytes | None:
        def read(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT value FROM results WHERE task_id = ? AND expires_ms > ?",
                (task_id, _now_ms()),
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._db.run(read)

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        hub = self._hubs.get()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        hub.add(task_id, inbox)
        try:
            while True:
                yield await inbox.get()
        finally:
            hub.remove(task_id, inbox)

    async def forget(self, task_id: str) -> None:
        await self._db.run(
            lambda connection: connection.execute(
                "DELETE FROM results WHERE task_id = ?", (task_id,)
            )
        )

    async def incr(self, key: str, ttl_s: float) -> int:
        def increment(connection: sqlite3.Connection) -> int:
            now = _now_ms()
            (value,) = connection.execute(
                "INSERT INTO counters (key, value, expires_ms) VALUES (?, 1, ?)"
                " ON CONFLICT (key) DO UPDATE SET expires_ms = excluded.expires_ms,"
                " value = CASE WHEN counters.expires_ms < ? THEN 1 ELSE counters.value + 1 END"
                " RETURNING value",
                (key, now + int(ttl_s * 1000), now),
            ).fetchone()
            return int(value)

        return await self._db.run(increment)

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        def take(connection: sqlite3.Connection) -> bool:
            now = _now_ms()
            with transaction(connection):
                connection.execute(
                    "INSERT INTO leases (name, holder, until_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                    " until_ms = excluded.until_ms"
                    " WHERE leases.holder = excluded.holder OR leases.until_ms < ?",
                    (name, holder, now + int(ttl_s * 1000), now),
                )
                (current,) = connection.execute(
                    "SELECT holder FROM leases WHERE name = ?", (name,)
                ).fetchone()
            return bool(current == holder)

        return await self._db.run(take)

    async def holder(self, name: str) -> str | None:
        def read(connection: sqlite3.Connection) -> str | None:
            row = connection.execute(
                "SELECT holder FROM leases WHERE name = ? AND until_ms >= ?", (name, _now_ms())
            ).fetchone()
            return str(row[0]) if row is not None else None

        return await self._db.run(read)

    async def release(self, name: str, holder: str) -> None:
        await self._db.run(
            lambda connection: connection.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)
            )
        )

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        sweep = self._sweep_due()  # presence records come and go without any result stored

        def write(connection: sqlite3.Connection) -> None:
            now = _now_ms()
            with transaction(connection):
                connection.execute(
                    "INSERT INTO kv (key, value, expires_ms) VALUES (?, ?, ?) ON CONFLICT (key)"
                    " DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms",
                    (key, value, now + int(ttl_s * 1000)),
                )
                if sweep:
                    _sweep(connection, now)

        await self._db.run(write)

    async def fetch(self, key: str) -> bytes | None:
        def read(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT value FROM kv WHERE key = ? AND expires_ms > ?", (key, _now_ms())
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._db.run(read)

    async def delete(self, key: str) -> None:
        await self._db.run(
            lambda connection: connection.execute("DELETE FROM kv WHERE key = ?", (key,))
        )

    async def scan(self, prefix: str) -> dict[str, bytes]:
        def read(connection: sqlite3.Connection) -> dict[str, bytes]:
            rows = connection.execute(  # substr, not LIKE: a prefix may hold % or _
                "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? AND expires_ms > ?",
                (len(prefix), prefix, _now_ms()),
            ).fetchall()
            return {key: bytes(value) for key, value in rows}

        return await self._db.run(read)

    async def reserve(
        self, key: str, interval_s: float, count: int, horizon_s: float
    ) -> tuple[int, float]:
        name = f"rate:{key}"

        def take(connection: sqlite3.Connection) -> tuple[int, float]:
            with transaction(connection):  # IMMEDIATE: read and write under the write lock
                now = time.time()  # after the lock is ours: waiting for it costs no slot
                row = connection.execute(
                    "SELECT value FROM counters WHERE key = ?", (name,)
                ).fetchone()
                next_s, granted, wait_s = reserve_slots(
                    0.0 if row is None else row[0] / 1e6, now, interval_s, count, horizon_s
                )
                if granted:
                    connection.execute(
                        "INSERT INTO counters (key, value, expires_ms) VALUES (?, ?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                        " expires_ms = excluded.expires_ms",
                        (name, int(next_s * 1e6), int(next_s * 1000) + 1000),
                    )
            return granted, wait_s

        return await self._db.run(take)


class _Hub:
    """Reads the watched ids when rung (or on a slow safety timer) and feeds their inboxes."""

    def __init__(self, db: Database, listener: Listener) -> None:
        self._db = db
        self._listener = listener
        self._watched: dict[str, dict[asyncio.Queue[bytes], int]] = {}  # id -> inbox -> version
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aiotq-results")

    def add(self, task_id: str, inbox: asyncio.Queue[bytes]) -> None:
        self._watched.setdefault(task_id, {})[inbox] = 0
        self._listener.wake()  # read it now: a result stored before the wait is found at once

    def remove(self, task_id: str, inbox: asyncio.Queue[bytes]) -> None:
        inboxes = self._watched.get(task_id)
        if inboxes is not None:
            inboxes.pop(inbox, None)
            if not inboxes:
                del self._watched[task_id]

    async def _run(self) -> None:
        backoff = Backoff(initial=0.5, cap=5.0)
        while True:
            self._listener.arm()
            try:
                await self._deliver()
            except AiotqError as exc:  # e.g. locked past the busy timeout: try again
                log.warning("reading results failed, retrying: %s", exc)
                await backoff.sleep()
                continue
            backoff.reset()
            await self._listener.wait(RECHECK_S if self._watched else 3600.0)

    async def _deliver(self) -> None:
        ids = list(self._watched)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]

            def read(connection: sqlite3.Connection) -> list[tuple[str, bytes, int]]:
                return connection.execute(
                    "SELECT task_id, value, version FROM results WHERE expires_ms > ?"
                    f" AND task_id IN ({','.join('?' * len(chunk))})",  # noqa: B023
                    (_now_ms(), *chunk),  # noqa: B023
                ).fetchall()

            for task_id, value, version in await self._db.run(read):
                for inbox, seen in list(self._watched.get(task_id, {}).items()):
                    if version > seen:
                        self._watched[task_id][inbox] = version
                        inbox.put_nowait(bytes(value))

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._listener.close()
