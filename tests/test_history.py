"""Task history: one contract for every store (memory, SQLite, Redis), and the worker that
writes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiotq import App
from aiotq.backends.memory import MemoryBackend
from aiotq.backends.redis import RedisBackend
from aiotq.backends.sqlite import SqliteBackend
from aiotq.history import Combiner, TaskQuery, records_of
from aiotq.testing import run_worker


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        backend: Any = MemoryBackend()
    elif request.param == "sqlite":
        backend = SqliteBackend(f"sqlite:///{tmp_path}/h.db")
    else:
        backend = RedisBackend(request.getfixturevalue("redis_url"))
    await backend.connect()
    history = backend.task_history(max_tasks=50, max_age_s=3600)
    history.trim_every_s = 0.0
    yield history
    await backend.aclose()


def lifecycle(
    task_id: str, name: str, at: float, *, ok: bool = True, **extra: Any
) -> list[dict[str, Any]]:
    base = {"uuid": task_id, "hostname": extra.pop("hostname", "w1@here")}
    received = {**base, "type": "task-received", "timestamp": at, "name": name,
                "args": extra.pop("args", [1, 2]), "kwargs": {}, "queue": extra.pop("queue", "default"),
                "root_id": extra.pop("root_id", task_id), "parent_id": extra.pop("parent_id", None),
                "retries": 0}  # fmt: skip
    started = {**base, "type": "task-started", "timestamp": at + 0.01, "name": name}
    if ok:
        end = {
            **base,
            "type": "task-succeeded",
            "timestamp": at + 0.02,
            "result": 3,
            "runtime": 0.01,
        }
    else:
        end = {**base, "type": "task-failed", "timestamp": at + 0.02, "exception": "ValueError: no",
               "traceback": "Traceback ...", "runtime": 0.01}  # fmt: skip
    return [received, started, end]


async def test_records_merge_a_lifecycle_and_search_narrows(store: Any) -> None:
    now = time.time()
    ids = [f"id-{n}-{uuid.uuid4().hex[:6]}" for n in range(6)]
    events: list[dict[str, Any]] = []
    for n, task_id in enumerate(ids):
        events += lifecycle(
            task_id, "sms.send" if n % 2 else "mail.send", now + n, ok=n != 3,
            hostname="w2@here" if n == 5 else "w1@here", queue="fast" if n == 4 else "default",
            args=[f"+1555{n}"], root_id=ids[0], parent_id=ids[0] if n else None,
        )  # fmt: skip
    combiner = Combiner()  # as a worker holds it: the third task's run spans two ticks
    for tick in (events[:7], events[7:]):
        await store.write([r for r in map(combiner.feed, tick) if r is not None])
    record = await store.get(ids[3])
    assert record.state == "FAILURE" and record.exception == "ValueError: no"
    assert record.name == "sms.send" and record.args == ["+15553"] and record.worker == "w1@here"
    assert [t[0] for t in record.timeline] == ["task-received", "task-started", "task-failed"]
    assert record.runtime_s == 0.01 and record.received_at_s == pytest.approx(now + 3)
    everything = await store.search(TaskQuery())
    assert everything.total == 6 and [r.id for r in everything.records] == ids[::-1]
    assert [r.id for r in (await store.search(TaskQuery(state="FAILURE"))).records] == [ids[3]]
    succeeded = await store.search(TaskQuery(state="SUCCESS"))
    assert succeeded.total == 5 and ids[3] not in {r.id for r in succeeded.records}
    assert {r.id for r in (await store.search(TaskQuery(name="sms.send"))).records} == {
        ids[1],
        ids[3],
        ids[5],
    }
    both = await store.search(TaskQuery(name="sms.send", worker="w2@here"))
    assert [r.id for r in both.records] == [ids[5]] and both.total == 1
    assert [r.id for r in (await store.search(TaskQuery(queue="fast"))).records] == [ids[4]]
    assert [r.id for r in (await store.search(TaskQuery(q="+15552"))).records] == [ids[2]]
    assert [r.id for r in (await store.search(TaskQuery(q=ids[1][:9]))).records] == [ids[1]]
    window = await store.search(TaskQuery(since_s=now + 1.5, until_s=now + 3.5))
    assert {r.id for r in window.records} == {ids[2], ids[3]}
    assert len((await store.search(TaskQuery(root_id=ids[0]))).records) == 6
    page = await store.search(TaskQuery(page=2, per_page=4))
    assert [r.id for r in page.records] == ids[1::-1] and page.total == 6
    assert await store.names() == ["mail.send", "sms.send"]
    minutes = await store.minutes(now - 120)
    assert sum(m.succeeded for m in minutes) == 5 and sum(m.failed for m in minutes) == 1
    assert minutes[-1].runtime_p50_s == 0.01


async def test_retention_keeps_the_newest(store: Any) -> None:
    now = time.time()
    events: list[dict[str, Any]] = []
    for n in range(80):
        events += lifecycle(f"t{n:03d}-{uuid.uuid4().hex[:4]}", "x.y", now - 80 + n)
    await store.write(records_of(events))
    await store.write(records_of(lifecycle("last", "x.y", now)))
    page = await store.search(TaskQuery(per_page=100))
    assert 40 <= page.total <= 51  # max_tasks=50 (Redis and SQLite cut at a score: ties go)
    assert page.records[0].id == "last"
    assert page.records[-1].id >= "t030"


async def test_sqlite_keeps_unread_records_bounded_and_indexes_them_on_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers append to a log that a reader indexes: with nobody reading, the log keeps
    about the newest max_tasks records; the read indexes it in chunks, oldest first, so a
    later run of a task replaces its earlier one."""
    from aiotq.backends import history_sqlite

    monkeypatch.setattr(history_sqlite, "ABSORB_CHUNK", 7)  # several transactions
    backend = SqliteBackend(f"sqlite:///{tmp_path}/h.db")
    history = backend.task_history(max_tasks=30, max_age_s=3600)
    history.trim_every_s = 0.0
    now = time.time()
    for n in range(20):  # 20 writes of 3 records: 60 unread, nobody reading
        events = [
            e for k in range(3) for e in lifecycle(f"t{n:02d}-{k}", "x.y", now - 60 + n + k / 10)
        ]
        await history.write(records_of(events))
    retried = records_of(lifecycle("t19-2", "x.y", now, ok=False))  # a later run of one id
    await history.write(retried)

    def unread() -> int:
        import sqlite3

        with sqlite3.connect(tmp_path / "h-history.db") as connection:
            return int(connection.execute("SELECT sum(count) FROM history_log").fetchone()[0])

    assert 30 <= unread() <= 34  # whole writes are kept: the newest ~30 records
    page = await history.search(TaskQuery(per_page=100))
    assert 28 <= page.total <= 31 and page.records[0].id == "t19-2"
    assert page.records[0].state == "FAILURE"  # the later run won
    assert page.records[-1].id >= "t09"
    assert (await history.get("t19-1")) is not None
    await backend.aclose()


