"""Celery's wire protocol (`task_protocol = "celery"`), against real Celery 5 in a virtualenv
of its own (tests/celerywire/env.py): a Celery producer's messages run on an aiotq worker and
its `get()` reads aiotq's results; an aiotq producer's run on a Celery worker and aiotq's
`get()` reads Celery's results. On Redis (kombu's layout) and RabbitMQ, in JSON and msgpack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from aiotq import App, chain
from aiotq.celery_wire import from_celery, meta_from_record, record_from_meta, to_celery
from aiotq.exceptions import MessageRejected, TaskRevoked
from aiotq.protocol import Failure, Message, ResultRecord
from aiotq.testing import run_worker

from .celerywire.env import celery_python
from .conftest import CI, async_wait_for

SIDE = Path(__file__).parent / "celerywire"
T = 20.0  # every wait on the other side has this deadline


@pytest.fixture(scope="session")
def celery_py() -> str:
    """Celery's interpreter, installed once per machine (a stamp), never per test."""
    try:
        return celery_python()
    except (subprocess.CalledProcessError, OSError) as exc:
        if CI:
            pytest.fail(f"CI=true: cannot install Celery: {exc}")
        pytest.skip(f"cannot install Celery: {exc}")


def celery_env(broker: str, backend: str, serializer: str) -> dict[str, str]:
    return {
        **os.environ,
        "WIRE_BROKER": broker,
        "WIRE_BACKEND": backend,
        "WIRE_SERIALIZER": serializer,
        "PYTHONPATH": str(SIDE),
    }


