"""Never lose, never crash-loop: real faults (a full Redis, a foreign SQLite lock, a flushed
or restarted Redis, a task that kills its worker) and what a user sees through them."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from aiotq import App, BackendError, BrokerUnavailable, DeliveryLimitExceeded, Reject
from aiotq.testing import run_worker

from .apps import build
from .conftest import async_wait_for, wait_for
from .servers import RedisServer
from .workerproc import ROOT, WorkerProcess

STREAM = "aiotq:{default}:stream"


def dead_letters(app: App, queue: str = "default") -> list[tuple[bytes, str]]:
    """The queue's dead letters, read on a loop of their own (its connections closed after)."""

    async def read() -> list[tuple[bytes, str]]:
        try:
            return await app.broker.dead_letters(queue)
        finally:
            await app.broker.aclose()

    return asyncio.run(read())


def fill(client: redis.Redis, headroom: int = 1_000_000) -> list[str]:
    """Bring a noeviction Redis to its maxmemory: every SET is refused with OOM after this.
    (A headroom of a megabyte: what the worker brings along, its connections and the Lua
    VM of the history script, must not outgrow what the test frees again.)"""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + headroom)
    keys: list[str] = []
    try:
        while True:
            keys.append(f"fill:{len(keys)}")
            client.set(keys[-1], b"x" * 10_000)
    except redis.exceptions.OutOfMemoryError:
        return keys


def test_a_full_result_redis_acks_nothing_without_its_result(
    redis_url: str, own_redis: Callable[..., RedisServer], workers: list[WorkerProcess]
) -> None:
    results_server = own_redis(maxmemory_policy="noeviction")
    backend = results_server.client()
    filler = fill(backend)
    env = {"AIOTQ_RESULT_BACKEND": results_server.url()}
    worker = WorkerProcess(redis_url, "-c", "20", env=env).ready()
    workers.append(worker)
    producer = build(redis_url, results_server.url())
    results = [producer.send_task("e2e.add", (i, 1)) for i in range(120)]
    worker.wait_for_log("could not store results", timeout=20)
    broker = redis.Redis.from_url(redis_url)
    assert broker.xlen(STREAM) == 120  # an ack deletes the entry: none was acked
    assert not any(backend.exists(f"aiotq:result:{r.id}") for r in results)
    # the worker stopped taking work: at most its prefetch running, a queue and a batch waiting
    assert worker.count(r"e2e\.add\[.*\] received") <= 3 * 20
    backend.delete(*filler)  # memory freed: everything stored, then acked
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(120)]
    wait_for(lambda: broker.xlen(STREAM) == 0, timeout=10)
    assert worker.proc.poll() is None
    producer.close()
    broker.close()


def test_a_second_signal_ends_a_worker_waiting_on_a_silent_backend_and_loses_nothing(
    redis_url: str, own_redis: Callable[..., RedisServer], workers: list[WorkerProcess]
) -> None:
    results_server = own_redis()
    env = {"AIOTQ_RESULT_BACKEND": results_server.url()}
    worker = WorkerProcess(redis_url, "-c", "5", env=env).ready()
    workers.append(worker)
    producer = build(redis_url, results_server.url())
    results_server.pause()  # accepts nothing, answers nothing: every store waits it out
    results = [producer.send_task("e2e.add", (i, 3)) for i in range(10)]
    worker.wait_for_log(r"e2e\.add\[.*\] succeeded", times=1)
    worker.signal(signal.SIGTERM)  # warm: waits for the publisher...
    worker.wait_for_log("warm shutdown")
    worker.signal(signal.SIGTERM)  # ...until the second signal
    assert worker.wait(timeout=15) == 0
    broker = redis.Redis.from_url(redis_url)
    assert broker.xlen(STREAM) == 10  # none acknowledged: they are all still there
    results_server.resume()
    workers.append(WorkerProcess(redis_url, env=env).ready())  # takes them over once idle
    assert [r.get(timeout=90) for r in results] == [i + 3 for i in range(10)]
    producer.close()
    broker.close()


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


