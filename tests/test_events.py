"""Events: Celery's names and fields, batched per tick over the broker's bus, replayed to a
monitor that starts late (Redis, SQLite), bounded when nobody listens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aiotq import App
from aiotq.testing import run_worker

from .apps import build
from .conftest import async_wait_for
from .test_control import Setup, setup  # noqa: F401  (the fixture: every broker)
from .workerproc import ROOT, WorkerProcess


@pytest.fixture
def start(setup: Setup) -> Iterator[Callable[..., WorkerProcess]]:  # noqa: F811
    started: list[WorkerProcess] = []

    def start_worker(*args: str) -> WorkerProcess:
        worker = WorkerProcess(setup.broker, "-n", "ev@here", *args, env=setup.env)
        started.append(worker)
        return worker.ready()

    yield start_worker
    for worker in started:
        worker.stop()


async def collect(
    app: App, until: Callable[[list[dict[str, Any]]], bool], *, replay: bool, within_s: float = 20
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        async for event in app.events.receive(replay=replay):
            seen.append(event)
            if until(seen):
                return

    await asyncio.wait_for(read(), within_s)
    return seen


def lifecycle(events: list[dict[str, Any]], task_id: str) -> list[str]:
    return [e["type"] for e in events if e.get("uuid") == task_id]


async def test_a_monitor_started_after_the_worker_sees_100_lifecycles_in_order(
    setup: Setup,  # noqa: F811
    start: Callable[..., WorkerProcess],
) -> None:
    start("-E")
    app = build(setup.broker, setup.results)
    add = app.tasks["e2e.add"]
    replays = not setup.broker.startswith("amqp")
    seen: list[dict[str, Any]] = []
    listening = None
    if not replays:  # RabbitMQ keeps no past: a monitor hears what comes after it binds

        async def listen() -> None:
            async for event in app.events.receive():
                seen.append(event)

        listening = asyncio.ensure_future(listen())
        async with asyncio.timeout(20):  # subscribed once an event comes through
            while not seen:
                await (await add.send(0, 0)).get(timeout=20)
                await asyncio.sleep(0.05)
    results = [await add.send(n, n) for n in range(100)]
    assert [await r.get(timeout=20) for r in results] == [2 * n for n in range(100)]
    if listening is not None:
        ids = {r.id for r in results}
        await async_wait_for(
            lambda: ids <= {e.get("uuid") for e in seen if e["type"] == "task-succeeded"}, 20
        )
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        events = seen
    else:
        events = await collect(
            app, lambda seen: sum(e["type"] == "task-succeeded" for e in seen) >= 100, replay=True
        )
    for result in results:
        assert lifecycle(events, result.id) == ["task-received", "task-started", "task-succeeded"]
    succeeded = next(
        e for e in events if e["type"] == "task-succeeded" and e["uuid"] == results[7].id
    )
    assert succeeded["result"] == 14 and succeeded["runtime"] >= 0
    assert succeeded["hostname"] == "ev@here" and succeeded["pid"] > 0
    received = next(
        e for e in events if e["type"] == "task-received" and e["uuid"] == results[7].id
    )
    assert received["name"] == "e2e.add" and received["args"] == [7, 7]
    clocks = [e["clock"] for e in events if e["hostname"] == "ev@here"]
    assert clocks == sorted(clocks)  # one worker's events arrive in the order it sent them
    if replays:
        assert any(e["type"] == "worker-online" for e in events)
    await app.aclose()


async def test_failures_retries_and_revokes_carry_celery_fields() -> None:
    app = App("ev", broker="memory://", backend="memory://", worker_heartbeat_s=0.1)

    @app.task
    async def boom() -> None:
        raise ValueError("bad input")

    @app.task(bind=True, max_retries=1)
    async def flaky(self) -> str:  # type: ignore[no-untyped-def]
        if self.request.retries == 0:
            raise self.retry(countdown=0.01)
        return "ok"

    async with run_worker(app, send_events=True):
        failed, retried = await boom.send(), await flaky.send()
        with pytest.raises(ValueError):
            await failed.get(timeout=5)
        assert await retried.get(timeout=5) == "ok"
        events = await collect(
            app, lambda seen: sum(e["type"] == "worker-heartbeat" for e in seen) >= 1
            and any(e["type"] == "task-succeeded" for e in seen), replay=True,
        )  # fmt: skip
    failure = next(e for e in events if e["type"] == "task-failed")
    assert failure["uuid"] == failed.id and "ValueError: bad input" in failure["exception"]
    assert "raise ValueError" in failure["traceback"]
    retry = next(e for e in events if e["type"] == "task-retried")
    assert retry["uuid"] == retried.id and retry["retries"] == 1
    heartbeat = next(e for e in events if e["type"] == "worker-heartbeat")
    assert {"freq", "sw_ident", "sw_ver", "active", "processed", "loadavg"} <= set(heartbeat)


async def test_task_events_are_off_without_E_and_turned_on_at_runtime_and_task_sent() -> None:
    app = App("ev", broker="memory://", backend="memory://", task_send_sent_event=True)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with run_worker(app):
        quiet = await add.send(1, 1)
        assert await quiet.get(timeout=5) == 2
        await app.control.enable_events()
        loud = await add.send(2, 2)
        assert await loud.get(timeout=5) == 4
        events = await collect(
            app, lambda seen: any(e["type"] == "task-succeeded" for e in seen), replay=True
        )
    assert lifecycle(events, quiet.id) == ["task-sent"]  # the producer's own, nothing more
    assert lifecycle(events, loud.id) == [
        "task-sent", "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_without_a_monitor_events_stay_bounded_over_20000_tasks(redis_url: str) -> None:
    worker = WorkerProcess(redis_url, "-E", "-c", "200", env={"AIOTQ_RESULT_BACKEND": redis_url})
    worker.ready()
    try:
        sent = 0

        def send(n: int) -> None:
            code = (
                "import asyncio\nfrom tests.apps import build\n"
                f"app = build({redis_url!r}, {redis_url!r})\n"
                "async def go():\n"
                "    add = app.tasks['e2e.add']\n"
                f"    rs = [await add.send(1, 1, ) for _ in range({n})]\n"
                "    for r in rs[-50:]:\n        await r.get(timeout=60)\n"
                "    await app.aclose()\n"
                "asyncio.run(go())\n"
            )
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)

        send(5000)
        sent += 5000
        baseline = _rss_mb(worker.proc.pid)
        send(15000)
        sent += 15000
        grown = _rss_mb(worker.proc.pid) - baseline
        assert grown < 15, f"worker RSS grew {grown:.1f} MB over {sent - 5000} more tasks"
        client = redis.Redis.from_url(redis_url)
        kept = client.xlen("aiotq:bus:events")
        client.close()
        assert kept <= 1000 + 200  # event_keep batches (trimmed approximately), not 20,000
    finally:
        worker.stop()


def test_aiotq_events_dump_prints_json_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/aiotq.db"
    worker = WorkerProcess(url, "-E", "-n", "dump@here")
    worker.ready()
    try:
        app = build(url, url)

        async def run_one() -> str:
            result = await app.tasks["e2e.add"].send(20, 22)
            assert await result.get(timeout=10) == 42
            await app.aclose()
            return result.id

        task_id = asyncio.run(run_one())
        done = subprocess.run(
            [sys.executable, "-m", "aiotq", "events", "-A", "tests.apps:tq", "--dump",
             "--idle", "1"], cwd=ROOT, env={**os.environ, "AIOTQ_BROKER_URL": url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        worker.stop()
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    mine = [e for e in events if e.get("uuid") == task_id]
    assert [e["type"] for e in mine] == ["task-received", "task-started", "task-succeeded"]
    assert mine[-1]["result"] == 42 and mine[0]["hostname"] == "dump@here"
    assert any(e["type"] == "worker-online" for e in events)
