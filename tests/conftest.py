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
from typing import Any

import pytest
import redis
import uvloop

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST = os.environ.get("AIOTQ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("AIOTQ_TEST_REDIS_PORT", "6379"))

_dbs = itertools.cycle(range(1, 16))  # db 0 is left to humans


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


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL on a db of its own, flushed before and after the test."""
    db = next(_dbs)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        server_missing(f"Redis at {REDIS_HOST}:{REDIS_PORT}", exc)
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
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
    due = time.time() + 90
    result = producer.send_task("e2e.now", queue="long-delay", countdown=90)
    producer.close()
    yield BackgroundDelay(result.id, due, worker)
    worker.stop()
