"""rate_limit_scope="global": one task's starts across every worker of the app, through the
coordinator's `reserve` (GCRA slots): the contract on each coordinator, the limiter in
process, and three real worker processes on one Redis and on one SQLite file.

The worker subprocesses run this module's `tq` (`aiotq worker tests.test_global_rate:tq`),
its scope from RATE_SCOPE, broker and results from the environment.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiotq import App, ConfigurationError
from aiotq.backends.memory import MemoryBackend
from aiotq.backends.redis import RedisBackend
from aiotq.backends.sqlite import SqliteBackend
from aiotq.testing import run_worker
from aiotq.worker.limits import GlobalRateLimiter

from .servers import RedisServer
from .workerproc import ROOT, WorkerProcess

RATE = 20.0  # rate.tick's rate_limit
TASKS = 80
APP = "tests.test_global_rate:tq"


def build(broker: str | None = None, backend: str | None = None) -> App:
    scope = os.environ.get("RATE_SCOPE", "worker")
    app = App("rate", broker=broker, backend=backend, rate_limit_scope=scope)

    @app.task(name="rate.tick", rate_limit=f"{RATE:g}/s")
    async def tick(index: int) -> tuple[int, float, int]:
        return index, time.time(), os.getpid()  # the start, as this worker saw it

    return app


tq = build()


def rate_of(starts: list[float]) -> float:
    """Starts per second from the first to the last."""
    return (len(starts) - 1) / (max(starts) - min(starts))


# -- the contract: Coordinator.reserve on each store ------------------------------------------
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


@pytest.mark.both_loops
async def test_reserve_spaces_slots_up_to_the_horizon(coordinator: Any) -> None:
    key = f"rate-{uuid.uuid4().hex[:8]}"
    assert await coordinator.reserve(key, 0.1, 1, 1.0) == (1, 0.0)  # idle: at once
    granted, wait_s = await coordinator.reserve(key, 0.1, 3, 1.0)  # a batch, after that one
    assert granted == 3 and 0.05 < wait_s <= 0.1
    granted, wait_s = await coordinator.reserve(key, 0.1, 50, 1.0)  # only up to the horizon
    assert 5 <= granted <= 7 and 0.35 < wait_s <= 0.4
    granted, wait_s = await coordinator.reserve(key, 0.1, 1, 1.0)  # full: when to ask again
    assert granted == 0 and 0.0 <= wait_s <= 0.1
    assert (await coordinator.reserve(f"{key}-other", 0.1, 1, 1.0)) == (1, 0.0)  # per key


@pytest.mark.both_loops
async def test_concurrent_reservations_never_share_a_slot(coordinator: Any) -> None:
    # slots of 0.2 s (2 starts at 10/s): an answer's arrival jitters by tens of ms on a busy
    # machine, which must stay well inside a slot for its measured start to say which it is
    key, interval = f"rate-{uuid.uuid4().hex[:8]}", 0.1

    async def ask() -> tuple[int, float]:
        granted, wait_s = await coordinator.reserve(key, interval, 2, 10.0)
        return granted, time.monotonic() + wait_s  # each answer's own "now"

    answers = await asyncio.gather(*(ask() for _ in range(12)))
    assert all(granted == 2 for granted, _ in answers)
    firsts = sorted(at for _, at in answers)
    gaps = [b - a for a, b in itertools.pairwise(firsts)]
    # each batch after the one before: two sharing a slot would show a gap near 0 and cut a
    # whole slot from the span
    assert min(gaps) >= 2 * interval * 0.5
    assert firsts[-1] - firsts[0] >= (len(firsts) - 1) * 2 * interval * 0.95


# -- the limiter in process ------------------------------------------------------------------
class CountingMemory(MemoryBackend):
    """The memory coordinator, counting its round trips."""

    asks = 0

    async def reserve(
        self, key: str, interval_s: float, count: int, horizon_s: float
    ) -> tuple[int, float]:
        self.asks += 1
        return await super().reserve(key, interval_s, count, horizon_s)


@pytest.mark.both_loops
async def test_global_limiter_spaces_starts_and_batches_at_high_rates() -> None:
    backend = CountingMemory()
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def start(limiter: GlobalRateLimiter) -> None:
        await limiter.wait()
        starts.append(loop.time())

    two = [GlobalRateLimiter(backend, "t", 50.0) for _ in range(2)]  # two "workers"
    await asyncio.gather(*(start(two[i % 2]) for i in range(20)))
    assert rate_of(starts) == pytest.approx(50.0, rel=0.1)
    starts.clear()
    backend.asks = 0
    fast = GlobalRateLimiter(backend, "fast", 1000.0)
    await asyncio.gather(*(start(fast) for _ in range(200)))
    assert rate_of(starts) <= 1000.0 * 1.2
    assert backend.asks <= 12  # batches grow to 100 ms of the rate: not one ask per start


async def test_retune_applies_to_the_starts_already_waiting() -> None:
    limiter = GlobalRateLimiter(MemoryBackend(), "t", 2.0)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def start() -> None:
        await limiter.wait()
        starts.append(loop.time())

    waiting = [asyncio.create_task(start()) for _ in range(12)]
    await asyncio.sleep(0)  # all queued: one started, one sleeps to its slot 0.5 s on
    limiter.retune(50.0)  # as `control rate_limit` does
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert rate_of(starts[2:]) == pytest.approx(50.0, rel=0.1)  # not 2/s: 5 s more


@pytest.mark.both_loops
async def test_coordinator_away_means_the_worker_limit_logged_once(
    own_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_redis()
    backend = RedisBackend(server.url(), connect_timeout_s=0.5)
    limiter = GlobalRateLimiter(backend, "t", 20.0, local_for_s=0.2)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(limiter.wait(), 5)
    assert server.client().exists("aiotq:rate:t")  # shared: the slot is in Redis
    server.kill()
    began = loop.time()
    with caplog.at_level(logging.WARNING, "aiotq.worker"):
        for _ in range(10):
            await asyncio.wait_for(limiter.wait(), 5)  # never stuck, never dropped
        assert loop.time() - began >= 9 * 0.05 * 0.95  # still limited, in this worker
        server.restart()  # empty: no key, no cached script
        deadline = loop.time() + 10
        while "shared by the workers again" not in caplog.text:
            assert loop.time() < deadline, caplog.text
            await asyncio.wait_for(limiter.wait(), 5)
    away = [r for r in caplog.records if "coordinator is unreachable" in r.getMessage()]
    assert len(away) == 1  # once per outage, though asked again every 0.2 s
    assert server.client().exists("aiotq:rate:t")
    await backend.aclose()


async def test_global_scope_in_one_process_with_memory() -> None:
    app = App("rl", broker="memory://", rate_limit_scope="global")
    starts: list[float] = []

    @app.task(rate_limit="20/s")
    async def limited() -> None:
        starts.append(time.monotonic())

    async with run_worker(app):
        results = [await limited.send() for _ in range(10)]
        for result in results:
            await result.get(timeout=5)
    assert len(starts) == 10 and rate_of(starts) == pytest.approx(20.0, rel=0.1)


# -- three worker processes on one Redis and on one SQLite file ------------------------------
@dataclass
class Setup:
    url: str

    def env(self, scope: str) -> dict[str, str]:
        return {"AIOTQ_RESULT_BACKEND": self.url, "RATE_SCOPE": scope}


@pytest.fixture(params=["redis", "sqlite"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    if request.param == "sqlite":
        return Setup(f"sqlite:///{tmp_path}/aiotq.db")
    return Setup(str(request.getfixturevalue("redis_url")))


@pytest.fixture
def workers(setup: Setup) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_three(setup: Setup, workers: list[WorkerProcess], scope: str) -> None:
    for n in range(3):  # started together, then each waited for
        worker = WorkerProcess(
            setup.url, "-n", f"w{n}@here", "-c", "4", env=setup.env(scope), app=APP
        )
        workers.append(worker)
    for worker in workers:
        worker.ready()


async def ticks(setup: Setup, count: int) -> list[tuple[int, float, int]]:
    producer = build(setup.url, setup.url)
    try:
        results = [await producer.asend_task("rate.tick", (i,)) for i in range(count)]
        return [tuple(await r.get(timeout=30)) for r in results]
    finally:
        await producer.aclose()


def ran_once_each(workers: list[WorkerProcess], count: int) -> bool:
    return sum(w.count(r"rate\.tick\[.*\] received") for w in workers) == count


async def test_global_rate_is_shared_by_three_workers(
    setup: Setup, workers: list[WorkerProcess]
) -> None:
    start_three(setup, workers, "global")
    done = await ticks(setup, TASKS)
    starts = [at for _, at, _ in done]
    assert sorted(i for i, _, _ in done) == list(range(TASKS))
    assert len({pid for _, _, pid in done}) == 3  # all three took part
    measured = rate_of(starts)
    print(f"global, 3 workers: {measured:.2f} starts/s (limit {RATE:g}/s)")
    assert measured == pytest.approx(RATE, rel=0.1)
    assert ran_once_each(workers, TASKS)


async def test_worker_scope_is_per_worker(setup: Setup, workers: list[WorkerProcess]) -> None:
    start_three(setup, workers, "worker")
    done = await ticks(setup, TASKS)
    measured = rate_of([at for _, at, _ in done])
    print(f"worker scope, 3 workers: {measured:.2f} starts/s (limit {RATE:g}/s each)")
    assert measured > 2 * RATE  # about 3x: each worker has the whole rate
    assert ran_once_each(workers, TASKS)


async def test_control_rate_limit_changes_the_shared_rate(
    setup: Setup, workers: list[WorkerProcess]
) -> None:
    start_three(setup, workers, "global")
    command = [sys.executable, "-m", "aiotq", "control", "rate_limit", "rate.tick", "40/s",
               "-A", APP]  # fmt: skip
    env = {**os.environ, "AIOTQ_BROKER_URL": setup.url, "AIOTQ_RESULT_BACKEND": setup.url}
    changed = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=30
    )
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.count("new rate limit set successfully") == 3
    done = await ticks(setup, TASKS)
    measured = rate_of([at for _, at, _ in done])
    print(f"global after `control rate_limit 40/s`: {measured:.2f} starts/s")
    assert measured == pytest.approx(40.0, rel=0.1)


async def test_a_task_of_its_own_scope_shares_its_rate_across_two_workers() -> None:
    """`@app.task(rate_limit_scope="global")` on an app whose setting is per worker: the
    task's starts are spaced across both workers (per worker, two would start up to 40/s)."""
    app = App("rl-task", broker="memory://")
    shared: list[float] = []

    @app.task(rate_limit="20/s", rate_limit_scope="global")
    async def limited() -> None:
        shared.append(time.monotonic())

    async with run_worker(app), run_worker(app):
        results = [await limited.send() for _ in range(16)]
        for result in results:
            await result.get(timeout=10)
    assert len(shared) == 16 and rate_of(shared) == pytest.approx(20.0, rel=0.1)
    with pytest.raises(ConfigurationError, match="rate_limit_scope is 'worker' or 'global'"):
        app.task(name="bad", rate_limit_scope="everywhere")(lambda: None)
