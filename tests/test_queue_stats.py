"""Queue counts on every broker (the dashboard's Queues page and celery_queue_length)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.test_contract import broker  # noqa: F401  (the fixture: every broker)

pytestmark = pytest.mark.both_loops


async def test_ready_delayed_unacked_and_dead_are_counted(broker) -> None:  # noqa: F811
    queue = f"q-{uuid.uuid4().hex[:8]}"
    await broker.declare([queue])
    for n in range(4):
        await broker.publish(queue, b"m%d" % n, {"id": str(n)})
    await broker.publish(queue, b"later", {"id": "later"}, delay_s=60)
    stream = broker.consume([queue], 2)
    held = [await stream.__anext__(), await stream.__anext__()]
    await held[0].reject(requeue=False, reason="bad")  # dead-lettered
    deadline = time.monotonic() + 5
    amqp = type(broker).__name__ == "AmqpBroker"
    while True:
        stats = await broker.queue_stats(queue)
        want_ready = 2 if not amqp else stats.ready  # RabbitMQ counts prefetched as unacked
        if (stats.ready, stats.dead) == (want_ready, 1) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert stats.dead == 1
    if amqp:
        assert stats.ready is not None and stats.ready <= 2 and stats.unacked is None
    else:
        assert (stats.ready, stats.delayed, stats.unacked) == (2, 1, 1)
    await held[1].ack()
    with contextlib.suppress(Exception):
        await stream.aclose()
    never = await broker.queue_stats(f"never-{uuid.uuid4().hex[:6]}")
    assert never.ready == 0 and never.dead == 0
