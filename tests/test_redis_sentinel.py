"""Redis Sentinel: kombu's `sentinel://h:26379;sentinel://h2:26380` URLs with the master's name
in the transport options, for the broker and the result backend, against a real master, its
replica and three sentinels (tests/servers.py) — and a failover in the middle of a run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiotq import App, BrokerConnectionError, ConfigurationError
from aiotq._redis import BoundedSentinelPool
from aiotq.exceptions import BrokerUnavailable
from aiotq.testing import run_worker

from .apps import build
from .conftest import need_redis_server
from .servers import SentinelSet
from .workerproc import WorkerProcess

pytestmark = pytest.mark.cluster

MASTER_PASSWORD = "m4ster-s3cret"
SENTINEL_PASSWORD = "s3ntinel-s3cret"
OPTIONS = {"master_name": "mymaster", "sentinel_kwargs": {"password": SENTINEL_PASSWORD}}


def worker_app() -> App:
    """The subprocess worker's app (`aiotq worker tests.test_redis_sentinel:tq`): the e2e
    tasks, the broker from AIOTQ_BROKER_URL, the transport options and WAIT from here."""
    app = build()
    app.conf.broker_transport_options = json.loads(os.environ.get("SENTINEL_OPTIONS", "{}"))
    app.conf.redis_wait_replicas = int(os.environ.get("SENTINEL_WAIT_REPLICAS", "0"))
    app.conf.broker_publish_retry_s = 30.0
    return app


tq = worker_app()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master and replica with a password, three sentinels with another: shared by the
    tests that fault nothing."""
    need_redis_server()
    group = SentinelSet.start(
        tmp_path_factory.mktemp("sentinel"),
        password=MASTER_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    )
    yield group
    group.stop()


def sentinel_app(url: str, **settings: Any) -> App:
    app = build(url)
    app.conf.broker_transport_options = OPTIONS
    app.conf.update(settings)
    return app


def assert_no_password(text: str) -> None:
    assert MASTER_PASSWORD not in text and SENTINEL_PASSWORD not in text, text


