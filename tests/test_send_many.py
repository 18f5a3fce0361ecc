"""send_many: a batch of calls of one task in one pipeline, on every broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiotq import App, group
from aiotq.brokers.base import Outgoing
from aiotq.testing import run_worker


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    app = App("many", broker=url, backend="memory://")

    @app.task(name="many.add")
    async def add(x: int, y: int = 0) -> int:
        return x + y

    yield app
    await app.aclose()


async def test_send_many_returns_handles_in_order_and_every_call_runs(app: App) -> None:
    add = app.tasks["many.add"]
    results = await add.send_many([((i,), {"y": i}) for i in range(300)])
    assert len({r.id for r in results}) == 300
    async with run_worker(app, concurrency=50):
        assert [await r.get(timeout=20) for r in results] == [2 * i for i in range(300)]


async def test_a_bad_call_names_its_index_and_nothing_is_sent(app: App) -> None:
    add = app.tasks["many.add"]
    with pytest.raises(TypeError, match=r"send_many: item 2: many.add\(.*too many positional"):
        await add.send_many([((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((4,), {})])
    with pytest.raises(TypeError, match=r"item 1 must be \(args, kwargs\)"):
        await add.send_many([((1,), {}), (1, 2)])
    with pytest.raises(TypeError, match="unknown option"):
        await add.send_many([((1,), {})], countdwn=3)
    with pytest.raises(TypeError, match="task_id"):
        await add.send_many([((1,), {})], task_id="one-for-all")
    assert await app.broker.purge("default") == 0


async def test_options_apply_to_every_call(app: App) -> None:
    add = app.tasks["many.add"]
    await app.broker.declare(["other"])
    results = await add.send_many([((i,), {}) for i in range(5)], queue="other", priority=5)
    assert await app.broker.purge("default") == 0  # none went to the default queue
    later = await add.send_many([((7,), {}), ((8,), {})], countdown=1)
    sent_at = time.time()
    async with run_worker(app, queues=["other", "default"]):
        assert [await r.get(timeout=20) for r in results] == list(range(5))
        assert [await r.get(timeout=20) for r in later] == [7, 8]
        assert time.time() - sent_at >= 0.9  # the countdown was honoured, not dropped


async def test_app_send_many_by_name_and_its_sync_form(app: App) -> None:
    results = await app.asend_many("many.add", [((1, 2), {}), ((3,), {"y": 4})])
    async with run_worker(app):
        assert [await r.get(timeout=20) for r in results] == [3, 7]
        more = await asyncio.to_thread(app.send_many, "many.add", [((5, 5), {})])
        via_task = await asyncio.to_thread(app.tasks["many.add"].delay_many, [((6, 6), {})])
        assert await more[0].get(timeout=20) == 10
        assert await via_task[0].get(timeout=20) == 12
    app.close()


async def test_an_empty_batch_sends_nothing(app: App) -> None:
    assert await app.tasks["many.add"].send_many([]) == []
    await app.broker.publish_many([])


async def test_publish_many_keeps_each_message_own_queue_delay_and_priority(app: App) -> None:
    broker = app.broker
    await broker.declare(["a", "b"])
    batch = [
        Outgoing("a", b"low", {"id": "1"}, 0.0, 0),
        Outgoing("a", b"high", {"id": "2"}, 0.0, 9),
        Outgoing("b", b"late", {"id": "3"}, 1.0, None),
    ]
    sent = time.monotonic()
    await broker.publish_many(batch)
    got: list[tuple[bytes, float]] = []

    async def tick() -> None:  # the worker's scheduler tick moves due delayed messages
        while True:
            await broker.tick()
            await asyncio.sleep(0.05)

    ticking = asyncio.create_task(tick())
    try:
        async with asyncio.timeout(20):
            async for delivery in broker.consume(["a", "b"], prefetch=10):
                got.append((delivery.body, time.monotonic() - sent))
                await delivery.ack()
                if len(got) == 3:
                    break
    finally:
        ticking.cancel()
    bodies = [body for body, _ in got]
    assert bodies.index(b"high") < bodies.index(b"low") and bodies[-1] == b"late"
    assert got[-1][1] >= 0.9  # its delay was kept


async def test_a_group_is_sent_in_one_batch_with_its_ids_and_options(app: App) -> None:
    add = app.tasks["many.add"]
    result = await group(add.s(i, i) for i in range(20)).aapply_async(queue="other")
    async with run_worker(app, queues=["other"]):
        assert await result.get(timeout=20) == [2 * i for i in range(20)]
        assert [r.id for r in result.results] == [r.id for r in result.results]


def test_send_many_in_eager_mode_runs_each_call_here() -> None:
    app = App("eager", broker="memory://", backend="memory://")
    app.conf.task_always_eager = True

    @app.task(name="eager.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    results = mul.delay_many([((2, 3), {}), ((4, 5), {})])
    assert [r.get() for r in results] == [6, 20]
    app.close()
