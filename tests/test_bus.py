"""The bus every broker carries for control, replies and events (aiotq/brokers/bus.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.test_contract import broker  # noqa: F401  (the fixture: every broker)

pytestmark = pytest.mark.both_loops


async def gather(subscription, n: int, within_s: float = 5.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    got: list[bytes] = []
    deadline = time.monotonic() + within_s
    while len(got) < n and time.monotonic() < deadline:
        got.extend(await subscription.next(0.2))
    return got


async def test_every_subscriber_gets_every_post_in_order(broker) -> None:  # noqa: F811
    topic = f"t-{uuid.uuid4().hex[:6]}"
    first = await broker.subscribe(topic)
    second = await broker.subscribe(topic)
    other = await broker.subscribe(topic + "-other")
    try:
        for n in range(5):
            await broker.post(topic, b"m%d" % n, keep=100, ttl_s=30)
        expected = [b"m%d" % n for n in range(5)]
        assert await gather(first, 5) == expected
        assert await gather(second, 5) == expected
        assert await other.next(0.1) == []  # another topic hears nothing
    finally:
        for subscription in (first, second, other):
            await subscription.aclose()


async def test_a_quiet_topic_answers_empty_within_the_timeout(broker) -> None:  # noqa: F811
    subscription = await broker.subscribe(f"t-{uuid.uuid4().hex[:6]}")
    try:
        began = time.monotonic()
        assert await subscription.next(0.3) == []
        assert time.monotonic() - began < 3.0
    finally:
        await subscription.aclose()


async def test_a_post_wakes_a_waiting_subscriber_at_once(broker) -> None:  # noqa: F811
    topic = f"t-{uuid.uuid4().hex[:6]}"
    subscription = await broker.subscribe(topic)
    try:
        waiting = asyncio.ensure_future(subscription.next(4.0))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await broker.post(topic, b"now", keep=10, ttl_s=30)
        assert await waiting == [b"now"]
        assert time.monotonic() - began < 1.0  # pushed, not found by a later poll
    finally:
        await subscription.aclose()


async def test_replay_gives_a_late_subscriber_the_recent_past_bounded(broker) -> None:  # noqa: F811
    topic = f"t-{uuid.uuid4().hex[:6]}"
    for n in range(600):
        await broker.post(topic, b"%d" % n, keep=20, ttl_s=30)
    late = await broker.subscribe(topic, replay=True)
    fresh = await broker.subscribe(topic)
    try:
        replayed = await gather(late, 20, within_s=1.0)
        if type(broker).__name__ == "AmqpBroker":
            assert replayed == []  # a queue of its own, bound now: no past to replay
        else:
            assert replayed[-1] == b"599"  # the newest kept, in order
            assert 20 <= len(replayed) < 200  # bounded (Redis trims whole nodes: ~keep)
        assert await fresh.next(0.1) == []  # without replay: only what comes after
    finally:
        await late.aclose()
        await fresh.aclose()