def build_app(broker: str, backend: str, serializer: str) -> App:
    """The aiotq side: the same task names as tests/celerywire/celery_side.py."""
    app = App(
        "wire", broker=broker, backend=backend, task_protocol="celery",
        task_serializer=serializer,
        result_serializer=serializer, result_extended=True,
    )  # fmt: skip

    @app.task(name="wire.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="wire.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    @app.task(name="wire.flaky", bind=True, max_retries=3)
    async def flaky(self: Any, value: int) -> int:
        if self.request.retries < 1:
            raise self.retry(countdown=0.2)
        return value * 10 + self.request.retries

    @app.task(name="wire.on_error")
    async def on_error(task_id: str, error: str | None = None) -> str:
        return f"handled {task_id}"

    @app.task(name="wire.sync_mul")
    def sync_mul(x: int, y: int) -> int:  # a sync task: run in a thread
        return x * y

    @app.task(name="wire.sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return app


# -- conversions (no server) -------------------------------------------------------------------
def test_celery_protocol_chooses_celerys_queue_broker_and_backend() -> None:
    from aiotq.backends.celery_redis import CeleryRedisBackend
    from aiotq.brokers.celery_amqp import CeleryAmqpBroker
    from aiotq.brokers.celery_redis import CeleryRedisBroker

    app = build_app("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", "json")
    assert app.conf.task_default_queue == "celery"
    assert isinstance(app.broker, CeleryRedisBroker)
    assert isinstance(app.backend, CeleryRedisBackend)
    assert app.broker.visibility_timeout_s == 3600  # kombu's, not aiotq's 60 s
    app = build_app("amqp://guest:guest@127.0.0.1:1/", "celery+redis://127.0.0.1:1/1", "json")
    assert isinstance(app.broker, CeleryAmqpBroker)
    assert isinstance(app.backend, CeleryRedisBackend)
    mine = App(
        "x", broker="redis://127.0.0.1:1/0", task_default_queue="sms", task_protocol="celery"
    )
    assert mine.conf.task_default_queue == "sms"


def test_message_round_trip_keeps_what_celery_has() -> None:
    message = Message(
        id="i1", task="wire.add", args=[1, 2], kwargs={"z": 3}, retries=2, eta_at_s=1.5e9,
        expires_at_s=1.6e9, time_limit_s=10.0, soft_time_limit_s=5.0, parent_id="p",
        root_id="r", group_id="g", priority=3, queue="celery", headers={"custom": "x"},
    )  # fmt: skip
    for serializer in ("json", "msgpack"):
        wire = to_celery(message, serializer)
        assert wire.headers["timelimit"] == [10.0, 5.0]  # hard, then soft
        back, used = from_celery(
            wire.headers, wire.properties, wire.body, wire.content_type, "celery"
        )
        assert used == serializer
        assert back == message


def test_malformed_and_pickle_are_refused_with_a_reason() -> None:
    headers = {"id": "x", "task": "wire.add"}
    with pytest.raises(MessageRejected, match="pickle is refused"):
        from_celery(headers, {}, b"...", "application/x-python-serialize", "q")
    with pytest.raises(MessageRejected, match=r"\[args, kwargs, embed\]"):
        from_celery(headers, {}, b"{}", "application/json", "q")
    with pytest.raises(MessageRejected, match="protocol 2"):
        from_celery({}, {}, b"[[], {}, {}]", "application/json", "q")
    with pytest.raises(MessageRejected, match="not an ISO 8601"):
        from_celery({**headers, "eta": "soon"}, {}, b"[[], {}, {}]", "application/json", "q")


def test_result_meta_maps_exceptions_to_the_readers_names() -> None:
    failure = Failure.of(TaskRevoked("gone"))
    meta = meta_from_record(ResultRecord(task_id="t", state="REVOKED", failure=failure))
    assert meta["result"] == {
        "exc_type": "TaskRevokedError", "exc_message": ["gone"], "exc_module": "celery.exceptions"
    }  # fmt: skip
    record = record_from_meta(meta)
    assert isinstance(record.exception(), TaskRevoked)
    celery_meta = {
        "status": "FAILURE", "traceback": "tb", "children": [[["c1", None], None]],
        "result": {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"},
        "date_done": "2024-05-01T12:00:00.000001+00:00", "task_id": "t",
    }  # fmt: skip
    record = record_from_meta(celery_meta)
    assert record.children == ["c1"] and record.traceback == "tb"
    assert isinstance(record.exception(), KeyError)


# -- Redis: kombu's layout -----------------------------------------------------------------
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_redis_celery_producer_aiotq_worker(
    celery_py: str, redis_url: str, serializer: str
) -> None:
    app = build_app(redis_url, redis_url, serializer)
    async with run_worker(app, concurrency=10):
        out = await produce_from_celery(celery_py, redis_url, redis_url, serializer)
    check_celery_saw(out)


async def produce_from_celery(celery_py: str, broker: str, backend: str, serializer: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        celery_py, str(SIDE / "celery_side.py"), "produce",
        env=celery_env(broker, backend, serializer),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return json.loads(stdout.decode().strip().splitlines()[-1])


def check_celery_saw(out: dict[str, Any]) -> None:
    """What Celery's `get()` returned for each case an aiotq worker ran."""
    assert out["sum"] == 5
    assert out["priority"] == 2
    value, waited = out["countdown"]
    assert value == 21 and waited >= 0.9
    assert out["chain"] == 10
    assert out["link"] == [3, 103]
    assert out["errback"].startswith("handled ")
    assert out["failure"]["raised"] == "ValueError" and out["failure"]["args"] == ["boom"]
    assert out["retry"] == 41  # retried once, then 4 * 10 + 1
    assert out["sync"] == 42
    assert out["expired"]["raised"] == "TaskRevokedError", out["expired"]
    assert out["soft_limit"]["raised"] == "SoftTimeLimitExceeded", out["soft_limit"]


@contextlib.contextmanager
def celery_worker(celery_py: str, broker: str, backend: str, serializer: str,
                  log: Path) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """`celery -A celery_side worker -P solo`, ready once its log says so."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [celery_py, "-m", "celery", "-A", "celery_side", "worker", "-P", "solo", "-l",
             "INFO", "-Q", "celery", "--without-mingle", "--without-gossip",
             "--without-heartbeat", "-n", f"wire-{os.getpid()}@%h"],
            cwd=SIDE, env=celery_env(broker, backend, serializer), stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        yield proc
    finally:
        # cold shutdown: the test is over and nothing runs (on RabbitMQ, Celery then takes
        # ~10 s to close its connection: it is killed past a short deadline)
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_redis_aiotq_producer_celery_worker(
    celery_py: str, redis_url: str, serializer: str, tmp_path: Path
) -> None:
    app = build_app(redis_url, redis_url, serializer)
    try:
        with celery_worker(celery_py, redis_url, redis_url, serializer, tmp_path / "c.log"):
            await check_aiotq_saw(app)
    finally:
        await app.aclose()


async def check_aiotq_saw(app: App) -> None:
    """An aiotq producer's cases, run by a Celery worker, read back with aiotq's `get()`."""
    add, fail, flaky = app.tasks["wire.add"], app.tasks["wire.fail"], app.tasks["wire.flaky"]
    assert await (await add.send(2, 3)).get(timeout=T) == 5
    assert await (await add.aapply_async((1, 1), priority=5)).get(timeout=T) == 2
    sent = time.time()
    assert await (await add.aapply_async((20, 1), countdown=1)).get(timeout=T) == 21
    assert time.time() - sent >= 0.9
    result = await chain(add.s(1, 2), add.s(3), add.s(4), app=app).aapply_async()
    assert await result.get(timeout=T) == 10
    callback = add.s(100).set(task_id="link-" + str(time.time_ns()))
    assert await (await add.aapply_async((1, 2), link=callback)).get(timeout=T) == 3
    assert await app.AsyncResult(callback.options["task_id"]).get(timeout=T) == 103
    with pytest.raises(ValueError, match="boom"):
        await (await fail.send("boom")).get(timeout=T)
    assert await (await flaky.send(4)).get(timeout=T) == 41
    # (time limits: Celery's solo pool enforces none; the header order is checked above)


async def test_redis_malformed_messages_are_dead_lettered(redis_url: str) -> None:
    """Not JSON, no delivery tag, pickle, a bad body: each is dead-lettered with its reason,
    and the worker goes on to run the good message behind them."""
    app = build_app(redis_url, redis_url, "json")
    client = redis.Redis.from_url(redis_url)
    good = to_celery(Message(id="good-1", task="wire.add", args=[1, 1]), "json")

    def envelope(body: bytes, content_type: str, tag: str, headers: Any = None) -> bytes:
        return json.dumps({
            "body": base64.b64encode(body).decode(), "content-type": content_type,
            "content-encoding": "utf-8",
            "headers": headers or {"id": f"id-{tag}", "task": "wire.add"},
            "properties": {"delivery_tag": tag, "body_encoding": "base64",
                           "delivery_info": {"exchange": "", "routing_key": "celery"}},
        }).encode()  # fmt: skip

    client.lpush("celery", b"not json at all")
    client.lpush("celery", json.dumps({"properties": {}}).encode())
    client.lpush("celery", envelope(b"\x80\x04.", "application/x-python-serialize", "pk"))
    client.lpush("celery", envelope(b"[1, 2]", "application/json", "short"))
    client.lpush("celery", envelope(good.body, good.content_type, "good", good.headers))
    async with run_worker(app):
        assert await app.AsyncResult("good-1").get(timeout=10) == 2
        dead = await async_wait_for(
            lambda: len(client.xrange("aiotq:celery:{celery}:dead")) == 4 or None
        )
        assert dead
    reasons = [fields[b"reason"].decode() for _, fields in
               client.xrange("aiotq:celery:{celery}:dead")]  # fmt: skip
    assert any("not a kombu envelope" in r for r in reasons)
    assert any("pickle is refused" in r for r in reasons)
    assert any("[args, kwargs, embed]" in r for r in reasons)
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    await app.aclose()
    client.close()


async def test_redis_unacked_message_is_restored_after_the_visibility_timeout(
    redis_url: str,
) -> None:
    """A message a worker (Celery's or aiotq's) took and never acknowledged goes back to its
    list once held past the visibility timeout, marked redelivered and counted."""
    app = build_app(redis_url, redis_url, "json")
    app.conf.update({"broker_transport_options": {"visibility_timeout": 1}})
    client = redis.Redis.from_url(redis_url)
    wire = to_celery(Message(id="lost-1", task="wire.add", args=[2, 2]), "json")
    payload = {
        "body": base64.b64encode(wire.body).decode(), "content-type": wire.content_type,
        "content-encoding": "utf-8", "headers": wire.headers,
        "properties": {**wire.properties, "delivery_tag": "tag-lost", "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "celery"}},
    }  # fmt: skip
    # as kombu's QoS.append leaves it when its worker dies mid-task
    client.hset("unacked", "tag-lost", json.dumps([payload, "", "celery"]))
    client.zadd("unacked_index", {"tag-lost": time.time() - 5})
    async with run_worker(app):
        assert await app.AsyncResult("lost-1").get(timeout=15) == 4
    stored = json.loads(client.get("celery-task-meta-lost-1"))
    assert stored["status"] == "SUCCESS" and stored["result"] == 4
    assert client.hlen("unacked") == 0
    await app.aclose()
    client.close()


# keep `sys` for the interpreter check below
assert sys.version_info >= (3, 11)


# -- RabbitMQ: Celery's topology and AMQP format --------------------------------------------
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_amqp_celery_producer_aiotq_worker(
    celery_py: str, amqp_url: str, redis_url: str, serializer: str
) -> None:
    app = build_app(amqp_url, redis_url, serializer)
    async with run_worker(app, concurrency=10):
        out = await produce_from_celery(celery_py, amqp_url, redis_url, serializer)
    await app.aclose()
    check_celery_saw(out)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_amqp_aiotq_producer_celery_worker(
    celery_py: str, amqp_url: str, redis_url: str, serializer: str, tmp_path: Path
) -> None:
    app = build_app(amqp_url, redis_url, serializer)
    try:
        with celery_worker(celery_py, amqp_url, redis_url, serializer, tmp_path / "c.log"):
            await check_aiotq_saw(app)
    finally:
        await app.aclose()
