"""Task history in the SQLite result backend: one indexed row per task (`history`), one row
per minute of counters (`history_minutes`). A tick's records are written in one transaction;
listing uses the (column, updated_ms) indexes, so a filtered page stays fast at a million
rows. Only what a page filters on most is indexed (time, state, name, a canvas's root):
each index is one more write per task; worker, queue and `q` (a substring of id, name or
args) filter the rows of those."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .._sqlite import Database, transaction
from ..history import (
    COUNT_LIMIT,
    Minute,
    MinuteCounts,
    Page,
    TaskQuery,
    TaskRecord,
    minute_counts,
)

TRIM_EVERY_S = 30.0
_encode = msgspec.msgpack.Encoder().encode
_decode_counts = msgspec.msgpack.Decoder(MinuteCounts).decode
_json_rows = msgspec.json.Encoder().encode
_from_json = msgspec.json.Decoder(TaskRecord).decode
_from_msgpack = msgspec.msgpack.Decoder(TaskRecord).decode

# One statement per batch, and the columns read out of the records by SQLite: the worker's
# thread only encodes the batch as one JSON array (a microsecond a record), and sqlite3
# releases the GIL for the whole statement. executemany() takes the GIL back after every
# row, and building each row's columns and search text in Python cost the worker loop as
# much again as the rest of its history. `search` is lowercased by SQLite (ASCII letters);
# a query lowers `q` the same way.
INSERT_BATCH = (
    "INSERT OR REPLACE INTO history"
    " (id, state, name, worker, queue, root_id, updated_ms, search, record)"
    " SELECT value->>'id', value->>'state', value->>'name', value->>'worker',"
    " value->>'queue', nullif(value->>'root_id', value->>'id'),"
    " CAST(value->>'updated_at_s' * 1000 AS INTEGER),"
    " lower(value->>'id' || ' ' || ifnull(value->>'name', '') || ' '"
    " || ifnull(value->'args', 'null') || ' ' || ifnull(value->'kwargs', 'null')),"
    " value FROM json_each(?)"
)


def _decode_record(data: bytes | str) -> TaskRecord:
    """Records are JSON text; those written before are MessagePack (read the same)."""
    return _from_json(data) if isinstance(data, str) else _from_msgpack(data)


class SqliteHistory:
    def __init__(self, db: Database, max_tasks: int, max_age_s: float) -> None:
        self._db = db
        self.max_tasks = max_tasks
        self.max_age_s = max_age_s
        self._trimmed_at = 0.0
        self.trim_every_s = TRIM_EVERY_S
        self._known_names: set[str] = set()  # already in history_names

    async def write(self, records: Sequence[TaskRecord]) -> None:
        if not records:
            return
        trim = time.monotonic() - self._trimmed_at > self.trim_every_s
        if trim:
            self._trimmed_at = time.monotonic()
        rows = _json_rows(records).decode()
        names = {r.name for r in records if r.name and r.name not in self._known_names}

        def insert(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(INSERT_BATCH, (rows,))
                if names:
                    connection.executemany(
                        "INSERT OR IGNORE INTO history_names (name) VALUES (?)",
                        [(name,) for name in names],
                    )
                self._count_minutes(connection, records)
                if trim:
                    self._trim(connection)

        await self._db.run(insert)
        self._known_names.update(names)

    @staticmethod
    def _count_minutes(connection: sqlite3.Connection, records: Sequence[TaskRecord]) -> None:
        for minute_s, counts in minute_counts(records).items():
            row = connection.execute(
                "SELECT counts FROM history_minutes WHERE minute_s = ?", (minute_s,)
            ).fetchone()
            if row is not None:
                kept = _decode_counts(row[0])
                kept.add(counts)
                counts = kept
            connection.execute(
                "INSERT OR REPLACE INTO history_minutes (minute_s, counts) VALUES (?, ?)",
                (minute_s, _encode(counts)),
            )

    def _trim(self, connection: sqlite3.Connection) -> None:
        oldest_ms = int((time.time() - self.max_age_s) * 1000)
        connection.execute("DELETE FROM history WHERE updated_ms < ?", (oldest_ms,))
        connection.execute("DELETE FROM history_minutes WHERE minute_s < ?", (oldest_ms // 1000,))
        row = connection.execute(
            "SELECT updated_ms FROM history ORDER BY updated_ms DESC LIMIT 1 OFFSET ?",
            (self.max_tasks,),
        ).fetchone()
        if row is not None:
            connection.execute("DELETE FROM history WHERE updated_ms <= ?", (row[0],))

    async def get(self, task_id: str) -> TaskRecord | None:
        def read(connection: sqlite3.Connection) -> TaskRecord | None:
            row = connection.execute(
                "SELECT record FROM history WHERE id = ?", (task_id,)
            ).fetchone()
            return _decode_record(row[0]) if row is not None else None

        return await self._db.run(read)

    async def search(self, query: TaskQuery) -> Page:
        where: list[str] = ["1"]
        values: list[Any] = []
        for column, value in (("state", query.state), ("name", query.name),
                              ("worker", query.worker), ("queue", query.queue)):  # fmt: skip
            if value:
                where.append(f"{column} = ?")
                values.append(value)
        if query.root_id:
            where.append("(root_id = ? OR id = ?)")
            values += [query.root_id, query.root_id]
        if query.since_s is not None:
            where.append("updated_ms >= ?")
            values.append(int(query.since_s * 1000))
        if query.until_s is not None:
            where.append("updated_ms <= ?")
            values.append(int(query.until_s * 1000))
        if query.q:
            where.append("instr(search, lower(?)) > 0")
            values.append(query.q)
        condition = " AND ".join(where)
        offset = (max(query.page, 1) - 1) * query.per_page

        def read(connection: sqlite3.Connection) -> Page:
            rows = connection.execute(
                f"SELECT record FROM history WHERE {condition}"
                " ORDER BY updated_ms DESC LIMIT ? OFFSET ?",
                (*values, query.per_page, offset),
            ).fetchall()
            (total,) = connection.execute(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM history WHERE {condition}"
                " ORDER BY updated_ms DESC LIMIT ?)",
                (*values, COUNT_LIMIT + 1),
            ).fetchone()
            exact = total <= COUNT_LIMIT
            return Page(records=[_decode_record(row[0]) for row in rows],
                        total=min(int(total), COUNT_LIMIT), page=query.page,
                        per_page=query.per_page, exact=exact)  # fmt: skip

        return await self._db.run(read)

    async def names(self) -> list[str]:
        def read(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute("SELECT name FROM history_names ORDER BY name").fetchall()
            return [row[0] for row in rows]

        return await self._db.run(read)

    async def minutes(self, since_s: float) -> list[Minute]:
        def read(connection: sqlite3.Connection) -> list[Minute]:
            rows = connection.execute(
                "SELECT minute_s, counts FROM history_minutes WHERE minute_s >= ?"
                " ORDER BY minute_s",
                (int(since_s) // 60 * 60,),
            ).fetchall()
            return [_decode_counts(counts).minute(minute_s) for minute_s, counts in rows]

        return await self._db.run(read)
