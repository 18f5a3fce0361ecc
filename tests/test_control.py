"""Remote control and durable revokes against real worker processes, on every broker (the
bus differs per broker: a Redis stream, a RabbitMQ exchange, a SQLite table)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiotq import App, TaskRevoked

from .apps import build
from .workerproc import ROOT, WorkerProcess

HEARTBEAT_S = "1.0"  # a record outlives 3 s: a stalled live worker stays listed


@dataclass
class Setup:
    broker: str
    results: str

    @property
    def env(self) -> dict[str, str]:
        return {"AIOTQ_RESULT_BACKEND": self.results, "E2E_HEARTBEAT_S": HEARTBEAT_S}


@pytest.fixture(params=["redis", "sqlite", "amqp"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/aiotq.db"
        return Setup(url, url)
    redis_url = str(request.getfixturevalue("redis_url"))
    if request.param == "redis":
        return Setup(redis_url, redis_url)
    return Setup(str(request.getfixturevalue("amqp_url")), redis_url)


@pytest.fixture
def start(setup: Setup) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start_worker(name: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(setup.broker, "-n", name, *args, env=setup.env)
        started.append(worker)
        return worker.ready()

    yield start_worker
    for worker in started:
        with_cont(worker)
        worker.stop()


def with_cont(worker: WorkerProcess) -> None:
    if worker.proc.poll() is None:
        os.kill(worker.proc.pid, signal.SIGCONT)


@pytest.fixture
async def producer(setup: Setup) -> AsyncIterator[App]:
    app = build(setup.broker, setup.results)
    yield app
    await app.aclose()


async def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_inspect_returns_once_every_live_worker_answered_and_bounds_a_paused_one(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    first, second = start("one@here"), start("two@here")
    inspect = producer.control.inspect(timeout=5.0)
    await wait_until(lambda: _count(producer, 2))
    began = time.monotonic()
    assert await inspect.ping() == {"one@here": {"ok": "pong"}, "two@here": {"ok": "pong"}}
    assert time.monotonic() - began < 1.5  # about one round trip, far from the 5 s timeout
    os.kill(second.proc.pid, signal.SIGSTOP)  # alive to presence, silent to commands
    began = time.monotonic()
    answers = await producer.control.inspect(timeout=1.0).ping()
    waited = time.monotonic() - began
    assert answers == {"one@here": {"ok": "pong"}}
    assert 0.9 < waited < 3.0  # the timeout bounds the silent one, no more
    os.kill(second.proc.pid, signal.SIGCONT)
    assert first.proc.poll() is None


async def _count(app: App, n: int) -> bool:
    workers = await app.control.workers()
    return workers is not None and len(workers) == n


async def test_inspect_active_lists_exactly_the_running_tasks_with_their_args(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    start("one@here")
    sleep = producer.tasks["e2e.sleep"]
    results = [await sleep.send(30, tag=f"t{n}") for n in range(3)]
    assert await (await producer.tasks["e2e.add"].send(1, 2)).get(timeout=10) == 3

    async def three_running() -> bool:
        active = await producer.control.inspect().active()
        return len(active.get("one@here", [])) == 3

    await wait_until(three_running)
    active = (await producer.control.inspect().active())["one@here"]
    assert {a["id"] for a in active} == {r.id for r in results}
    assert sorted(a["kwargs"]["tag"] for a in active) == ["t0", "t1", "t2"]
    assert all(a["args"] == [30] and a["name"] == "e2e.sleep" for a in active)
    assert all(a["runtime_s"] >= 0 and a["delivery_info"]["queue"] == "default" for a in active)
    for result in results:
        await result.revoke(terminate=True)


async def test_revoked_while_no_worker_runs_never_runs_and_survives_a_restart(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    sleep = producer.tasks["e2e.sleep"]
    doomed = await sleep.send(0, tag="doomed")
    await doomed.revoke()
    assert (await doomed.refresh()).state == "REVOKED"  # at once, before any worker ran
    worker = start("one@here")
    after = await sleep.send(0, tag="after")
    assert await after.get(timeout=10) == "after"
    worker.wait_for_log(rf"Discarding revoked task: e2e.sleep\[{doomed.id}\]")
    with pytest.raises(TaskRevoked):
        await doomed.get(timeout=1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    again = start("two@here")  # a new worker: the revoke is still kept
    await producer.asend_task("e2e.sleep", (0,), {"tag": "resent"}, task_id=doomed.id)
    last = await sleep.send(0, tag="last")
    assert await last.get(timeout=10) == "last"
    again.wait_for_log(rf"Discarding revoked task: e2e.sleep\[{doomed.id}\]")
    assert again.count("e2e.sleep.* succeeded.*resent") == 0


async def test_a_revoked_countdown_task_never_runs(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    worker = start("one@here")
    later = await producer.asend_task("e2e.sleep", (0,), {"tag": "later"}, countdown=1)
    await producer.control.revoke(later.id)
    worker.wait_for_log(rf"Discarding revoked task: e2e.sleep\[{later.id}\]", timeout=15)
    assert (await later.refresh()).state == "REVOKED"
    assert worker.count("succeeded.*later") == 0


async def test_terminate_cancels_a_running_async_task_and_spares_its_sibling(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    worker = start("one@here")
    sleep = producer.tasks["e2e.sleep"]
    doomed, sibling = await sleep.send(30, tag="doomed"), await sleep.send(1.5, tag="sibling")
    await wait_until(lambda: _running(producer, {doomed.id, sibling.id}))
    began = time.monotonic()
    answers = await producer.control.revoke(doomed.id, terminate=True, reply=True)
    assert "terminating" in answers[0]["one@here"]["ok"]
    with pytest.raises(TaskRevoked):
        await doomed.get(timeout=5)
    assert time.monotonic() - began < 1.0
    assert await sibling.get(timeout=10) == "sibling"  # untouched by its neighbour's end
    worker.wait_for_log(rf"e2e.sleep\[{doomed.id}\] terminated")
    assert worker.proc.poll() is None


async def _running(app: App, ids: set[str]) -> bool:
    active = await app.control.inspect().active()
    return ids <= {a["id"] for tasks in active.values() for a in tasks}


async def test_terminate_ends_a_process_task_and_a_thread_task_is_discarded(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    start("one@here", "--processes", "2")
    long = producer.tasks["e2e.child_long"]
    doomed = await long.send(30)
    neighbour = await long.send(1.0)  # same pool, another child: it must finish normally
    threaded = await producer.tasks["e2e.sync_sleep"].send(1.0)
    await wait_until(lambda: _running(producer, {doomed.id, threaded.id}), timeout=20)
    began = time.monotonic()
    await producer.control.revoke([doomed.id, threaded.id], terminate=True)
    with pytest.raises(TaskRevoked):
        await doomed.get(timeout=10)
    assert time.monotonic() - began < 5.0
    assert isinstance(await neighbour.get(timeout=10), int)
    with pytest.raises(TaskRevoked):  # a thread cannot be stopped: its result is discarded
        await threaded.get(timeout=10)
    after = await long.send(0)
    assert isinstance(await after.get(timeout=10), int)  # the pool still works


async def test_rate_limit_time_limit_and_queues_change_at_runtime(
    start: Callable[..., WorkerProcess], producer: App
) -> None:
    worker = start("one@here")
    control = producer.control
    answer = await control.time_limit("e2e.sleep", hard=0.3, reply=True)
    assert answer == [{"one@here": {"ok": "time limits set successfully"}}]
    with pytest.raises(Exception, match="time limit"):
        await (await producer.tasks["e2e.sleep"].send(5)).get(timeout=10)
    bad = await control.rate_limit("no.such.task", "5/s", reply=True)
    assert "unknown task" in bad[0]["one@here"]["error"]
    assert await control.add_consumer("extra", reply=True) == [
        {"one@here": {"ok": "add consumer extra"}}
    ]
    extra = await producer.asend_task("e2e.add", (2, 2), queue="extra")
    assert await extra.get(timeout=10) == 4
    queues = await control.inspect().active_queues()
    assert [q["name"] for q in queues["one@here"]] == ["default", "extra"]
    await control.cancel_consumer("extra", reply=True)
    assert [q["name"] for q in (await control.inspect().active_queues())["one@here"]] == ["default"]
    conf = (await control.inspect().conf())["one@here"]
    assert "**" in conf["result_backend"] or "@" not in conf["result_backend"]
    registered = (await control.inspect().registered())["one@here"]
    assert {"e2e.add", "e2e.mul"} <= set(registered) and registered == sorted(registered)
    stats = (await control.inspect().stats())["one@here"]
    assert stats["total"]["processed"] >= 2 and stats["pool"]["max-concurrency"] == 100
    assert await control.shutdown(reply=True) == [{"one@here": {"ok": "shutting down"}}]
    assert worker.wait(15) == 0


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiotq", *args, "-A", "tests.apps:tq"], cwd=ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_inspect_ping_is_a_probe_and_the_cli_reads_well(
    setup: Setup, start: Callable[..., WorkerProcess]
) -> None:
    env = {"AIOTQ_BROKER_URL": setup.broker, "AIOTQ_RESULT_BACKEND": setup.results}
    start("one@here")
    ok = cli("inspect", "ping", "-d", "one@here", env=env)
    assert ok.returncode == 0 and "-> one@here: OK" in ok.stdout and "pong" in ok.stdout
    missing = cli("inspect", "ping", "-d", "nobody@here", "-t", "0.5", env=env)
    assert missing.returncode == 1 and "No nodes replied" in missing.stderr
    stats = cli("inspect", "stats", "--json", env=env)
    assert stats.returncode == 0 and '"one@here"' in stats.stdout
    revoked = cli("control", "revoke", "some-id", env=env)
    assert revoked.returncode == 0 and "one@here" in revoked.stdout
    listed = cli("inspect", "revoked", env=env)
    assert "some-id" in listed.stdout
