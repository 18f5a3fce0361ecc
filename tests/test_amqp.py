"""The RabbitMQ broker against the real server: routing, kills, lost connections, delays."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import aio_pika
import pytest

from aiotq import App
from aiotq.testing import run_worker

from .apps import build
from .conftest import BackgroundDelay
from .test_routing import seed_settings
from .workerproc import WorkerProcess

Start = list[WorkerProcess]


async def test_a_90_second_delay_waits_in_the_delay_levels(
    background_delay: BackgroundDelay, amqp_session_url: str
) -> None:
    """Sent now; tests/test_zz_background_delay.py checks, at the end of the suite, that it
    ran within two seconds of its due time. 90 s = 64 + 16 + 8 + 2: it waits in level 6 first."""
    assert background_delay.due - time.time() > 60
    assert await queue_depth(amqp_session_url, "aiotq.delay.6") >= 1


@pytest.fixture
def workers() -> Iterator[Start]:
    started: Start = []
    yield started
    for worker in started:
        worker.stop()


def start(amqp_url: str, redis_url: str, workers: Start, *args: str) -> WorkerProcess:
    worker = WorkerProcess(amqp_url, *args, env={"AIOTQ_RESULT_BACKEND": redis_url})
    workers.append(worker)
    return worker.ready()


async def queue_depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_seed_topic_routing_on_rabbitmq(amqp_url: str, redis_url: str) -> None:
    app = App("projb", broker=amqp_url, backend=redis_url)
    app.config_from_object(seed_settings())
    ran: list[tuple[str, str]] = []

    @app.task(name="projb.tasks.add", bind=True)
    def add(self, x: int, y: int) -> int:  # type: ignore[no-untyped-def]
        ran.append(("add", self.request.delivery_info["queue"]))
        return x + y

    @app.task(name="projb.tasks.mul", bind=True)
    def mul(self, x: int, y: int) -> int:  # type: ignore[no-untyped-def]
        ran.append(("mul", self.request.delivery_info["queue"]))
        return x * y

    sent = [
        await add.send(3, 3),
        await mul.send(3, 3),
        await add.aapply_async((3, 3), queue="feed_task", routing_key="mul.feed"),
        await mul.aapply_async((3, 3), queue="foo", routing_key="task.foooooo"),
    ]
    assert await queue_depth(amqp_url, "foo") == 2
    assert await queue_depth(amqp_url, "feed_task") == 2
    async with run_worker(app, queues=["foo", "feed_task"]):  # -Q foo,feed_task
        assert [await r.get(timeout=10) for r in sent] == [6, 9, 6, 9]
    assert sorted(ran) == [
        ("add", "feed_task"),
        ("add", "foo"),
        ("mul", "feed_task"),
        ("mul", "foo"),
    ]
    await app.aclose()


def test_closed_connections_recover_and_every_task_completes(
    amqp_url: str, redis_url: str, workers: Start
) -> None:
    worker = start(amqp_url, redis_url, workers, "-c", "20")
    app = build(amqp_url, redis_url)
    try:
        first = [app.send_task("e2e.sleep", (1.0, f"a{i}")) for i in range(40)]
        worker.wait_for_log(r"e2e\.sleep\[.*\] received", times=20)
        subprocess.run(
            ["rabbitmqctl", "-q", "close_all_connections", "test: connection lost"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        then = [app.send_task("e2e.sleep", (0.1, f"b{i}")) for i in range(20)]  # producer too
        assert sorted(r.get(timeout=60) for r in first) == sorted(f"a{i}" for i in range(40))
        assert sorted(r.get(timeout=60) for r in then) == sorted(f"b{i}" for i in range(20))
        assert worker.proc.poll() is None
    finally:
        app.close()


async def test_sequential_round_trips_never_miss_their_result(
    amqp_url: str, redis_url: str, workers: Start
) -> None:
    """send-then-get, one after the other, as a request handler does. The result lands about
    when the waiter subscribes; before waiters waited for Redis to confirm the subscription,
    a store between SUBSCRIBE and the key's read was missed about once in 400 trips."""
    start(amqp_url, redis_url, workers, "-c", "20")
    app = build(amqp_url, redis_url)
    add = app.tasks["e2e.add"]
    try:
        for i in range(1500):
            result = await add.send(i, 1)
            assert await result.get(timeout=5) == i + 1, f"trip {i}"
    finally:
        await app.aclose()


async def test_delays_fire_on_time_and_a_long_one_waits_in_rabbitmq(
    amqp_url: str, redis_url: str
) -> None:
    app = build(amqp_url, redis_url)
    now_task = app.tasks["e2e.now"]
    # first, so the connection and the delay levels exist before the timed sends
    await now_task.aapply_async(countdown=7200)  # two hours
    # 7200 s = 4096 + 2048 + 1024 + 32: it waits in level 12 first, not in a worker
    assert await queue_depth(amqp_url, "aiotq.delay.12") == 1
    assert await queue_depth(amqp_url, "default") == 0
    async with run_worker(app):
        due = {}
        results = []
        for countdown in (1, 5):
            due[countdown] = time.time() + countdown
            results.append((countdown, await now_task.aapply_async(countdown=countdown)))
        for countdown, result in results:
            late = await result.get(timeout=countdown + 5) - due[countdown]
            assert 0 <= late <= 2.0, (countdown, late)
        assert await queue_depth(amqp_url, "aiotq.delay.12") == 1  # still waiting
    await app.aclose()


def test_unreachable_rabbitmq_is_a_clear_error_with_the_password_masked() -> None:
    app = App("x", broker="amqp://guest:secret@127.0.0.1:1/", broker_publish_retry_s=0.5)

    @app.task
    def noop() -> None: ...

    with pytest.raises(
        Exception, match=r"cannot reach RabbitMQ at amqp://guest:\*\*@127\.0\.0\.1:1/"
    ) as info:
        noop.delay()
    assert "secret" not in str(info.value)
    app.close()


async def test_rpc_backend_returns_results_to_the_caller_only(amqp_url: str) -> None:
    app = build(amqp_url)  # no backend configured: RabbitMQ's default is rpc://
    assert app.backend.url == "rpc://"
    add = app.tasks["e2e.add"]
    async with run_worker(app):
        result = await add.send(20, 22)
        assert await result.get(timeout=10) == 42  # woken by the reply message
        failed = await app.asend_task("e2e.fail", ("x",))
        with pytest.raises(ValueError, match="on purpose"):
            await failed.get(timeout=10)
        elsewhere = build(amqp_url)  # another producer: rpc:// keeps nothing it could read
        with pytest.raises(TimeoutError):
            await elsewhere.AsyncResult(result.id).get(timeout=0.5)
        await elsewhere.aclose()
        with pytest.raises(TypeError, match="needs a result backend that keeps results"):
            await (add.s(1, 1) | add.s(2)).send()
    await app.aclose()


def test_rpc_backend_from_sync_code(amqp_url: str, workers: Start) -> None:
    worker = WorkerProcess(amqp_url)  # its results go back to this process's reply queue
    workers.append(worker.ready())
    app = build(amqp_url)
    try:
        assert app.tasks["e2e.mul"].delay(6, 7).get(timeout=10) == 42
    finally:
        app.close()


async def test_a_worker_is_ready_only_once_its_consumer_is_subscribed(
    amqp_url: str, redis_url: str
) -> None:
    app = build(amqp_url, redis_url)
    async with run_worker(app):  # returns when the worker reports ready
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("default", passive=True)
            assert queue.declaration_result.consumer_count == 1
    await app.aclose()
