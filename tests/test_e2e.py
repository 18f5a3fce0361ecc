"""End to end: a worker subprocess started with the CLI, on the real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from aiotq import App, TaskRevoked, TimeLimitExceeded

from .apps import build
from .conftest import wait_for
from .workerproc import ROOT, Start, workers_on


@pytest.fixture
def start(redis_url: str) -> Iterator[Start]:
    yield from workers_on(redis_url)


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    producer = build(redis_url)
    yield producer
    producer.close()


def test_tasks_of_every_kind_from_sync_code(app: App, start: Start) -> None:
    worker = start("-c", "50", "--processes", "1")
    assert app.tasks["e2e.add"].delay(2, 3).get(timeout=10) == 5
    assert app.tasks["e2e.mul"].apply_async((6, 7)).get(timeout=10) == 42
    assert app.send_task("e2e.cpu", (1000,)).get(timeout=30) == sum(i * i for i in range(1000))
    child_pid = app.send_task("e2e.child_pid").get(timeout=30)
    assert child_pid not in (os.getpid(), worker.proc.pid)
    info = app.send_task("e2e.whoami", task_id="known-id").get(timeout=10)
    assert info["id"] == "known-id" and info["pid"] == worker.proc.pid
    logged = r"Task e2e\.add\[[0-9a-f-]+\] succeeded in [0-9.]+s: 5$"
    wait_for(lambda: worker.count(logged) >= 1, 5)  # the log comes through a reader thread
    assert worker.count(logged) == 1


async def test_async_producer_and_result_api(app: App, start: Start) -> None:
    start()
    add = app.tasks["e2e.add"]
    result = await add.send(20, 22)
    assert await result.get(timeout=10) == 42
    assert await result.successful()
    assert result.state == "SUCCESS" and result.result == 42
    by_id = app.AsyncResult(result.id)
    assert await by_id.get(timeout=1) == 42
    failed = await app.asend_task("e2e.child_boom")
    with pytest.raises(ValueError, match="bad input in a child"):
        await failed.get(timeout=30)
    await app.aclose()


def test_seed_retry_scenario_div_2_0(app: App, start: Start) -> None:
    """The tutorial's div: retry every 3 s, max_retries=3, so 4 runs, then ZeroDivisionError."""
    worker = start()
    began = time.monotonic()
    result = app.tasks["e2e.div"].delay(2, 0)
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=30)
    assert time.monotonic() - began >= 9.0
    assert worker.count(r"e2e\.div\[.*\] received") == 4
    assert worker.count(r"e2e\.div\[.*\] retry: Retry in 3s") == 3
    assert result.retries == 3 and result.state == "FAILURE"
    assert app.tasks["e2e.div"].delay(2, 1).get(timeout=10) == 2.0


def test_countdown_expires_and_time_limits(app: App, start: Start) -> None:
    start("--processes", "1")
    began = time.monotonic()
    later = app.send_task("e2e.add", (1, 1), countdown=1)
    expired = app.send_task("e2e.add", (1, 1), countdown=1, expires=0.5)
    hard = app.send_task("e2e.hard_limit")
    soft = app.send_task("e2e.soft_limit")
    child = app.send_task("e2e.child_sleep", (10,))
    assert later.get(timeout=10) == 2
    assert time.monotonic() - began >= 0.95
    with pytest.raises(TaskRevoked):
        expired.get(timeout=10)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=10)
    assert soft.get(timeout=10) == "cleaned up"
    with pytest.raises(TimeLimitExceeded):
        child.get(timeout=30)


def test_warm_shutdown_finishes_in_flight_work(app: App, start: Start) -> None:
    worker = start("-c", "10")
    results = [app.send_task("e2e.sleep", (1.0, f"t{i}")) for i in range(5)]
    worker.wait_for_log(r"e2e\.sleep\[.*\] received", times=5)
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert [r.get(timeout=1) for r in results] == [f"t{i}" for i in range(5)]
    assert "warm shutdown" in worker.log


def test_second_signal_is_cold_and_returns_messages(app: App, start: Start) -> None:
    first = start("-c", "10", "--shutdown-timeout", "60")
    results = [app.send_task("e2e.sleep", (3.0, f"t{i}")) for i in range(3)]
    first.wait_for_log(r"e2e\.sleep\[.*\] received", times=3)
    first.signal(signal.SIGTERM)
    first.wait_for_log("warm shutdown")
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0
    assert "cold shutdown" in first.log
    start("-c", "10")  # nothing was lost: another worker runs them
    assert [r.get(timeout=20) for r in results] == [f"t{i}" for i in range(3)]


def test_import_error_is_one_clear_line(redis_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aiotq", "worker", "no_such_module_here:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot import 'no_such_module_here'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_send_result_purge_version(redis_url: str, start: Start) -> None:
    env = {**os.environ, "AIOTQ_BROKER_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aiotq", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert cli("--version").stdout.startswith("aiotq ")
    assert "--concurrency" in cli("worker", "--help").stdout
    queue = f"q-{uuid.uuid4().hex[:6]}"
    sent = cli("send", "e2e.add", "-A", "tests.apps:tq", "--args", "[1, 2]", "-Q", queue)
    assert sent.returncode == 0, sent.stderr
    assert (
        cli("purge", "-A", "tests.apps:tq", "-Q", queue, "-f").stdout.strip()
        == f"{queue}: purged 1 message(s)"
    )
    start()
    waited = cli("send", "e2e.add", "-A", "tests.apps:tq", "--args", "[1, 2]", "--wait")
    task_id, value = waited.stdout.split()
    assert value == "3"
    shown = cli("result", task_id, "-A", "tests.apps:tq")
    assert '"state": "SUCCESS"' in shown.stdout and '"result": 3' in shown.stdout
    bad = cli("send", "e2e.add", "-A", "tests.apps:tq", "--args", "[1]")
    assert bad.returncode == 2 and "missing a required argument" in bad.stderr


def test_connections_stay_few_at_concurrency_1000(app: App, start: Start, redis_url: str) -> None:
    worker = start("-c", "1000")
    results = [app.send_task("e2e.sleep", (1.5, str(i))) for i in range(1000)]
    worker.wait_for_log(r"e2e\.sleep\[.*\] received", times=1000)
    db = int(redis_url.rsplit("/", 1)[1])
    clients = redis.Redis.from_url(redis_url).client_list()
    mine = [c for c in clients if int(c["db"]) == db]
    # the worker's reader, pub/sub-free publisher pool and this test's producer: a handful
    assert len(mine) <= 16, [(c["name"], c["cmd"]) for c in mine]
    assert sorted(r.get(timeout=30) for r in results) == sorted(str(i) for i in range(1000))