async def test_a_worker_writes_history_without_events(tmp_path: Path) -> None:
    app = App("hist", broker=f"sqlite:///{tmp_path}/w.db")

    @app.task(name="hist.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="hist.boom")
    async def boom(text: str) -> None:
        raise ValueError(text)

    async with run_worker(app, hostname="hist@here"):
        ok, bad = await add.send(2, 3), await boom.send("<script>x</script>")
        assert await ok.get(timeout=5) == 5
        with pytest.raises(ValueError):
            await bad.get(timeout=5)
        history = app.history
        assert history is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done = await history.get(bad.id)
            if done is not None and done.state == "FAILURE":
                break
            await asyncio.sleep(0.05)
    record = await history.get(ok.id)
    assert record is not None and record.state == "SUCCESS" and record.result == 5
    assert record.args == [2, 3] and record.worker == "hist@here" and record.queue == "default"
    failed = await history.get(bad.id)
    assert failed is not None and "ValueError" in (failed.exception or "")
    assert failed.args == ["<script>x</script>"] and "raise ValueError" in (failed.traceback or "")
    await app.aclose()


async def test_a_run_that_ends_just_before_a_warm_stop_is_in_the_history(
    tmp_path: Path,
) -> None:
    """The steps are folded into records twice a second and written once a second: a stop
    folds and writes what is left, so nothing that ran is missing from the history."""
    app = App("hist", broker=f"sqlite:///{tmp_path}/s.db")

    @app.task(name="hist.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with run_worker(app, hostname="stop@here"):
        result = await add.send(4, 5)
        assert await result.get(timeout=5) == 9
    history = app.history
    assert history is not None
    record = await history.get(result.id)  # no wait: written before the worker returned
    assert record is not None and record.state == "SUCCESS" and record.result == 9
    await app.aclose()
