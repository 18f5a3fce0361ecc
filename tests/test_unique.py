"""Unique jobs: one queued or running task per key, on SQLite and Redis (broker and results on
the same store), with real in-process workers. No fixed sleeps: every wait has a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aiotq import App, ConfigurationError, Reject, Task
from aiotq.testing import run_worker
from aiotq.unique import lease_name


@dataclass
class Calls:
    """What the tasks of one app saw (the worker runs in this process)."""

    runs: list[Any] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # flaky stops retrying


def build(url: str, calls: Calls | None = None) -> App:
    calls = calls or Calls()
    app = App("uniq", broker=url, backend=url)

    @app.task(name="uniq.work", unique=True)
    async def work(x: int, tag: str = "", **extra: Any) -> int:
        calls.runs.append(("work", x))
        return x

    @app.task(name="uniq.by_args", unique="args")
    async def by_args(x: int, request_id: str = "") -> int:
        return x

    @app.task(name="uniq.by_user", unique=lambda args, kwargs: kwargs.get("user"))
    async def by_user(user: str | None = None, n: int = 0) -> int:
        return n

    @app.task(name="uniq.plain")
    async def plain(x: int) -> int:
        return x

    @app.task(name="uniq.flaky", unique=True, bind=True, max_retries=500)
    async def flaky(self: Task[Any, Any], x: int) -> int:
        calls.runs.append(("flaky", x))
        if not calls.done.is_set():
            raise self.retry(countdown=0.02)
        return x

    @app.task(name="uniq.slow_retry", unique=True, unique_ttl=0.3, bind=True)
    async def slow_retry(self: Task[Any, Any], x: int) -> int:
        calls.runs.append(("slow_retry", x))
        if self.request.retries == 0:
            raise self.retry(countdown=0.6)  # longer than its unique_ttl
        await calls.done.wait()
        return x

    @app.task(name="uniq.replaced", unique=True, bind=True)
    async def replaced(self: Task[Any, Any], x: int) -> int:
        raise self.replace(plain.s(x + 1))

    @app.task(name="uniq.fails", unique=True, max_retries=0)
    async def fails(x: int) -> int:
        raise ValueError(f"no {x}")

    @app.task(name="uniq.rejects", unique=True)
    async def rejects(x: int) -> int:
        raise Reject("not wanted", requeue=False)

    @app.task(name="uniq.short", unique=True, unique_ttl=0.3)
    async def short(x: int) -> int:
        return x

    return app


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/unique.db"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def app(url: str) -> AsyncIterator[App]:
    app = build(url)
    yield app
    await app.aclose()


async def ready(app: App) -> int:
    stats = await app.broker.queue_stats("default")
    return stats.ready or 0


def key(app: App, name: str, *args: Any, **kwargs: Any) -> str:
    task = app.tasks[name]
    found = task.unique_key_of(args, kwargs)
    assert found is not None
    return lease_name(name, found)


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Await `condition()` (a coroutine function) until it is truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not met within {timeout}s: {condition}"
        await asyncio.sleep(0.02)


async def test_concurrent_sends_from_two_producers_publish_one_message(url: str) -> None:
    calls = Calls()
    one, two = build(url, calls), build(url)
    try:
        results = await asyncio.gather(
            *((one if i % 2 else two).tasks["uniq.work"].send(7) for i in range(100))
        )
        assert len({r.id for r in results}) == 1
        assert await ready(one) == 1
        async with run_worker(one):
            assert await results[0].get(timeout=10) == 7
            assert await results[57].get(timeout=10) == 7  # any of them: the same task
        assert calls.runs == [("work", 7)]
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_finished_task_frees_its_key(app: App) -> None:
    work, coordinator = app.tasks["uniq.work"], app.coordinator
    assert coordinator is not None
    first = await work.send(1)
    async with run_worker(app):
        assert await first.get(timeout=10) == 1
        again = await work.send(1)  # right after get(): a new task, not the finished one
        assert again.id != first.id
        assert await again.get(timeout=10) == 1
        name = key(app, "uniq.work", 1)
        # the worker gives the key up itself, after storing the result
        await until(lambda: _free(coordinator, name))


async def _free(coordinator: Any, name: str) -> bool:
    return await coordinator.holder(name) is None


async def test_a_final_failure_and_a_dead_letter_free_the_key(app: App) -> None:
    coordinator = app.coordinator
    fails, rejects = app.tasks["uniq.fails"], app.tasks["uniq.rejects"]
    failed, rejected = await fails.send(1), await rejects.send(1)
    assert (await fails.send(1)).id == failed.id  # queued: the same task
    assert (await rejects.send(1)).id == rejected.id
    async with run_worker(app):
        with pytest.raises(ValueError, match="no 1"):
            await failed.get(timeout=10)
        await until(lambda: _free(coordinator, key(app, "uniq.fails", 1)))
        assert (await fails.send(1)).id != failed.id
        await until(lambda: _free(coordinator, key(app, "uniq.rejects", 1)))

        async def dead_lettered() -> bool:  # the key is given up just before the settle
            return (await app.broker.queue_stats("default")).dead == 1

        await until(dead_lettered)
        assert (await rejects.send(1)).id != rejected.id  # nothing stored: freed by the worker


async def test_a_replacement_carries_the_key_and_frees_it(app: App) -> None:
    replaced, coordinator = app.tasks["uniq.replaced"], app.coordinator
    first = await replaced.send(1)
    async with run_worker(app):
        assert await first.get(timeout=10) == 2  # the replacement's value, under this id
        await until(lambda: _free(coordinator, key(app, "uniq.replaced", 1)))


async def test_a_retrying_task_keeps_its_key(url: str) -> None:
    calls = Calls()
    app = build(url, calls)
    flaky = app.tasks["uniq.flaky"]
    try:
        async with run_worker(app):
            first = await flaky.send(3)

            async def retried_twice() -> bool:
                return calls.runs.count(("flaky", 3)) >= 2

            await until(retried_twice)
            for _ in range(5):  # between and during its retries: the same task
                assert (await flaky.send(3)).id == first.id
            calls.done.set()
            assert await first.get(timeout=10) == 3
            assert first.retries >= 1
            assert (await flaky.send(3)).id != first.id
    finally:
        await app.aclose()


async def test_a_retry_renews_the_key_past_its_countdown(url: str) -> None:
    calls = Calls()
    app = build(url, calls)
    slow_retry = app.tasks["uniq.slow_retry"]  # unique_ttl 0.3 s, retried 0.6 s later
    try:
        async with run_worker(app):
            first = await slow_retry.send(4)
            sent, deadline = 0, time.monotonic() + 10
            while calls.runs.count(("slow_retry", 4)) < 2:  # until it runs again, held
                assert time.monotonic() < deadline, "the retry never ran"
                assert (await slow_retry.send(4)).id == first.id
                sent += 1
                await asyncio.sleep(0.02)
            assert sent > 10  # the retry's countdown was waited through
            calls.done.set()
            assert await first.get(timeout=10) == 4
    finally:
        await app.aclose()


async def test_the_ttl_frees_a_key_no_worker_finishes(app: App) -> None:
    short = app.tasks["uniq.short"]  # unique_ttl=0.3; no worker runs it
    first = await short.send(1)
    assert (await short.send(1)).id == first.id
    ids: list[str] = []

    async def lapsed() -> bool:
        ids.append((await short.send(1)).id)
        return ids[-1] != first.id

    await until(lapsed, timeout=5)
    assert await ready(app) == 2  # the first, and the one after its key lapsed


async def test_true_args_and_callable_keys(app: App) -> None:
    work, by_args, by_user = (app.tasks[n] for n in ("uniq.work", "uniq.by_args", "uniq.by_user"))
    # True: name + args + kwargs (keyword order does not matter)
    a = await work.send(1, tag="a", p=1, q=2)
    assert (await work.send(1, tag="a", q=2, p=1)).id == a.id
    assert (await work.send(1, tag="b", p=1, q=2)).id != a.id
    # "args": name + positional args only
    b = await by_args.send(1, request_id="r1")
    assert (await by_args.send(1, request_id="r2")).id == b.id
    assert (await by_args.send(2, request_id="r1")).id != b.id
    # a callable: its key; None sends without one
    c = await by_user.send(user="u1", n=1)
    assert (await by_user.send(user="u1", n=2)).id == c.id
    assert (await by_user.send(user="u2", n=1)).id != c.id
    assert (await by_user.send(n=1)).id != (await by_user.send(n=1)).id
    # unique_key= on any task; keys are per task
    plain = app.tasks["uniq.plain"]
    d = await plain.aapply_async((1,), unique_key="k")
    assert (await plain.aapply_async((2,), unique_key="k")).id == d.id
    assert (await by_args.aapply_async((9,), unique_key="k")).id != d.id
    assert (await app.asend_task("uniq.plain", (3,), unique_key="k")).id == d.id
    # a task_id fixed by the caller (as canvases do) is not deduplicated by unique=
    assert (
        await work.aapply_async((1,), {"tag": "a", "p": 1, "q": 2}, task_id="mine")
    ).id == "mine"
    assert await ready(app) == 11
    with pytest.raises(TypeError, match="unique_key of uniq.plain must be a non-empty str"):
        await plain.aapply_async((1,), unique_key="")


async def test_send_many_honours_unique_keys(app: App) -> None:
    work = app.tasks["uniq.work"]
    queued = await work.send(5)
    results = await work.send_many([((1,), {}), ((2,), {}), ((1,), {}), ((5,), {})])
    ids = [r.id for r in results]
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    assert ids[3] == queued.id
    assert await ready(app) == 3  # 5, then 1 and 2
    assert (await work.send(2)).id == ids[1]
    with pytest.raises(TypeError, match="one unique_key would make every call the same job"):
        await app.tasks["uniq.plain"].send_many([((1,), {})], unique_key="k")
    async with run_worker(app):
        assert [await r.get(timeout=10) for r in results] == [1, 2, 1, 5]


async def test_rpc_results_refuse_unique_jobs_at_send() -> None:
    # rpc:// keeps nothing, so it has no coordinator to hold a key; refused before connecting
    app = App("uniq-rpc", broker="amqp://guest:guest@127.0.0.1:1/", backend="rpc://")

    @app.task(name="uniq.rpc", unique=True)
    async def job(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match=r"uniq.rpc is a unique job, which needs a"):
        await job.send(1)
    with pytest.raises(ConfigurationError, match="rpc://"):
        await app.asend_task("uniq.other", unique_key="k")
    await app.aclose()


async def test_eager_mode_runs_unique_jobs_without_a_key() -> None:
    app = App("uniq-eager", broker="memory://", backend="memory://", task_always_eager=True)

    @app.task(name="uniq.eager", unique=True)
    async def job(x: int) -> int:
        return x * 2

    assert await (await job.send(2)).get() == 4
    assert await (await job.aapply_async((3,), unique_key="k")).get() == 6
    assert await (await job.aapply_async((3,), unique_key="k")).get() == 6
    await app.aclose()


def test_bad_unique_options_name_the_task() -> None:
    app = App("uniq-bad", broker="memory://", backend="memory://")
    with pytest.raises(ConfigurationError, match="task bad: unique is True"):
        app.task(name="bad", unique="kwargs")(lambda: None)
    with pytest.raises(ConfigurationError, match="task bad2: unique_ttl is seconds"):
        app.task(name="bad2", unique=True, unique_ttl=0)(lambda: None)
