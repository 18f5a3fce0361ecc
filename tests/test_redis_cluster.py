"""Redis Cluster: `redis+cluster://host:port,host:port` (or a `redis://` seed node, found to
be a cluster's), for the broker and the result backend, against a real cluster of three
masters with a replica each (tests/servers.py): the broker, backend, coordinator and bus
contracts, queues spread over the masters, a canvas, beat's lease, control and revokes, and
a failover in the middle of a run."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiotq import App, BrokerConnectionError, ConfigurationError, TaskRevoked, chord, group
from aiotq.backends.redis import RedisBackend
from aiotq.beat import Beat
from aiotq.brokers.base import Outgoing
from aiotq.brokers.redis import RedisBroker, keys
from aiotq.testing import run_worker

from .apps import build
from .conftest import async_wait_for, need_redis_server, server_missing
from .servers import RedisClusterSet, redis_cli_binary

# The contracts every broker, backend and coordinator meets, run here on the cluster: pytest
# collects these imported tests in this module, with this module's fixtures below.
from .test_bus import (  # noqa: F401
    test_a_post_wakes_a_waiting_subscriber_at_once,
    test_a_quiet_topic_answers_empty_within_the_timeout,
    test_every_subscriber_gets_every_post_in_order,
    test_replay_gives_a_late_subscriber_the_recent_past_bounded,
)
from .test_contract import (  # noqa: F401
    queue,
    take,
    test_a_finished_delivery_frees_its_prefetch_slot_before_its_ack,
    test_backend_store_get_forget,
    test_backend_ttl_expires,
    test_backend_watch_sees_earlier_and_later_stores,
    test_backend_watch_wakes_without_polling,
    test_closing_consumer_returns_unhanded_messages,
    test_delayed_message_waits_until_due,
    test_fair_between_queues,
    test_messages_given_back_unhanded_are_not_counted_as_deliveries,
    test_prefetch_bounds_unacknowledged,
    test_priorities_do_not_starve_another_queue,
    test_priority_higher_first,
    test_publish_consume_ack,
    test_purge_counts_ready_and_delayed,
    test_reject_dead_letters_with_reason,
    test_reject_requeue_redelivers,
    test_unacked_delivery_comes_back_when_its_holder_goes,
    ticking,
)
from .test_coordinator import (  # noqa: F401
    test_counter_is_atomic,
    test_holder_names_who_leads_and_none_after_release,
    test_is_its_own_coordinator,
    test_lease_has_one_holder_until_it_lapses,
    test_put_fetch_delete,
    test_put_sets_the_ttl_again,
    test_scan_lists_a_prefix_literally,
    test_values_expire,
    test_values_never_meet_results_of_the_same_name,
)
from .workerproc import WorkerProcess

pytestmark = pytest.mark.cluster

PASSWORD = "cl-s3cret"


def worker_app() -> App:
    """The subprocess worker's app (`aiotq worker tests.test_redis_cluster:tq`): the e2e
    tasks, the broker from AIOTQ_BROKER_URL, WAIT from CLUSTER_WAIT_REPLICAS."""
    app = build()
    app.conf.redis_wait_replicas = int(os.environ.get("CLUSTER_WAIT_REPLICAS", "0"))
    app.conf.broker_publish_retry_s = 30.0
    return app


tq = worker_app()


def need_cluster_tools() -> None:
    need_redis_server()
    if redis_cli_binary() is None:
        server_missing("redis-cli (to create a cluster)", FileNotFoundError("not on PATH"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """Three masters and three replicas, with a password, shared by the tests that fault
    nothing (each is flushed before a test)."""
    need_cluster_tools()
    group = RedisClusterSet.start(tmp_path_factory.mktemp("cluster"), password=PASSWORD)
    yield group
    group.stop()


@pytest.fixture
def url(cluster: RedisClusterSet) -> str:
    for master in cluster.masters():
        with master.client() as client:
            client.flushdb()
    return cluster.url()


@pytest.fixture
async def broker(url: str) -> AsyncIterator[RedisBroker]:
    instance = RedisBroker(url, visibility_timeout_s=3.0)
    await instance.connect()
    yield instance
    await instance.aclose()


@pytest.fixture
async def lapsing_broker(url: str) -> AsyncIterator[RedisBroker]:
    instance = RedisBroker(url, visibility_timeout_s=1.0)
    await instance.connect()
    yield instance
    await instance.aclose()


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisBackend]:
    instance = RedisBackend(url)
    await instance.connect()
    yield instance
    await instance.aclose()


@pytest.fixture
async def coordinator(url: str) -> AsyncIterator[RedisBackend]:
    instance = RedisBackend(url)
    await instance.connect()
    yield instance
    await instance.aclose()


def spread_queues(cluster: RedisClusterSet) -> list[str]:
    """One queue name per master: queues whose slots three different masters hold."""
    by_master: dict[int, str] = {}
    while len(by_master) < len(cluster.masters()):
        name = f"q-{uuid.uuid4().hex[:6]}"
        by_master.setdefault(cluster.owner(keys(name).streams[0]).port, name)
    return list(by_master.values())


async def test_a_seed_node_is_found_to_be_a_clusters(cluster: RedisClusterSet, url: str) -> None:
    """`redis://` to one node that answers cluster_enabled:1 is the cluster; db 0 only; the
    Celery layout is refused (kombu's keys share no hash tag); passwords stay masked."""
    seed = f"redis://:{PASSWORD}@127.0.0.1:{cluster.nodes[0].port}/0"
    app = build(seed)
    async with run_worker(app):
        result = await app.asend_task("e2e.add", (40, 2))
        assert await result.get(timeout=10) == 42
    assert app.broker._clients.cluster and app.backend._clients.cluster  # type: ignore[attr-defined]
    assert app.history is not None  # the history, in one slot: {aiotq:h}
    record = await async_wait_for_record(app, result.id)
    assert record.state == "SUCCESS"
    await app.aclose()
    other_db = build(seed.replace("/0", "/3"))
    with pytest.raises(ConfigurationError, match="db 0 only") as info:
        await other_db.asend_task("e2e.add", (1, 1))
    assert PASSWORD not in str(info.value)
    await other_db.aclose()
    celery = build(url)
    celery.conf.task_protocol = "celery"
    with pytest.raises(ConfigurationError, match="kombu's keys share no hash tag"):
        celery.finalize()


async def async_wait_for_record(app: App, task_id: str) -> Any:
    history = app.history
    assert history is not None
    deadline = time.monotonic() + 10
    while (record := await history.get(task_id)) is None:
        assert time.monotonic() < deadline, "no history record"
        await asyncio.sleep(0.05)
    return record


async def test_queues_on_three_masters_through_one_worker(
    cluster: RedisClusterSet, url: str
) -> None:
    """A worker consuming queues on different masters wakes for each at once (one blocking
    read per slot), not after its read times out."""
    queues = spread_queues(cluster)
    owners = {cluster.owner(keys(q).streams[0]).port for q in queues}
    assert len(owners) == 3
    app = build(url)
    app.conf.broker_pool_size = 3
    async with run_worker(app, queues=queues):
        burst = await asyncio.gather(
            *(app.asend_task("e2e.add", (i, i), queue=queues[i % 3]) for i in range(200))
        )
        assert [await r.get(timeout=10) for r in burst] == [2 * i for i in range(200)]
        client = await app.broker._clients.client()  # type: ignore[attr-defined]
        # 200 at once wait for one of 3 slots (BoundedCluster): 3 per node, +1 for redis-py
        assert all(len(node._connections) <= 4 for node in client.get_nodes())
        for _ in range(3):
            for name in queues:  # the worker waits on all three: each wakes it at once
                began = time.monotonic()
                result = await app.asend_task("e2e.add", (1, 2), queue=name)
                assert await result.get(timeout=10) == 3
                assert time.monotonic() - began < 0.5
        results = [await app.asend_task("e2e.add", (i, i), queue=queues[i % 3]) for i in range(60)]
        assert [await r.get(timeout=10) for r in results] == [2 * i for i in range(60)]
        for name in queues:
            batch = await app.tasks["e2e.add"].send_many(
                [((i, 1), {}) for i in range(20)], queue=name
            )
            assert [await r.get(timeout=10) for r in batch] == [i + 1 for i in range(20)]
    await app.aclose()


async def test_one_batch_over_queues_of_three_masters(
    cluster: RedisClusterSet, broker: RedisBroker
) -> None:
    """publish_many: one script per queue (a slot each), every message there once; with
    redis_wait_replicas, a WAIT on each master written to."""
    queues = spread_queues(cluster)
    await broker.declare(queues)
    batch = [
        Outgoing(queues[i % 3], f"m{i}".encode(), {}, delay_s=0.2 * (i % 2)) for i in range(30)
    ]
    await broker.publish_many(batch)
    waiting = RedisBroker(cluster.url(), wait_replicas=1)
    await waiting.publish_many([Outgoing(name, b"waited", {}) for name in queues])
    await waiting.aclose()
    async with ticking(broker):
        got = await take(broker, queues, 33, prefetch=40)
    assert sorted(d.body for d in got) == sorted([*(o.body for o in batch), *[b"waited"] * 3])
    for delivery in got:
        await delivery.ack()


async def test_canvas_chain_group_chord(url: str) -> None:
    """Results, chord counters and the canvas's follow-ups land on slots all over."""
    app = build(url)
    add, mul, xsum = app.tasks["e2e.add"], app.tasks["e2e.mul"], app.tasks["e2e.xsum"]
    async with run_worker(app, concurrency=20):
        chained = await (add.s(2, 2) | mul.s(4) | add.s(10)).send()
        assert await chained.get(timeout=10) == 26
        grouped = await group(add.s(i, i) for i in range(20)).send()
        assert await grouped.get(timeout=10) == [2 * i for i in range(20)]
        summed = await chord((add.s(i, i) for i in range(30)), xsum.s()).send()
        assert await summed.get(timeout=10) == sum(2 * i for i in range(30))
        nested = await (add.s(1, 1) | group(mul.s(i) for i in range(1, 4)) | xsum.s()).send()
        assert await nested.get(timeout=10) == 12
    await app.aclose()


async def test_beat_lease_control_and_revokes(url: str) -> None:
    """Beat's leader lease (one leads; a stop hands over), a control ping answered by the
    worker (the bus and presence), and a revoke stored for a countdown task."""
    app = build(url)
    app.conf.beat_lease_s = 1.5
    app.conf.worker_heartbeat_s = 0.5
    async with run_worker(app) as worker:
        beats = [Beat(app), Beat(app)]
        running = [asyncio.create_task(beat.run()) for beat in beats]
        await async_wait_for(lambda: any(b.leading for b in beats), 5)
        assert [b.leading for b in beats].count(True) == 1
        leader = 0 if beats[0].leading else 1
        running[leader].cancel()
        await asyncio.gather(running[leader], return_exceptions=True)
        await async_wait_for(lambda: beats[1 - leader].leading, 5)
        running[1 - leader].cancel()
        await asyncio.gather(*running, return_exceptions=True)

        await async_wait_for(lambda: worker.ready.is_set(), 5)
        replies = await app.control.abroadcast("ping", reply=True, timeout=5)
        assert [next(iter(r.values())) for r in replies] == [{"ok": "pong"}]

        later = await app.asend_task("e2e.add", (1, 1), countdown=1)
        await app.control.arevoke([later.id])
        with pytest.raises(TaskRevoked):
            await later.get(timeout=10)
    await app.aclose()


async def test_failover_loses_no_acknowledged_task(tmp_path: Path) -> None:
    """SIGKILL the master of one of three queues while a worker runs and producers send to
    all of them: its replica takes over, worker and producers follow the new topology, and
    every task whose send returned completes. Both WAIT for one replica
    (redis_wait_replicas = 1); the killed node is restarted (as an orchestrator would) and
    rejoins as the new master's replica."""
    need_cluster_tools()
    group_ = RedisClusterSet.start(tmp_path / "cluster")
    worker = None
    app = build(group_.url())
    app.conf.update(redis_wait_replicas=1, broker_publish_retry_s=30.0)
    try:
        queues = spread_queues(group_)
        env = {"CLUSTER_WAIT_REPLICAS": "1"}
        worker = WorkerProcess(
            group_.url(), "-c", "50", "-Q", ",".join(queues), env=env, app=f"{__name__}:tq"
        ).ready()
        sent: dict[str, int] = {}
        victim_acked_at: list[float] = []  # sends to the queue whose master is killed
        failed = 0
        stop = asyncio.Event()

        async def producer(index: int) -> None:
            nonlocal failed
            n = 0
            while not stop.is_set():
                n += 1
                value = index * 100_000 + n
                try:
                    result = await app.asend_task(
                        "e2e.add", (value, value), queue=queues[n % len(queues)]
                    )
                except BrokerConnectionError:
                    failed += 1  # not acknowledged: the test asks nothing of it
                    continue
                sent[result.id] = 2 * value
                if n % len(queues) == 0:
                    victim_acked_at.append(time.monotonic())
                await asyncio.sleep(0.005)

        other_acked_at: list[float] = []  # a queue on a master that stays up
        other_sent: dict[str, int] = {}

        async def other_producer() -> None:
            while not stop.is_set():
                result = await app.asend_task("e2e.add", (1, 1), queue=queues[1])
                other_sent[result.id] = 2
                other_acked_at.append(time.monotonic())
                await asyncio.sleep(0.01)

        producers = [asyncio.create_task(producer(i)) for i in range(4)]
        producers.append(asyncio.create_task(other_producer()))
        await async_wait_for(lambda: len(sent) >= 150, 20)
        victim = group_.owner(keys(queues[0]).streams[0])
        killed_at = time.monotonic()
        victim.kill()
        before = len(sent)
        await wait_threaded(lambda: moved(group_, queues[0], victim), 30)
        promoted_at = time.monotonic()
        victim.restart()  # rejoins with its nodes.conf, empty: the new master's replica
        await async_wait_for(lambda: len(sent) >= before + 150, 30)
        resumed_at = time.monotonic()
        stop.set()
        await asyncio.gather(*producers)
        for task_id, expected in {**sent, **other_sent}.items():
            assert await app.AsyncResult(task_id).get(timeout=30) == expected
        first_after = min(t for t in victim_acked_at if t > promoted_at)
        # the other masters served their queues during the outage
        assert any(killed_at + 0.5 < t < promoted_at for t in other_acked_at)
        print(
            f"\ncluster failover: replica promoted {promoted_at - killed_at:.2f}s after the"
            f" kill; sends to its queue acknowledged again {first_after - killed_at:.2f}s"
            f" after it, 150 more sends {resumed_at - killed_at:.2f}s after it;"
            f" {len(sent) + len(other_sent)} tasks acknowledged and completed,"
            f" {failed} sends refused"
        )
        assert worker.proc.poll() is None
    finally:
        if worker is not None:
            worker.stop()
        await app.aclose()
        group_.stop()


def moved(group_: RedisClusterSet, name: str, victim: Any) -> bool:
    try:
        return group_.owner(keys(name).streams[0]) is not victim and group_._ok()
    except Exception:
        return False


async def wait_threaded(condition: Any, timeout: float) -> None:
    """Wait on a blocking condition (sync redis calls) off the loop, with a deadline."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
