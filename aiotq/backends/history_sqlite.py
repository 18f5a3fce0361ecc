"""Task history in the SQLite result backend: one indexed row per task (`history`), one row
per minute of counters (`history_minutes`).

Workers only append: a write's records go into `history_log` as one row (their JSON array;
the table has no index but its row id), about a microsecond a record. Indexing them costs
twenty times that (the id index is random, and at the retention limit every insert also
pays a delete), and on a busy worker that was a third of its speed. So whoever reads the
history indexes what the workers wrote since the last read (`absorb`, in the reader's
process: the dashboard, a script), in transactions of about ABSORB_CHUNK records, oldest
first, so a later run of an id replaces an earlier one. Per-minute counters and task names
are written by the workers. The log is capped at the retention limit (the newest kept), so
history with no reader stays bounded. Listing uses the (column, updated_ms) indexes, so a
filtered page stays fast at a million rows; worker, queue and `q` (a substring of id, name
or args) filter the rows of those."""

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

# The log's oldest records indexed, one statement: SQLite reads the columns out of each
# record (sqlite3 releases the GIL for the whole statement). `search` is lowercased by
# SQLite (ASCII letters); a query lowers `q` the same way.
ABSORB = (
    "INSERT OR REPLACE INTO history"
    " (id, state, name, worker, queue, root_id, updated_ms, search, record)"
    " SELECT r.value->>'id', r.value->>'state', r.value->>'name', r.value->>'worker',"
    " r.value->>'queue', nullif(r.value->>'root_id', r.value->>'id'),"
    " CAST(r.value->>'updated_at_s' * 1000 AS INTEGER),"
    " lower(r.value->>'id' || ' ' || ifnull(r.value->>'name', '') || ' '"
    " || ifnull(r.value->'args', 'null') || ' ' || ifnull(r.value->'kwargs', 'null')),"
    " r.value FROM history_log AS l, json_each(l.records) AS r WHERE l.seq <= ?"
    " ORDER BY l.seq, r.key"
)
# the newest log rows holding `max_tasks` records: older ones go (history with no reader)
LOG_KEPT_FROM = (
    "SELECT seq FROM (SELECT seq, sum(count) OVER (ORDER BY seq DESC) AS newer"
    " FROM history_log) WHERE newer >= ? ORDER BY seq DESC LIMIT 1"
)
ABSORB_CHUNK = 20_000  # records a transaction: a worker's append waits at most this long


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
        minutes = minute_counts(records)  # here: the database thread's Python holds the GIL

        def append(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT INTO history_log (records, count) VALUES (?, ?)", (rows, len(records))
                )
                if names:
                    connection.executemany(
                        "INSERT OR IGNORE INTO history_names (name) VALUES (?)",
                        [(name,) for name in names],
                    )
                self._count_minutes(connection, minutes)
                if trim:  # unread records past the limit: the newest are kept
                    kept = connection.execute(LOG_KEPT_FROM, (self.max_tasks,)).fetchone()
                    if kept is not None:
                        connection.execute("DELETE FROM history_log WHERE seq < ?", kept)
                    oldest_s = int(time.time() - self.max_age_s)
                    connection.execute(
                        "DELETE FROM history_minutes WHERE minute_s < ?", (oldest_s,)
                    )

        await self._db.run(append)
        self._known_names.update(names)

    async def absorb(self) -> int:
        """Index what the workers appended since the last read (every read does this
        first); returns how many records it indexed."""

        def absorb(connection: sqlite3.Connection) -> int:
            done = 0
            while True:
                with transaction(connection):
                    # the oldest rows holding about ABSORB_CHUNK records (one at least)
                    row = connection.execute(
                        "SELECT max(seq), sum(count) FROM (SELECT seq, count, sum(count)"
                        " OVER (ORDER BY seq) AS upto FROM history_log) WHERE upto - count < ?",
                        (ABSORB_CHUNK,),
                    ).fetchone()
                    last, count = row
                    if last is None:
                        return done
                    connection.execute(ABSORB, (last,))
                    connection.execute("DELETE FROM history_log WHERE seq <= ?", (last,))
                    done += int(count)
                    self._trim(connection)

        return await self._db.run(absorb)

    @staticmethod
    def _count_minutes(connection: sqlite3.Connection, minutes: dict[int, MinuteCounts]) -> None:
        for minute_s, counts in minutes.items():
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
        await self.absorb()

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
        await self.absorb()

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
