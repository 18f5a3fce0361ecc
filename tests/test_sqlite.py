"""The embedded default broker and backend (SQLite) with real worker processes."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiotq import App

from .apps import build
from .conftest import wait_for
from .workerproc import ROOT, Start, WorkerProcess, workers_on


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/aiotq.db"


@pytest.fixture
def start(url: str) -> Iterator[Start]:
    yield from workers_on(url)


@pytest.fixture
def app(url: str) -> Iterator[App]:
    producer = build(url)
    yield producer
    producer.close()


def test_default_is_a_sqlite_file_announced_in_the_banner(tmp_path: Path) -> None:
    """No broker configured: worker and producer meet in $AIOTQ_HOME/aiotq.db, no server."""
    home = {"AIOTQ_HOME": str(tmp_path)}
    worker = WorkerProcess(None, env=home).ready()
    try:
        assert f"sqlite:///{tmp_path}/aiotq.db  (the embedded default" in worker.log
        os.environ["AIOTQ_HOME"] = str(tmp_path)
        try:
            producer = build()
            assert producer.broker.url == f"sqlite:///{tmp_path}/aiotq.db"
            assert producer.send_task("e2e.add", (2, 3)).get(timeout=10) == 5
            producer.close()
        finally:
            del os.environ["AIOTQ_HOME"]
    finally:
        worker.stop()
    assert (tmp_path / "aiotq.db").exists()


def test_two_workers_share_the_work_each_task_once(app: App, start: Start) -> None:
    workers = [start("-c", "20"), start("-c", "20")]
    results = [app.send_task("e2e.sleep", (0.01, f"t{i}")) for i in range(300)]
    assert [r.get(timeout=30) for r in results] == [f"t{i}" for i in range(300)]

    def runs() -> list[int]:  # the log lines come through reader threads: wait for them
        return [w.count(r"e2e\.sleep\[.*\] succeeded") for w in workers]

    wait_for(lambda: sum(runs()) >= 300, 5)
    assert sum(runs()) == 300, runs()  # each message taken by exactly one worker


def test_delayed_tasks_across_workers_run_once_on_time(app: App, start: Start) -> None:
    workers = [start("-c", "50"), start("-c", "50")]
    due = {}
    results = []
    for i in range(60):
        countdown = random.uniform(0.1, 2.0)
        due[f"d{i}"] = time.time() + countdown
        results.append(app.send_task("e2e.now", countdown=countdown, task_id=f"d{i}"))
    lateness = [r.get(timeout=20) - due[r.id] for r in results]
    assert min(lateness) >= -0.01 and max(lateness) <= 1.0, (min(lateness), max(lateness))

    def runs() -> int:  # the log lines come through reader threads: wait for them
        return sum(w.count(r"e2e\.now\[.*\] succeeded") for w in workers)

    wait_for(lambda: runs() >= 60, 5)
    assert runs() == 60


PRODUCER = """
import sys
from tests.apps import build
app = build(sys.argv[1])
for i in range(100_000):
    app.send_task("e2e.add", (i, i))
    if i == 200:
        print("sending", flush=True)
"""


def test_database_survives_a_producer_killed_mid_write(app: App, start: Start, url: str) -> None:
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert producer.stdout is not None and producer.stdout.readline() == "sending\n"
    time.sleep(0.2)  # let it be mid-stream of inserts when it dies
    producer.kill()
    producer.wait(10)
    producer.stdout.close()
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (sent,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert sent > 200
    start("-c", "200")

    def drained() -> bool:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)

    wait_for(drained, 60)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone() == (sent,)
    assert app.send_task("e2e.add", (20, 22)).get(timeout=10) == 42
