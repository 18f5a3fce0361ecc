"""The embedded default broker and backend (SQLite) with real worker processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
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
    runs = [w.count(r"e2e\.sleep\[.*\] succeeded") for w in workers]
    assert sum(runs) == 300, runs  # each message taken by exactly one worker


def test_sigkill_loses_nothing(app: App, start: Start) -> None:
    env = {"E2E_VISIBILITY_S": "2"}
    victim = start("-c", "30", env=env)
    results = [app.send_task("e2e.sleep", (5.0, f"t{i}")) for i in range(30)]
    victim.wait_for_log(r"e2e\.sleep\[.*\] received", times=30)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    start("-c", "30", env=env)
    assert sorted(r.get(timeout=40) for r in results) == sorted(f"t{i}" for i in range(30))


def test_live_worker_keeps_a_task_longer_than_the_visibility_timeout(
    app: App, start: Start
) -> None:
    env = {"E2E_VISIBILITY_S": "1"}
    workers = [start(env=env), start(env=env)]
    assert app.send_task("e2e.sleep", (3.5, "long")).get(timeout=20) == "long"
    assert sum(w.count(r"e2e\.sleep\[.*\] received") for w in workers) == 1


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
    assert sum(w.count(r"e2e\.now\[.*\] succeeded") for w in workers) == 60


def test_malformed_row_is_dead_lettered_and_the_worker_lives(
    app: App, start: Start, tmp_path: Path
) -> None:
    worker = start()
    with sqlite3.connect(tmp_path / "aiotq.db") as db:
        db.execute(
            "INSERT INTO messages (queue, priority, due_ms, lease_ms, headers, body)"
            " VALUES ('default', 0, 0, 0, ?, ?)",
            (b'{"content-type": "application/json"}', b"{not json"),
        )
    worker.wait_for_log("Rejected message")
    assert app.send_task("e2e.add", (1, 2)).get(timeout=10) == 3
    dead = asyncio.run(app.broker.dead_letters("default"))
    assert len(dead) == 1 and dead[0][0] == b"{not json"
    assert worker.proc.poll() is None


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
