"""RabbitMQ's fast paths behave: pipelined confirms, bulk publishes, batched acks.

No timings here (benchmarks/ measures): each test checks what the fast path must still
promise: every send confirmed or failed clearly, nothing acked before its result, nothing
lost when the connection goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest

from aiotq import App
from aiotq.brokers.amqp import AmqpBroker
from aiotq.brokers.base import Outgoing
from aiotq.exceptions import BrokerConnectionError, BrokerError
from aiotq.testing import run_worker

from .conftest import async_wait_for


def vhost_of(url: str) -> str:
    return urlsplit(url).path[1:]


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    return done.stdout


def unacked(url: str, queue: str) -> int:
    out = rabbitmqctl("list_queues", "-p", vhost_of(url), "name", "messages_unacknowledged")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


@pytest.fixture
async def app(amqp_url: str) -> AsyncIterator[App]:
    app = App("speed", broker=amqp_url, backend="memory://")

    @app.task(name="speed.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="speed.wait")
    async def wait(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    yield app
    await app.aclose()


async def test_concurrent_sends_are_in_flight_together_and_all_confirmed(app: App) -> None:
    add = app.tasks["speed.add"]
    await add.send(0, 0)  # connected
    link = app.broker._links.peek()  # type: ignore[attr-defined]
    assert link is not None and link.writer is not None
    table = link.writer.channel.confirmations
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(table))
            await asyncio.sleep(0)

    watching = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(add.send(i, i) for i in range(1000)))
    finally:
        watching.cancel()
    assert len({r.id for r in results}) == 1000
    assert most > 100  # not one confirm round trip after another
    assert not table  # every confirm settled, none left behind
    assert await app.broker.purge("default") == 1001


async def test_send_many_arrives_in_order_and_runs(app: App) -> None:
    add = app.tasks["speed.add"]
    results = await add.send_many([((i, 1), {}) for i in range(2000)])
    async with run_worker(app, concurrency=1):  # one at a time: in queue order
        assert [await r.get(timeout=30) for r in results] == [i + 1 for i in range(2000)]


async def test_a_refusal_names_the_queue_and_the_rest_is_confirmed(amqp_url: str) -> None:
    arguments = {"tiny": {"x-max-length": 2, "x-overflow": "reject-publish"}}
    broker = AmqpBroker(amqp_url, queue_arguments=arguments)
    try:
        batch = [Outgoing("tiny", b"%d" % i, {"id": str(i)}) for i in range(5)]
        with pytest.raises(BrokerError, match="refused a message for queue 'tiny'"):
            await broker.publish_many(batch)
        with pytest.raises(BrokerError, match="'tiny'"):
            await broker.publish("tiny", b"one more", {"id": "x"})
        assert await broker.purge("tiny") == 2
        await broker.publish("tiny", b"room again", {"id": "y"})  # the channel lives on
    finally:
        await broker.aclose()


async def test_an_unroutable_message_is_refused_not_dropped(amqp_url: str) -> None:
    broker = AmqpBroker(amqp_url)
    try:
        await broker.publish("gone", b"first", {"id": "1"})  # declares it
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete("gone")
        with pytest.raises(BrokerError, match="refused"):  # returned by RabbitMQ (mandatory)
            await broker.publish("gone", b"second", {"id": "2"})
        with pytest.raises(BrokerError, match="refused"):
            await broker.publish_many([Outgoing("gone", b"third", {"id": "3"})])
    finally:
        await broker.aclose()


async def test_sends_go_on_through_a_closed_connection_and_lose_nothing(app: App) -> None:
    add = app.tasks["speed.add"]
    await add.send(0, 0)
    sent = 1
    stop = asyncio.Event()

    async def keep_sending() -> None:
        nonlocal sent
        while not stop.is_set():
            await asyncio.gather(*(add.send(i, i) for i in range(50)))
            sent += 50
            await add.send_many([((i, i), {}) for i in range(50)])
            sent += 50

    sending = asyncio.create_task(keep_sending())
    await async_wait_for(lambda: sent > 500, timeout=20)
    await asyncio.to_thread(rabbitmqctl, "close_all_connections", "--vhost",
                            vhost_of(app.broker.url), "test: a lost connection")  # fmt: skip
    before = sent
    await async_wait_for(lambda: sent > before + 500 or sending.done(), timeout=30)
    stop.set()
    await sending  # no send raised: each was retried until confirmed
    assert await app.broker.purge("default") >= sent  # at least once


async def test_a_silent_server_fails_the_send_within_its_bound(amqp_url: str) -> None:
    """A server that accepts and never answers (a proxy that stops passing replies)."""
    target = urlsplit(amqp_url)
    paused = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, back: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if back and paused.is_set():
                    continue  # swallowed: no confirm ever reaches the client
                writer.write(data)
                await writer.drain()
        writer.close()

    pipes: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        pipes.append(asyncio.create_task(pipe(reader, up_writer, False)))
        pipes.append(asyncio.create_task(pipe(up_reader, writer, True)))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    broker = AmqpBroker(amqp_url.replace(f":{target.port}/", f":{port}/"), publish_retry_s=1.5)
    try:
        await broker.publish("default", b"before", {"id": "1"})
        paused.set()
        began = time.monotonic()
        with pytest.raises(BrokerConnectionError, match="gave up after 1.5s"):
            await broker.publish_many([Outgoing("default", b"lost", {"id": "2"})])
        with pytest.raises(BrokerConnectionError, match="gave up after 1.5s"):
            await broker.publish("default", b"lost too", {"id": "3"})
        assert time.monotonic() - began < 3 * 1.5 + 1  # each within its bound, not for ever
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await broker.aclose()


async def test_batched_acks_never_cover_a_task_still_running(app: App, amqp_url: str) -> None:
    """A multiple ack covers every earlier delivery: the one still running must stay
    unacknowledged (so a worker killed now loses nothing) while later ones are acked."""
    slow = await app.tasks["speed.wait"].send(3.0)
    fast = await app.tasks["speed.add"].send_many([((i, i), {}) for i in range(100)])
    async with run_worker(app, concurrency=20):
        assert [await r.get(timeout=20) for r in fast] == [2 * i for i in range(100)]
        assert not await slow.ready()
        assert await asyncio.to_thread(unacked, amqp_url, "default") == 1
        assert await slow.get(timeout=20) == 3.0
        await async_wait_for(lambda: unacked(amqp_url, "default") == 0, timeout=10)


@pytest.mark.parametrize(
    ("headers", "priority", "message_id", "content_type"),
    [
        ({"task": "a.b", "priority": "5"}, 5, "id-1", "application/json"),
        ({}, None, None, None),
        ({"task": "é", "n": 3}, 0, "ü", "application/x-msgpack"),  # not a string: pamqp's
    ],
)
def test_the_content_header_is_what_amqp_decodes(
    headers: dict[str, object], priority: int | None, message_id: str | None,
    content_type: str | None,
) -> None:  # fmt: skip
    from pamqp import frame

    from aiotq.brokers.amqp_publish import Publication, content_header

    item = Publication("q", "", "q", b"x" * 10, headers, message_id, priority, content_type)
    _, channel, decoded = frame.unmarshal(content_header(7, 10, item))
    properties = decoded.properties  # type: ignore[union-attr]
    assert channel == 7 and decoded.body_size == 10  # type: ignore[union-attr]
    assert properties.delivery_mode == 2  # persistent
    assert (properties.content_type, properties.priority, properties.message_id) == (
        content_type, priority, message_id,
    )  # fmt: skip
    assert (properties.headers or {}) == headers


def queue_arguments_of(url: str) -> dict[str, str]:
    out = rabbitmqctl("list_queues", "-p", vhost_of(url), "name", "arguments")
    return dict(line.partition("\t")[::2] for line in out.splitlines())


async def test_every_classic_queue_is_declared_in_the_version_2_storage(
    app: App, amqp_url: str
) -> None:
    add = app.tasks["speed.add"]
    result = await add.send(2, 3)
    await add.aapply_async((0, 0), countdown=1)  # declares the delay levels too
    async with run_worker(app):
        assert await result.get(timeout=10) == 5
    found = queue_arguments_of(amqp_url)
    aiotq_queues = [name for name in found if name.startswith(("default", "aiotq.delay."))]
    assert {"default", "default.dead", "aiotq.delay.0"} <= set(aiotq_queues)
    for name in aiotq_queues:
        assert "x-queue-version" in found[name] and "2" in found[name], (name, found[name])


async def test_a_queue_an_earlier_aiotq_declared_as_version_1_is_used_as_it_is(
    app: App, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Queues declared before version 2 keep their arguments (RabbitMQ refuses a declaration
    that differs): aiotq warns once and serves them, their waiting messages included."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue("default", durable=True, arguments={"x-max-priority": 9})
        await channel.declare_queue("default.dead", durable=True)
    add = app.tasks["speed.add"]
    with caplog.at_level("WARNING", logger="aiotq.broker"):
        waiting = await add.send(20, 1)  # sent before any worker: waits in the old queue
        async with run_worker(app):
            assert await waiting.get(timeout=10) == 21
            assert await (await add.send(1, 1)).get(timeout=10) == 2
    warned = [
        r.getMessage() for r in caplog.records if "classic queue of version 1" in r.getMessage()
    ]
    assert any("'default'" in message for message in warned)
    assert len([m for m in warned if "'default'" in m]) == 1  # once per queue, not per send
    found = queue_arguments_of(amqp_url)
    assert "x-queue-version" not in found["default"]  # untouched
