"""Worker presence and `aiotq status`: live workers listed at once from their TTL records; a
warm stop removes its record, a SIGKILLed worker's lapses within three heartbeats."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiotq import App
from aiotq.presence import Presence, live_workers
from aiotq.testing import run_worker

from .conftest import wait_for
from .workerproc import ROOT, WorkerProcess

HEARTBEAT_S = 0.3


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/aiotq.db"


@pytest.fixture
def start(url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start_worker(name: str) -> WorkerProcess:
        worker = WorkerProcess(url, "-n", name, env={"E2E_HEARTBEAT_S": str(HEARTBEAT_S)})
        started.append(worker)
        return worker.ready()

    yield start_worker
    for worker in started:
        worker.stop()


def status(url: str) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run(
        [sys.executable, "-m", "aiotq", "status", "-A", "tests.apps:tq", "--json"], cwd=ROOT,
        env={**os.environ, "AIOTQ_BROKER_URL": url}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout or "[]")


def names(url: str) -> list[object]:
    return [row["hostname"] for row in status(url)[1]]


def test_status_lists_live_workers_and_drops_a_killed_one_within_its_ttl(
    url: str, start: Callable[..., WorkerProcess]
) -> None:
    first, second = start("one@here"), start("two@here")

    def both_listed() -> tuple[int, list[dict[str, object]]] | None:
        code, rows = status(url)  # read again if a stalled heartbeat let one lapse
        listed = [row["hostname"] for row in rows] == ["one@here", "two@here"]
        return (code, rows) if listed else None

    code, rows = wait_for(both_listed, timeout=10)
    assert code == 0 and rows[0]["pid"] == first.proc.pid and rows[0]["queues"] == "default"
    first.signal(signal.SIGKILL)
    first.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: names(url) == ["two@here"], timeout=10)
    assert time.monotonic() - killed_at < 3 * HEARTBEAT_S + 2  # its TTL, and a status run
    second.signal(signal.SIGTERM)  # a warm stop removes the record at once
    assert second.wait(15) == 0
    assert status(url) == (1, [])


async def test_the_record_counts_what_the_worker_did() -> None:
    app = App("count", broker="memory://", backend="memory://", worker_heartbeat_s=0.05)

    @app.task(name="count.ok")
    async def ok() -> int:
        return 1

    @app.task(name="count.bad")
    async def bad() -> None:
        raise ValueError("no")

    async with run_worker(app, concurrency=7, hostname="counter@test"):
        for _ in range(3):
            await (await ok.send()).get(timeout=5)
        await (await bad.send()).get(timeout=5, propagate=False)
        assert app.coordinator is not None
        coordinator = app.coordinator

        async def counted() -> Presence | None:
            records = await live_workers(coordinator)  # none for now if a stall let it lapse
            if records and records[0].processed == 4 and records[0].failed == 1:
                return records[0]
            return None

        deadline = time.monotonic() + 5
        while (record := await counted()) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert len(await live_workers(coordinator)) <= 1
        assert (record.hostname, record.concurrency, record.pid) == ("counter@test", 7, os.getpid())
        assert record.rss_bytes > 10 * 2**20 and len(record.loadavg) == 3
    assert await live_workers(coordinator) == []  # gone with the warm stop


async def test_a_blocked_event_loop_is_logged_naming_the_task_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("lag", broker="memory://", backend="memory://", worker_loop_lag_warn_s=0.2)

    @app.task(name="lag.blocks")
    async def blocks() -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - the fault under test: a task that never awaits

    @app.task(name="lag.fine")
    async def fine() -> None:
        await asyncio.sleep(0.01)

    async with run_worker(app, hostname="lag@test") as worker:
        await (await fine.send()).get(timeout=5)
        result = await blocks.send()
        await result.get(timeout=5)
        deadline = time.monotonic() + 5
        while "event loop was blocked" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        assert f"lag.blocks[{result.id}]" in caplog.text
        assert app.coordinator is not None
        deadline = time.monotonic() + 5
        while not [p for p in await live_workers(app.coordinator) if p.loop_blocked >= 1]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [record] = await live_workers(app.coordinator)
        assert record.loop_lag_max_s >= 0.25
    assert worker.stopping