async def test_broker_and_backend_through_the_sentinels(
    sentinels: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    """Both reach the master the sentinels name; a backend on the broker's URL takes the
    broker's transport options, one of its own takes result_backend_transport_options."""
    caplog.set_level(logging.DEBUG)
    app = sentinel_app(sentinels.url(), broker_pool_size=3)
    async with run_worker(app):
        result = await app.asend_task("e2e.add", (40, 2))
        assert await result.get(timeout=10) == 42
        burst = await asyncio.gather(*(app.asend_task("e2e.add", (i, i)) for i in range(200)))
        assert [await r.get(timeout=10) for r in burst] == [2 * i for i in range(200)]
    pool = (await app.broker._clients.client()).connection_pool  # type: ignore[attr-defined]
    assert isinstance(pool, BoundedSentinelPool)  # BoundedPool's bound: 200 sends, 3 connections
    assert len(pool._available_connections) + len(pool._in_use_connections) <= 3
    assert_no_password(repr(app.broker) + repr(app.backend))
    await app.aclose()

    apart = App("apart", broker=sentinels.url(), backend=sentinels.url(db=3))
    apart.conf.broker_transport_options = OPTIONS
    apart.conf.result_backend_transport_options = {**OPTIONS, "master_name": "mymaster"}
    await apart.backend.store([("t1", b"x")], ttl_s=60)
    with sentinels.master().client(db=3) as client:
        assert client.exists("aiotq:result:t1")
    await apart.aclose()
    assert_no_password(caplog.text)


async def test_celery_protocol_through_the_sentinels(sentinels: SentinelSet) -> None:
    """task_protocol = "celery": kombu's layout on the master the sentinels name."""
    app = sentinel_app(sentinels.url(db=4), task_protocol="celery")
    async with run_worker(app):
        result = await app.asend_task("e2e.add", (20, 22))
        assert await result.get(timeout=10) == 42
    await app.aclose()
    with sentinels.master().client(db=4) as client:
        assert client.exists(f"celery-task-meta-{result.id}")


def test_a_missing_master_name_is_one_clear_line(sentinels: SentinelSet) -> None:
    app = App("nameless", broker=sentinels.url())
    with pytest.raises(ConfigurationError) as info:
        app.send_task("e2e.add", (1, 1))
    message = str(info.value)
    assert "master_name" in message and "broker_transport_options" in message
    assert "\n" not in message
    assert_no_password(message)
    backend_only = App("nameless", broker="memory://", backend=sentinels.url())
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        backend_only.finalize()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({**OPTIONS, "master_name": "nosuchmaster"}, "No master found for 'nosuchmaster'"),
        ({"master_name": "mymaster", "sentinel_kwargs": {"password": "wrong"}}, "No master"),
    ],
)
async def test_errors_name_the_masked_url_and_never_a_password(
    sentinels: SentinelSet,
    options: dict[str, Any],
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = build(sentinels.url())
    app.conf.broker_transport_options = options
    app.conf.broker_publish_retry_s = 0.5
    with pytest.raises(BrokerConnectionError, match=expected) as info:
        await app.asend_task("e2e.add", (1, 1))
    assert "sentinel://:**@127.0.0.1" in str(info.value)
    assert_no_password(str(info.value) + caplog.text)
    await app.aclose()


async def test_a_send_fewer_replicas_confirm_is_refused(sentinels: SentinelSet) -> None:
    """redis_wait_replicas: a send returns once that many replicas have the message (WAIT);
    with one replica, asking for two is refused for now (retried, then an error)."""
    app = sentinel_app(sentinels.url(), redis_wait_replicas=1, redis_wait_timeout_s=0.2)
    await app.asend_task("e2e.add", (1, 1))  # the one replica confirms
    app2 = sentinel_app(
        sentinels.url(), redis_wait_replicas=2, redis_wait_timeout_s=0.1,
        broker_publish_retry_s=0.5,
    )  # fmt: skip
    with pytest.raises(BrokerUnavailable, match=r"1 of the 2 replicas .*redis_wait_replicas"):
        await app2.asend_task("e2e.add", (1, 1))
    await app.aclose()
    await app2.aclose()


async def test_failover_loses_no_acknowledged_task(tmp_path: Path) -> None:
    """SIGKILL the master while a worker runs and producers send: the sentinels promote the
    replica, worker and producers follow, and every task whose send returned completes. The
    producer and worker WAIT for one replica (redis_wait_replicas = 1), so nothing they were
    told is stored can be lost with the master; the killed node comes back as a replica of
    the new master, as an orchestrator would restart it."""
    need_redis_server()
    group = SentinelSet.start(tmp_path / "sentinels")
    worker = None
    app = sentinel_app(
        group.url(), redis_wait_replicas=1, broker_publish_retry_s=30.0,
        broker_transport_options={"master_name": "mymaster"},
    )  # fmt: skip
    try:
        env = {
            "SENTINEL_OPTIONS": json.dumps({"master_name": "mymaster"}),
            "SENTINEL_WAIT_REPLICAS": "1",
        }
        worker = WorkerProcess(group.url(), "-c", "50", env=env, app=f"{__name__}:tq").ready()
        sent: dict[str, int] = {}
        acked_at: list[float] = []
        failed = 0
        stop = asyncio.Event()

        async def producer(index: int) -> None:
            nonlocal failed
            n = 0
            while not stop.is_set():
                n += 1
                value = index * 100_000 + n
                try:
                    result = await app.asend_task("e2e.add", (value, value))
                except BrokerConnectionError:
                    failed += 1  # not acknowledged: the test asks nothing of it
                    continue
                sent[result.id] = 2 * value
                acked_at.append(time.monotonic())
                await asyncio.sleep(0.005)

        producers = [asyncio.create_task(producer(i)) for i in range(4)]
        await wait_async(lambda: len(sent) >= 100, 20)
        old = group.master()
        killed_at = time.monotonic()
        old.kill()
        before = len(sent)
        await wait_async(lambda: group.master_port() not in (None, old.port), 30)
        switched_at = time.monotonic()
        new = group.master()
        old.restart(replicaof=f"127.0.0.1 {new.port}")  # back, empty, as the new replica
        await wait_async(lambda: len(sent) >= before + 100, 30)
        resumed_at = time.monotonic()
        stop.set()
        await asyncio.gather(*producers)
        for task_id, expected in sent.items():
            assert await app.AsyncResult(task_id).get(timeout=30) == expected
        first_after = min(t for t in acked_at if t > switched_at)
        print(
            f"\nsentinel failover: new master {switched_at - killed_at:.2f}s after the kill;"
            f" sends acknowledged again {first_after - killed_at:.2f}s after it, 100 more"
            f" {resumed_at - killed_at:.2f}s after it;"
            f" {len(sent)} tasks acknowledged and completed, {failed} sends refused"
        )
        assert worker.proc.poll() is None
        assert_no_password(worker.log)
    finally:
        if worker is not None:
            worker.stop()
        await app.aclose()
        group.stop()


async def wait_async(condition: Any, timeout: float) -> None:
    """Yield to the producers while waiting on a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
