"""One fault suite for every broker that outlives a worker process (as the contract suite is
one for every broker): a SIGKILLed worker loses nothing, malformed messages are
dead-lettered while the worker lives, a live worker keeps a task longer than the visibility
timeout. A new broker is one more parameter here."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
import redis

from aiotq import App

from .apps import build
from .workerproc import ROOT, WorkerProcess


@dataclass
class Broker:
    name: str
    url: str
    results: str  # where results go (RabbitMQ keeps none: a Redis of the suite's own)
    inject: Callable[[list[bytes]], None]  # put raw bodies on the default queue, unvetted


def _redis_inject(url: str) -> Callable[[list[bytes]], None]:
    def inject(bodies: list[bytes]) -> None:
        client = redis.Redis.from_url(url)
        for body in bodies:  # not even our envelope: the broker must not choke on it
            client.xadd("aiotq:{default}:stream", {"e": body})
        client.close()

    return inject


def _sqlite_inject(path: Path) -> Callable[[list[bytes]], None]:
    def inject(bodies: list[bytes]) -> None:
        with sqlite3.connect(path) as db:
            for body in bodies:
                db.execute(
                    "INSERT INTO messages (queue, priority, due_ms, lease_ms, headers, body)"
                    " VALUES ('default', 0, 0, 0, ?, ?)",
                    (b'{"content-type": "application/json"}', body),
                )

    return inject


def _amqp_inject(url: str) -> Callable[[list[bytes]], None]:
    async def publish(bodies: list[bytes]) -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for body in bodies:
                await channel.default_exchange.publish(aio_pika.Message(body), "default")

    return lambda bodies: asyncio.run(publish(bodies))


@pytest.fixture(params=["redis", "sqlite", "amqp"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Broker:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Broker("redis", url, url, _redis_inject(url))
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/aiotq.db"
        return Broker("sqlite", url, url, _sqlite_inject(tmp_path / "aiotq.db"))
    url = request.getfixturevalue("amqp_url")
    return Broker("amqp", url, request.getfixturevalue("redis_url"), _amqp_inject(url))


@pytest.fixture
def app(broker: Broker) -> Iterator[App]:
    producer = build(broker.url, broker.results)
    yield producer
    producer.close()


@pytest.fixture
def start(broker: Broker) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start_worker(*args: str, visibility_s: float = 60) -> WorkerProcess:
        env = {"AIOTQ_RESULT_BACKEND": broker.results, "E2E_VISIBILITY_S": str(visibility_s)}
        worker = WorkerProcess(broker.url, *args, env=env)
        started.append(worker)
        return worker.ready()

    yield start_worker
    for worker in started:
        worker.stop()


def test_a_sigkilled_worker_loses_none_of_its_in_flight_tasks(
    app: App, start: Callable[..., WorkerProcess]
) -> None:
    victim = start("-c", "30", visibility_s=2)
    results = [app.send_task("e2e.sleep", (3.0, f"t{i}")) for i in range(30)]
    victim.wait_for_log(r"e2e\.sleep\[.*\] received", times=30)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    start("-c", "30", visibility_s=2)  # RabbitMQ redelivers at once; the others after 2 s
    assert sorted(r.get(timeout=40) for r in results) == sorted(f"t{i}" for i in range(30))


MALFORMED = [
    b"\x00not-an-envelope",  # bytes of no codec
    b"{not json",  # a JSON body that is not JSON
    b"\x92\x81\xacontent-type\xb0application/json\xc4\x03{x}",  # bad UTF-8 in a header
]


def test_malformed_messages_are_dead_lettered_and_the_worker_lives(
    app: App, broker: Broker, start: Callable[..., WorkerProcess]
) -> None:
    worker = start()
    broker.inject(MALFORMED)
    worker.wait_for_log("Rejected message", times=len(MALFORMED))
    assert app.send_task("e2e.add", (1, 2)).get(timeout=10) == 3
    assert worker.proc.poll() is None
    listed = subprocess.run(
        [sys.executable, "-m", "aiotq", "dead-letters", "-A", "tests.apps:tq"], cwd=ROOT,
        env={**os.environ, "AIOTQ_BROKER_URL": broker.url, "AIOTQ_RESULT_BACKEND": broker.results},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(MALFORMED) and all('"reason": "' in line for line in lines), lines


# RabbitMQ has no visibility timeout: an unacknowledged delivery stays its consumer's.
@pytest.mark.parametrize("broker", ["redis", "sqlite"], indirect=True)
def test_a_live_worker_keeps_a_task_longer_than_the_visibility_timeout(
    app: App, start: Callable[..., WorkerProcess]
) -> None:
    first = start(visibility_s=2)  # leases renewed every tick: room for a starved worker
    result = app.send_task("e2e.sleep", (4.5, "long"))  # more than twice the timeout
    first.wait_for_log(r"e2e\.sleep\[.*\] received")
    second = start(visibility_s=2)  # would take it over if the lease lapsed
    assert result.get(timeout=20) == "long"
    received = sum(w.count(r"e2e\.sleep\[.*\] received") for w in (first, second))
    assert received == 1, first.log + second.log
