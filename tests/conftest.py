"""Fixtures for real servers: skip on a laptop without them, fail under CI (CI=true)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

from .servers import RedisServer, redis_binary

if TYPE_CHECKING:  # workerproc imports this module (wait_for)
    from .workerproc import WorkerProcess

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_dbs = itertools.cycle(range(1, 16))


def pytest_asyncio_loop_factories(config: Any, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Tests marked both_loops run under the default loop and under uvloop."""
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def server_missing(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it to run this test"
    if CI:
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def need_redis_server() -> None:
    if redis_binary() is None:
        server_missing(
            "redis-server (to start one of the suite's own)", FileNotFoundError("not on PATH")
        )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The suite's own redis-server on a free port in a temp dir, stopped by PID at the end:
    no test touches a Redis it did not start."""
    need_redis_server()
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of this test's own (`own_redis(maxmemory="2mb")`) to fault."""
    need_redis_server()
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        server = RedisServer.start(tmp_path / f"redis-{len(started)}", **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A db of the suite's own server, flushed before and after the test."""
    db = next(_dbs)
    client = redis_server.client(db)
    client.flushdb()
    yield redis_server.url(db)
    if redis_server.proc is not None and redis_server.proc.poll() is None:
        client.flushdb()
    client.close()


def _rabbitmq_vhost() -> str:
    """A RabbitMQ vhost of its own (deleted by the caller), or skip / fail as for Redis."""
    vhost = f"aiotq-test-{uuid.uuid4().hex[:8]}"
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError as exc:
        server_missing("RabbitMQ at 127.0.0.1:5672", exc)
    if shutil.which("rabbitmqctl") is None:
        server_missing("rabbitmqctl (to make a test vhost)", FileNotFoundError("not on PATH"))
    for command in (
        ["add_vhost", vhost],
        ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ):
        subprocess.run(["rabbitmqctl", "-q", *command], check=True, capture_output=True, timeout=30)
    return vhost


def _delete_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def amqp_session_url() -> Iterator[str]:
    """A vhost for the whole session (tests use queue names of their own in it)."""
    vhost = _rabbitmq_vhost()
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _delete_vhost(vhost)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A vhost of this test's own: its queues, and whatever is left in them, go with it."""
    vhost = _rabbitmq_vhost()
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _delete_vhost(vhost)


def _polls(condition: Callable[[], Any], timeout: float) -> Iterator[Any]:
    """Yield None until the condition is truthy (then its value), failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        yield None
    yield value


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a condition until it is truthy or the deadline passes (no fixed sleeps)."""
    for value in _polls(condition, timeout):
        if value is not None:
            return value
        time.sleep(0.02)


async def async_wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    for value in _polls(condition, timeout):
        if value is not None:
            return value
        await asyncio.sleep(0.01)


@dataclass
class BackgroundDelay:
    task_id: str
    due: float
    worker: Any


@pytest.fixture(scope="session")
def background_delay(amqp_session_url: str) -> Iterator[BackgroundDelay]:
    """A 90-second countdown on RabbitMQ, sent early in the session and checked at its end
    (tests/test_zz_background_delay.py), with a worker consuming its queue meanwhile."""
    from aiotq import App

    from .workerproc import WorkerProcess

    worker = WorkerProcess(
        amqp_session_url, "-Q", "long-delay", env={"AIOTQ_RESULT_BACKEND": "memory://"}
    ).ready()
    producer = App("delay", broker=amqp_session_url, backend="memory://")
    # a short one first opens the connection and declares the delay levels before `due`
    producer.send_task("e2e.now", queue="long-delay", countdown=1)
    due = time.time() + 90
    result = producer.send_task("e2e.now", queue="long-delay", countdown=90)
    producer.close()
    yield BackgroundDelay(result.id, due, worker)
    worker.stop()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts (append them): stopped at the end, whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()
