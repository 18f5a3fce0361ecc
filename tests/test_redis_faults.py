"""Redis in production: leases of live workers, reconnects, delayed messages across workers."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis

from aiotq import App, AsyncResult, BrokerConnectionError
from aiotq.protocol import CODECS, ResultRecord
from aiotq.testing import run_worker

from .apps import build
from .conftest import CI, async_wait_for, wait_for
from .workerproc import WorkerProcess

Workers = list[WorkerProcess]


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    producer = build(redis_url)
    yield producer
    producer.close()


@pytest.fixture
def workers() -> Iterator[Workers]:
    started: Workers = []
    yield started
    for worker in started:
        worker.stop()


def start(url: str, started: Workers, *args: str, visibility_s: float = 60) -> WorkerProcess:
    worker = WorkerProcess(url, *args, env={"E2E_VISIBILITY_S": str(visibility_s)})
    started.append(worker)
    return worker.ready()


def test_worker_reconnects_after_client_kill(app: App, redis_url: str, workers: Workers) -> None:
    worker = start(redis_url, workers, "-c", "50")
    first = [app.send_task("e2e.sleep", (0.5, f"a{i}")) for i in range(20)]
    worker.wait_for_log(r"e2e\.sleep\[.*\] received", times=20)
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
    second = [app.send_task("e2e.sleep", (0.1, f"b{i}")) for i in range(20)]
    got = [r.get(timeout=30) for r in first + second]
    assert got == [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
    assert worker.proc.poll() is None
    killer.close()


RECEIVED = re.compile(r"^\[(\S+ \S+): INFO/\S+\] Task e2e\.whoami\[(\S+)\] received$")


def test_delayed_tasks_across_three_workers_run_once_on_time(
    app: App, redis_url: str, workers: Workers
) -> None:
    for _ in range(3):
        start(redis_url, workers, "-c", "100")
    due: dict[str, float] = {}
    results = []
    for i in range(200):
        countdown = random.uniform(0.2, 3.0)
        due[f"d{i}"] = time.time() + countdown
        results.append(app.send_task("e2e.whoami", countdown=countdown, task_id=f"d{i}"))
    for result in results:
        assert result.get(timeout=20)["id"] == result.id
    received: dict[str, list[float]] = {}
    for worker in workers:
        for line in worker.lines:
            match = RECEIVED.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                received.setdefault(match[2], []).append(stamp)
    assert sorted(received) == sorted(due)  # every one ran...
    assert all(len(stamps) == 1 for stamps in received.values())  # ...once
    lateness = [received[tag][0] - due[tag] for tag in due]
    assert min(lateness) >= -0.01, min(lateness)  # none early
    assert max(lateness) <= 1.0, max(lateness)  # each within 1 s of due


def _own_redis_server(tmp_path, *options: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """A redis-server of this test's own (no TCP port unless options give one)."""
    server = shutil.which("redis-server")
    if server is None:
        if CI:
            pytest.fail("CI=true: redis-server is not installed")
        pytest.skip("redis-server is not installed")
    command = [server, "--port", "0", "--save", "", "--dir", str(tmp_path), *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


@pytest.fixture
def socket_redis(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A redis-server listening only on a unix socket."""
    sock = tmp_path / "redis.sock"
    proc = _own_redis_server(tmp_path, "--unixsocket", str(sock))
    wait_for(sock.exists, 5)
    yield str(sock)
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A redis-server speaking only TLS, with a self-signed certificate; yields a rediss URL."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed") if CI else pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _own_redis_server(
        tmp_path,
        *("--bind", "127.0.0.1", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *(
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
        ),
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10)
    yield url
    proc.terminate()
    proc.wait(10)


async def test_tls_url(tls_redis: str) -> None:
    """rediss:// carries the broker and the result backend over TLS, certificate verified."""
    app = build(tls_redis)
    async with run_worker(app):
        result = await app.asend_task("e2e.add", (40, 2))
        assert await result.get(timeout=10) == 42
    untrusted = build(tls_redis.split("?")[0])  # no CA given: the self-signed cert is refused
    with pytest.raises(BrokerConnectionError, match="rediss://127.0.0.1"):
        await untrusted.asend_task("e2e.add", (1, 1))
    await untrusted.aclose()


async def test_unix_socket_url(socket_redis: str) -> None:
    app = build(f"redis+socket://{socket_redis}?db=0")
    async with run_worker(app):
        result = await app.asend_task("e2e.add", (40, 2))
        assert await result.get(timeout=10) == 42


async def test_priority_through_a_worker(redis_url: str) -> None:
    app = App("prio", broker=redis_url)
    order: list[str] = []

    @app.task
    async def job(tag: str) -> None:
        order.append(tag)

    results = [await job.aapply_async((f"low{i}",), priority=0) for i in range(3)]
    results += [await job.aapply_async((f"high{i}",), priority=9) for i in range(3)]
    with pytest.raises(ValueError, match="0-9"):
        await job.aapply_async(("x",), priority=10)
    async with run_worker(app, concurrency=1):
        for result in results:
            await result.get(timeout=10)
    assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]
    await app.aclose()


def test_warm_stop_right_after_a_burst_exits(app: App, redis_url: str, workers: Workers) -> None:
    """A stop that lands while the consumer is mid-read must not wedge it (it did, about
    half the time, before the consume loop honoured a cancellation swallowed below it)."""
    client = redis.Redis.from_url(redis_url)
    for _ in range(4):
        results = [app.send_task("e2e.add", (i, i)) for i in range(5000)]
        worker = start(redis_url, workers, "-c", "200")
        wait_for(lambda: client.xlen("aiotq:{default}:stream") == 0, 30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0, worker.log
        assert results[-1].get(timeout=5) == 2 * 4999
    client.close()


async def test_publish_to_unreachable_redis_fails_clearly_within_the_bound() -> None:
    app = App("down", broker="redis://:s3cret@127.0.0.1:1/0", broker_publish_retry_s=0.5)

    @app.task
    async def ping() -> None: ...

    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(
        BrokerConnectionError,
        match=r"cannot publish to Redis at redis://:\*\*@127\.0\.0\.1:1/0 \(gave up after 0\.[45]s\)",
    ) as info:
        await ping.send()
    assert loop.time() - began < 5
    assert "s3cret" not in str(info.value)


async def test_result_wait_survives_its_pubsub_connection_being_killed(redis_url: str) -> None:
    app = App("wait", broker=redis_url)
    waiting = asyncio.ensure_future(AsyncResult("late-result", app).get(timeout=15))
    killer = redis.Redis.from_url(redis_url)

    def pubsub_clients() -> list[dict]:  # type: ignore[type-arg]
        return [c for c in killer.client_list() if c.get("sub") not in (None, "0")]

    await async_wait_for(pubsub_clients, 5)  # the waiter is subscribed
    assert killer.client_kill_filter(_type="pubsub") >= 1
    await asyncio.sleep(0.3)  # the listener notices and re-subscribes
    record = ResultRecord(task_id="late-result", state="SUCCESS", result=42)
    await app.backend.store([("late-result", CODECS["json"].encode(record))], ttl_s=60)
    assert await waiting == 42
    killer.close()
    await app.aclose()
