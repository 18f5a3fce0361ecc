"""Quorum queues on a real three-node RabbitMQ cluster of the test's own (tests/rabbit_cluster.py):
failover between nodes, and delivery limits counted by the queue's own replicated state.

The cluster is started once for the module (its nodes boot in parallel) and healed before
each test (a node a test killed is started again and rejoins). `make test-cluster`.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from aiotq import AccessRefused, App, AsyncResult, ConfigurationError, DeliveryLimitExceeded

from .conftest import async_wait_for, server_missing
from .rabbit_cluster import RabbitCluster, quorum_app, rabbitmq_scripts
from .servers import free_port
from .workerproc import WorkerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

APP = "tests.rabbit_cluster:tq"  # the e2e tasks, quorum queues
WORKER, PRODUCER = "aiotq-worker", "aiotq-producer"  # connection names, as RabbitMQ lists them
RECEIVED = r"e2e\.sleep\[.*\] received"
TASKS = 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    scripts = rabbitmq_scripts()
    if scripts is None:
        server_missing(
            "rabbitmq-server (to start a cluster of the test's own)",
            FileNotFoundError("not installed"),
        )
    assert scripts is not None
    started = RabbitCluster.start(tmp_path_factory.mktemp("rabbit-cluster"), scripts)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def whole(cluster: RabbitCluster) -> RabbitCluster:
    """Every node up and clustered (a test before this one may have stopped one)."""
    cluster.heal()
    return cluster


def worker_on(urls: str, backend: str, workers: list[WorkerProcess], *args: str) -> WorkerProcess:
    worker = WorkerProcess(urls, *args, app=APP, env={"AIOTQ_RESULT_BACKEND": backend})
    workers.append(worker)
    return worker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_a_node_lost_mid_run_loses_no_confirmed_task(
    whole: RabbitCluster, redis_url: str, workers: list[WorkerProcess]
) -> None:
    """The node that the worker and the producer are on is killed (SIGKILL of its VM) while
    tasks run and sends wait for their confirms: both move to a live node, every send
    returns (confirmed), and every task sent completes, a delayed one included."""
    cluster, queue = whole, unique("failover")
    victim = cluster.nodes[0]  # the first URL of both lists: where they connect
    # the worker's next URL leads nowhere: a failed attempt moves on to the one after
    nowhere_port = free_port()
    nowhere = f"amqp://guest:guest@127.0.0.1:{nowhere_port}/?name={WORKER}"
    urls = ";".join([victim.url(name=WORKER), nowhere,
                     *(node.url(name=WORKER) for node in cluster.nodes[1:])])  # fmt: skip
    worker = worker_on(urls, redis_url, workers, "-Q", queue, "-c", "50")
    worker.ready()
    app = quorum_app(cluster.urls(name=PRODUCER), redis_url)
    app.conf.broker_publish_retry_s = 60.0  # a send waits out the failover, then returns
    sent: list[AsyncResult] = []

    async def produce() -> None:
        for i in range(TASKS):  # one after another, each returning once confirmed
            sent.append(await app.asend_task("e2e.sleep", (0.01, f"t{i}"), queue=queue))

    producing = asyncio.create_task(produce())
    try:
        await async_wait_for(
            lambda: len(sent) >= TASKS // 3 and worker.count(RECEIVED) >= 100, timeout=60
        )
        assert cluster.ports_of(WORKER) == cluster.ports_of(PRODUCER) == {victim.port}
        # waits through the loss in the delay levels (led by the victim, which declared
        # them), due once the elections are over (see docs/rabbitmq-cluster.md on 3.10)
        delayed = await app.asend_task("e2e.now", queue=queue, countdown=3)
        due = time.time() + 3
        killed_at = time.time()
        victim.kill()
        # sent after the loss and run: the whole failover, producer and worker
        probe = await app.asend_task("e2e.now", queue=queue)
        failover_s = await probe.get(timeout=60) - killed_at
        async with asyncio.timeout(90):
            await producing
        tags = [await result.get(timeout=60) for result in sent]
        assert sorted(tags) == sorted(f"t{i}" for i in range(TASKS))
        assert await delayed.get(timeout=30) >= due
        # on a live node (the next one, or the one after if restoring there met an election)
        live = {node.port for node in cluster.nodes[1:]}
        assert len(cluster.ports_of(WORKER)) == len(cluster.ports_of(PRODUCER)) == 1
        assert cluster.ports_of(WORKER) | cluster.ports_of(PRODUCER) <= live
        assert worker.count(rf"Connection attempt to .*:{nowhere_port}/.* failed") >= 1
        assert worker.proc.poll() is None
        print(f"\nfailover (kill to the next task run): {failover_s:.2f}s")
        assert failover_s < 30, worker.log
    finally:
        producing.cancel()
        await app.aclose()


async def test_a_message_past_its_delivery_limit_is_dead_lettered_with_its_reason(
    whole: RabbitCluster, redis_url: str, workers: list[WorkerProcess]
) -> None:
    """e2e.poison (max_deliveries=2) kills its worker. RabbitMQ counts each return in the
    quorum queue's replicated state (x-delivery-count), so the count survives its leader's
    loss between deliveries; the third delivery is dead-lettered, with its reason, into
    `q.dead` (a quorum queue too), and its result is a DeliveryLimitExceeded failure."""
    cluster, queue = whole, unique("poison")
    app = quorum_app(cluster.urls(), redis_url)
    try:
        result = await app.asend_task("e2e.poison", queue=queue)
        types = cluster.queue_types()
        assert types[queue] == types[f"{queue}.dead"] == "quorum"
        leader = cluster.leader(queue)
        for delivery in (1, 2):
            worker = worker_on(cluster.urls(), redis_url, workers, "-Q", queue, "-c", "1")
            assert worker.wait(timeout=60) == -signal.SIGKILL, worker.log  # the poison ran
            if delivery == 1:  # the returned message's count is held by the other replicas
                leader.ctl("stop_app")
                leader.wait_down()
        assert cluster.leader(queue) is not leader
        worker_on(cluster.urls(), redis_url, workers, "-Q", queue).ready()
        with pytest.raises(DeliveryLimitExceeded, match="delivered 3 times without finishing"):
            await result.get(timeout=30)
        dead = await app.broker.dead_letters(queue)
        assert len(dead) == 1
        assert "delivered 3 times without finishing (limit 2" in dead[0][1]
    finally:
        await app.aclose()


async def test_the_first_node_that_answers_is_used_and_a_refused_login_is_final(
    whole: RabbitCluster,
) -> None:
    """A failover list as Celery's list or kombu's `;` string; every node of it an AMQP one."""
    cluster = whole
    mixed = App("mixed", broker=f"{cluster.nodes[0].url()};redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="is no RabbitMQ URL"):
        mixed.finalize()
    nowhere = f"amqp://guest:secret@127.0.0.1:{free_port()}/"  # nothing listens there
    second = cluster.nodes[1]
    app = App("first", broker=[nowhere, second.url(name="first-answer")], backend="memory://")
    try:
        assert app.conf.broker_url == f"{nowhere};{second.url(name='first-answer')}"
        assert "secret" not in repr(app.broker)
        await app.broker.connect()
        assert cluster.ports_of("first-answer") == {second.port}
    finally:
        await app.aclose()
    wrong = second.url().replace("guest:guest", "guest:wrong")
    refused = App("refused", broker=f"{wrong};{cluster.nodes[2].url()}", backend="memory://")
    try:
        started = time.monotonic()
        with pytest.raises(AccessRefused, match="refused the login"):
            await refused.broker.connect()  # users are the cluster's: no node would differ
        assert time.monotonic() - started < 5
    finally:
        await refused.aclose()
