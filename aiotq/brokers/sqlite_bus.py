"""The SQLite broker's bus (see bus.py): one table, capped per topic, read by row id.

A post inserts a row, drops the topic's rows past `keep` and every expired row, and rings
the database's `bus` doorbell; a subscriber reads the rows after the last id it saw and
sleeps on the doorbell in between (any process's post wakes it).
"""

from __future__ import annotations

import sqlite3
import time

from .._sqlite import Database, Doorbell, Listener, transaction

READ_LIMIT = 1000


class SqliteBus:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._bell = Doorbell(db.path, "bus")

    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        now_ms = int(time.time() * 1000)

        def insert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                cursor = connection.execute(
                    "INSERT INTO bus (topic, body, expires_ms) VALUES (?, ?, ?)",
                    (topic, body, now_ms + int(ttl_s * 1000)),
                )
                past = (cursor.lastrowid or 0) - keep
                connection.execute("DELETE FROM bus WHERE topic = ? AND id <= ?", (topic, past))
                connection.execute("DELETE FROM bus WHERE expires_ms < ?", (now_ms,))
            self._bell.ring()

        await self._db.run(insert)

    async def subscribe(self, topic: str, *, replay: bool = False) -> _TableReader:
        listener = self._bell.listen()

        def newest(connection: sqlite3.Connection) -> int:
            row = connection.execute("SELECT MAX(id) FROM bus").fetchone()
            return int(row[0] or 0)

        try:
            last = 0 if replay else await self._db.run(newest)
        except BaseException:
            listener.close()
            raise
        return _TableReader(self._db, topic, listener, last)

    def close(self) -> None:
        self._bell.close()


class _TableReader:
    def __init__(self, db: Database, topic: str, listener: Listener, last: int) -> None:
        self._db = db
        self._topic = topic
        self._listener = listener
        self._last = last

    def _read(self, connection: sqlite3.Connection) -> list[tuple[int, bytes]]:
        return connection.execute(
            "SELECT id, body FROM bus WHERE topic = ? AND id > ? AND expires_ms >= ?"
            " ORDER BY id LIMIT ?",
            (self._topic, self._last, int(time.time() * 1000), READ_LIMIT),
        ).fetchall()

    async def next(self, timeout_s: float) -> list[bytes]:
        self._listener.arm()  # before reading: a post between the read and the wait rings
        rows = await self._db.run(self._read)
        if not rows:
            await self._listener.wait(timeout_s)
            rows = await self._db.run(self._read)
        if rows:
            self._last = rows[-1][0]
        return [bytes(body) for _, body in rows]

    async def aclose(self) -> None:
        self._listener.close()