class Lock:
    """Another process holding a SQLite file's write lock until released."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
    return int(count)


@pytest.fixture
def sqlite_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("E2E_SQLITE_BUSY_S", "0.2")
    producer = build(f"sqlite:///{tmp_path}/broker.db", f"sqlite:///{tmp_path}/results.db")
    yield producer
    producer.close()


def test_a_locked_sqlite_result_file_acks_nothing_without_its_result(
    sqlite_app: App, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    env = {"AIOTQ_RESULT_BACKEND": f"sqlite:///{tmp_path}/results.db", "E2E_SQLITE_BUSY_S": "0.2"}
    worker = WorkerProcess(f"sqlite:///{tmp_path}/broker.db", "-c", "10", env=env).ready()
    workers.append(worker)
    lock = Lock(tmp_path / "results.db")
    try:
        results = [sqlite_app.send_task("e2e.add", (i, 2)) for i in range(30)]
        worker.wait_for_log("could not store results.*locked by another process", timeout=20)
        assert rows(tmp_path / "broker.db") == 30  # an ack deletes the row: none was acked
    finally:
        lock.release()
    assert [r.get(timeout=30) for r in results] == [i + 2 for i in range(30)]
    wait_for(lambda: rows(tmp_path / "broker.db") == 0, timeout=10)
    assert worker.proc.poll() is None


def test_a_locked_sqlite_broker_keeps_the_worker_up_and_the_send_error_clear(
    sqlite_app: App, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    env = {"AIOTQ_RESULT_BACKEND": f"sqlite:///{tmp_path}/results.db", "E2E_SQLITE_BUSY_S": "0.2"}
    worker = WorkerProcess(f"sqlite:///{tmp_path}/broker.db", env=env).ready()
    workers.append(worker)
    running = sqlite_app.send_task("e2e.sleep", (1.5, "through the lock"))
    worker.wait_for_log(r"e2e\.sleep\[.*\] received")
    lock = Lock(tmp_path / "broker.db")
    try:  # its lease renewal (every tick) and the claims meet the lock for a while
        with pytest.raises(BrokerUnavailable, match="broker.db is locked by another process"):
            sqlite_app.send_task("e2e.add", (1, 1))
        worker.wait_for_log("scheduler tick failed.*locked", timeout=10)
    finally:
        lock.release()
    assert running.get(timeout=20) == "through the lock"
    assert sqlite_app.send_task("e2e.add", (2, 2)).get(timeout=20) == 4
    assert worker.proc.poll() is None


def test_a_row_with_broken_headers_is_dead_lettered_and_no_worker_dies_of_it(
    sqlite_app: App, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    env = {"AIOTQ_RESULT_BACKEND": f"sqlite:///{tmp_path}/results.db"}
    workers.append(WorkerProcess(url, env=env).ready())  # makes the file
    with sqlite3.connect(tmp_path / "broker.db") as db:
        db.execute(
            "INSERT INTO messages (queue, priority, due_ms, lease_ms, headers, body)"
            " VALUES ('default', 0, 0, 0, ?, ?)",
            (b"\xff{not json", b"{}"),
        )
    workers[0].wait_for_log("Rejected message .*undecodable broker envelope")
    assert sqlite_app.send_task("e2e.add", (1, 2)).get(timeout=10) == 3
    workers.append(WorkerProcess(url, env=env).ready())  # a restart does not meet it again
    assert sqlite_app.send_task("e2e.add", (3, 4)).get(timeout=10) == 7
    dead = dead_letters(sqlite_app)
    assert len(dead) == 1 and "undecodable broker envelope" in dead[0][1]
    assert all(worker.proc.poll() is None for worker in workers)


def test_the_worker_lives_through_purge_flushdb_and_a_redis_restart(
    redis_url: str, own_redis: Callable[..., RedisServer], workers: list[WorkerProcess]
) -> None:
    server = own_redis()
    worker = WorkerProcess(server.url(), env={"AIOTQ_RESULT_BACKEND": redis_url}).ready()
    workers.append(worker)
    producer = build(server.url(), redis_url)
    assert producer.send_task("e2e.add", (1, 1)).get(timeout=10) == 2
    purge = subprocess.run(
        [sys.executable, "-m", "aiotq", "purge", "-A", "tests.apps:tq", "-f"], cwd=ROOT,
        env={"AIOTQ_BROKER_URL": server.url(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert purge.returncode == 0, purge.stderr
    assert producer.send_task("e2e.add", (2, 2)).get(timeout=10) == 4
    server.client().flushdb()  # the streams and their consumer group are gone
    assert producer.send_task("e2e.add", (3, 3)).get(timeout=15) == 6
    server.restart()  # no persistence: an empty Redis on the same port
    assert producer.send_task("e2e.add", (4, 4)).get(timeout=20) == 8
    assert worker.proc.poll() is None, worker.log
    producer.close()


@pytest.fixture(params=["redis", "sqlite", "amqp"])
def poison_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(broker, results) for the poison test on each broker that outlives a worker."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return url, url
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db", f"sqlite:///{tmp_path}/results.db"
    return request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")


def test_a_task_that_kills_its_worker_is_dead_lettered_and_the_others_complete(
    poison_urls: tuple[str, str], workers: list[WorkerProcess]
) -> None:
    broker_url, results_url = poison_urls
    producer = build(broker_url, results_url)
    poison = producer.send_task("e2e.poison")  # max_deliveries=2
    good = [producer.send_task("e2e.add", (i, i)) for i in range(20)]
    env = {"AIOTQ_RESULT_BACKEND": results_url, "E2E_VISIBILITY_S": "1"}
    deaths = 0
    while True:
        worker = WorkerProcess(broker_url, "-c", "50", env=env)
        workers.append(worker)
        wait_for(lambda w=worker: w.proc.poll() is not None or w.count("delivered 3 times"),  # type: ignore[misc]
                 timeout=30)  # fmt: skip
        if worker.proc.poll() is None:
            break
        deaths += 1
        assert deaths <= 2, f"the worker died {deaths} times: the limit did not hold"
    assert deaths == 2  # its first and second delivery killed a worker; the third is refused
    assert [r.get(timeout=30) for r in good] == [2 * i for i in range(20)]
    with pytest.raises(DeliveryLimitExceeded, match="delivered 3 times without finishing"):
        poison.get(timeout=10)
    dead = dead_letters(producer)
    assert [reason for _, reason in dead if "delivered 3 times" in reason], dead
    assert worker.proc.poll() is None
    producer.close()


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp", "amqp-quorum"])
def broker_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "memory":
        return {"broker": "memory://"}
    if request.param == "sqlite":
        return {"broker": f"sqlite:///{tmp_path}/broker.db"}
    if request.param == "amqp-quorum":  # counted by RabbitMQ itself (x-delivery-count)
        return {"broker": request.getfixturevalue("amqp_url"), "broker_queue_type": "quorum"}
    return {"broker": str(request.getfixturevalue(f"{request.param}_url"))}


async def test_a_message_given_back_forever_is_dead_lettered_at_the_limit(
    broker_settings: dict[str, str],
) -> None:
    app = App("limit", backend="memory://", task_max_deliveries=3, **broker_settings)

    @app.task(name="limit.again")
    async def again() -> None:
        raise Reject("not now", requeue=True)

    async with run_worker(app):
        result = await again.send()
        with pytest.raises(DeliveryLimitExceeded, match="delivered 4 times"):
            await result.get(timeout=20)
    dead = await app.broker.dead_letters("default")
    assert len(dead) == 1 and "delivered 4 times without finishing" in dead[0][1]
    await app.aclose()


async def test_a_result_too_large_for_the_backend_fails_clearly_and_the_worker_goes_on(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(proto_max_bulk_len="1mb")  # Redis drops the connection past it
    app = App("big", broker="memory://", backend=server.url(), result_max_bytes=1_000_000)

    @app.task(name="big.text")
    async def text(n: int) -> str:
        return "x" * n

    async with run_worker(app):
        big = await text.send(2_000_000)
        with pytest.raises(BackendError, match=r"2,000,\d+ bytes encoded, more than result_max"):
            await big.get(timeout=10)
        assert await (await text.send(10)).get(timeout=10) == "x" * 10
    await app.aclose()


async def test_a_result_that_can_never_be_stored_is_never_acked_and_ends_dead_lettered(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis()
    server.client().execute_command("ACL", "SETUSER", "default", "-set")  # SET refused: NOPERM
    app = App("nostore", broker="memory://", backend=server.url(), task_max_deliveries=2)

    @app.task(name="nostore.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with run_worker(app):
        await add.send(1, 2)
        await async_wait_for(lambda: app.broker._dead.get("default"), timeout=10)  # type: ignore[attr-defined]
    [(_, reason)] = await app.broker.dead_letters("default")
    assert "delivered 3 times without finishing" in reason  # came back twice, never acked
    await app.aclose()
