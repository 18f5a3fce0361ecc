"""The Coordinator contract on every store that has one, and rpc://'s reply routing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiotq.backends import make_coordinator
from aiotq.backends.base import Coordinator, ReplyRouting, reply_routing
from aiotq.backends.memory import MemoryBackend
from aiotq.backends.redis import RedisBackend
from aiotq.backends.rpc import RpcBackend
from aiotq.backends.sqlite import SqliteBackend
from aiotq.brokers import default_backend_url
from aiotq.brokers.amqp import AmqpBroker
from aiotq.brokers.memory import MemoryBroker
from aiotq.exceptions import ConfigurationError
from aiotq.protocol import CODECS, ResultRecord

pytestmark = pytest.mark.both_loops


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        instance: Any = MemoryBackend()
    elif request.param == "sqlite":
        instance = SqliteBackend(f"sqlite:///{tmp_path}/coordinator.db")
    else:
        instance = RedisBackend(request.getfixturevalue("redis_url"))
    await instance.connect()
    yield instance
    await instance.aclose()


def key() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


async def test_is_its_own_coordinator(coordinator: Any) -> None:
    assert isinstance(coordinator, Coordinator)
    assert make_coordinator(coordinator) is coordinator
    assert reply_routing(coordinator) is None


async def test_put_fetch_delete(coordinator: Any) -> None:
    name = key()
    assert await coordinator.fetch(name) is None
    await coordinator.put(name, b"one", ttl_s=60)
    assert await coordinator.fetch(name) == b"one"
    await coordinator.put(name, b"two", ttl_s=60)  # replaces
    assert await coordinator.fetch(name) == b"two"
    await coordinator.delete(name)
    assert await coordinator.fetch(name) is None
    await coordinator.delete(name)  # deleting what is gone is no error


async def test_values_expire(coordinator: Any) -> None:
    short, long = key(), key()
    await coordinator.put(short, b"soon gone", ttl_s=0.2)
    await coordinator.put(long, b"stays", ttl_s=60)
    deadline = time.monotonic() + 5
    while await coordinator.fetch(short) is not None:
        assert time.monotonic() < deadline, "the value never expired"
        await asyncio.sleep(0.05)
    assert await coordinator.scan(short) == {}
    assert await coordinator.fetch(long) == b"stays"


async def test_put_sets_the_ttl_again(coordinator: Any) -> None:
    name = key()
    await coordinator.put(name, b"x", ttl_s=0.2)
    await coordinator.put(name, b"y", ttl_s=60)  # a presence heartbeat renews its record
    await asyncio.sleep(0.4)  # past the first TTL: the test is that nothing happens
    assert await coordinator.fetch(name) == b"y"


async def test_scan_lists_a_prefix_literally(coordinator: Any) -> None:
    await coordinator.put("workers/a", b"1", ttl_s=60)
    await coordinator.put("workers/b", b"2", ttl_s=60)
    await coordinator.put("workersX", b"3", ttl_s=60)
    await coordinator.put("revoked/a", b"4", ttl_s=60)
    # glob (Redis MATCH) and LIKE (SQLite) wildcards in a prefix are only characters
    await coordinator.put("w*[x]%_?/1", b"5", ttl_s=60)
    await coordinator.put("wa[x]%_?/2", b"6", ttl_s=60)
    assert await coordinator.scan("workers/") == {"workers/a": b"1", "workers/b": b"2"}
    assert await coordinator.scan("w*[x]%_?/") == {"w*[x]%_?/1": b"5"}
    assert await coordinator.scan("nothing/") == {}
    await coordinator.delete("workers/a")
    assert await coordinator.scan("workers/") == {"workers/b": b"2"}


async def test_values_never_meet_results_of_the_same_name(coordinator: Any) -> None:
    name = key()
    await coordinator.store([(name, b"result")], ttl_s=60)
    assert await coordinator.fetch(name) is None
    await coordinator.put(name, b"value", ttl_s=60)
    assert await coordinator.get(name) == b"result"
    assert await coordinator.fetch(name) == b"value"
    await coordinator.forget(name)
    assert await coordinator.fetch(name) == b"value"
    await coordinator.store([(name, b"result")], ttl_s=60)
    await coordinator.delete(name)
    assert await coordinator.get(name) == b"result"
    assert await coordinator.scan(name) == {}
    # nor counters or leases of that name
    assert await coordinator.incr(name, ttl_s=60) == 1
    assert await coordinator.lease(name, "a", ttl_s=60)
    assert await coordinator.fetch(name) is None


async def test_counter_is_atomic(coordinator: Any) -> None:
    name = key()
    values = await asyncio.gather(*(coordinator.incr(name, ttl_s=60) for _ in range(20)))
    assert sorted(values) == list(range(1, 21))


async def test_lease_has_one_holder_until_it_lapses(coordinator: Any) -> None:
    name = f"lease-{uuid.uuid4().hex[:6]}"
    assert await coordinator.lease(name, "a", ttl_s=0.5)
    assert not await coordinator.lease(name, "b", ttl_s=0.5)  # a holds it
    assert await coordinator.lease(name, "a", ttl_s=0.5)  # renewal
    deadline = time.monotonic() + 3
    while not await coordinator.lease(name, "b", ttl_s=10):  # a stopped renewing: b takes over
        assert time.monotonic() < deadline, "the lease never lapsed"
        await asyncio.sleep(0.05)
    assert not await coordinator.lease(name, "a", ttl_s=10)
    await coordinator.release(name, "a")  # not a's to give
    assert not await coordinator.lease(name, "a", ttl_s=10)
    await coordinator.release(name, "b")
    assert await coordinator.lease(name, "a", ttl_s=10)  # free at once after release


# -- rpc:// ---------------------------------------------------------------------------------
def test_default_backend_of_a_broker_url() -> None:
    assert default_backend_url("amqp://guest:guest@localhost//") == "rpc://"
    assert default_backend_url("AMQPS://host/") == "rpc://"
    assert default_backend_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert default_backend_url("sqlite:///x.db") == "sqlite:///x.db"


def test_rpc_needs_an_amqp_broker() -> None:
    with pytest.raises(ConfigurationError, match="needs an amqp:// broker"):
        RpcBackend("rpc://", MemoryBroker())


def test_rpc_routes_replies_and_coordinates_nothing() -> None:
    rpc = RpcBackend("rpc://", AmqpBroker("amqp://guest:guest@127.0.0.1:1/"))  # no connection
    assert reply_routing(rpc) is rpc
    assert isinstance(rpc, ReplyRouting) and not rpc.keeps_results
    assert not isinstance(rpc, Coordinator)
    assert make_coordinator(rpc) is None


def _record(task_id: str, state: str) -> bytes:
    return CODECS["json"].encode(ResultRecord(task_id=task_id, state=state))  # type: ignore[arg-type]


async def test_rpc_replies_through_the_brokers_public_channel(amqp_session_url: str) -> None:
    broker = AmqpBroker(amqp_session_url)
    opened: list[object] = []
    open_channel = broker.open_channel

    async def counted() -> Any:
        channel = await open_channel()
        opened.append(channel)
        return channel

    broker.open_channel = counted  # type: ignore[method-assign]
    caller = RpcBackend("rpc://", broker)
    worker = RpcBackend("rpc://", broker)  # another process's, in effect: it keeps nothing
    try:
        reply_to = await caller.reply_to()
        assert await asyncio.gather(*(caller.reply_to() for _ in range(5))) == [reply_to] * 5
        task_id = str(uuid.uuid4())
        watcher = caller.watch(task_id)
        async with asyncio.timeout(10):
            worker.expect_reply(task_id, reply_to)
            await worker.store([(task_id, _record(task_id, "STARTED"))], ttl_s=60)
            assert b"STARTED" in await anext(watcher)
            await worker.store([(task_id, _record(task_id, "SUCCESS"))], ttl_s=60)
            assert b"SUCCESS" in await anext(watcher)
        await watcher.aclose()
        assert b"SUCCESS" in (await caller.get(task_id) or b"")
        assert await worker.get(task_id) is None  # only the caller has it
        # done: a later store of that id goes nowhere, and a caller that left is no error
        await worker.store([(task_id, _record(task_id, "SUCCESS"))], ttl_s=60)
        gone = str(uuid.uuid4())
        worker.expect_reply(gone, "aiotq.reply.nobody")
        await worker.store([(gone, _record(gone, "SUCCESS"))], ttl_s=60)
        await caller.forget(task_id)
        assert await caller.get(task_id) is None
        assert len(opened) == 2  # the caller's inbox and the worker's replies, nothing more
    finally:
        await caller.aclose()
        await worker.aclose()
        await broker.aclose()


async def test_holder_names_who_leads_and_none_after_release(coordinator) -> None:  # type: ignore[no-untyped-def]
    assert await coordinator.holder("lead-x") is None
    assert await coordinator.lease("lead-x", "a", 5)
    assert await coordinator.holder("lead-x") == "a"
    await coordinator.release("lead-x", "a")
    assert await coordinator.holder("lead-x") is None
