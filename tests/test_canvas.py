"""Canvas: link, chain, group, chord, nesting; on memory, SQLite and Redis, and across
worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiotq import App, GroupResult, chain, chord, group
from aiotq.testing import run_worker

from .apps import build
from .conftest import wait_for
from .workerproc import WorkerProcess


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    backend = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "amqp":  # RabbitMQ carries the messages, Redis keeps the results
        url = request.getfixturevalue("amqp_url")
        backend = request.getfixturevalue("redis_url")
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/canvas.db"
    else:
        url = request.getfixturevalue("redis_url")
    app = build(url, backend)
    async with run_worker(app, concurrency=20):
        yield app
    await app.aclose()


def sig(app: App, name: str, *args: object) -> object:
    return app.tasks[f"e2e.{name}"].s(*args)


async def test_seed_link_gives_4_then_12(app: App) -> None:
    mul = app.tasks["e2e.mul"]
    m = await mul.aapply_async((2, 2), link=mul.s(3))
    assert await m.get(timeout=10) == 4
    [child] = m.children
    assert await child.get(timeout=10) == 12


async def test_link_error_receives_the_failed_id_and_error(app: App) -> None:
    errback = app.tasks["e2e.on_error"].s()
    handle = errback.freeze()
    failed = await app.tasks["e2e.fail"].aapply_async((1,), link_error=errback)
    with pytest.raises(ValueError, match="on purpose"):
        await failed.get(timeout=10)
    assert (
        await handle.get(timeout=10)
        == f"{failed.id} failed: ValueError: failed on purpose with [1]"
    )


async def test_chain_of_three_with_parents(app: App) -> None:
    add, mul = app.tasks["e2e.add"], app.tasks["e2e.mul"]
    result = await (add.s(2, 2) | mul.s(4) | add.s(10)).send()
    assert await result.get(timeout=10) == 26  # (2 + 2) * 4 + 10
    assert await result.parent.get(timeout=1) == 16
    assert await result.parent.parent.get(timeout=1) == 4
    assert result.parent.parent.parent is None
    same = await chain(add.s(1, 1), mul.s(3)).send()
    assert await same.get(timeout=10) == 6


async def test_chain_failure_stops_and_shows_on_the_last_result(app: App) -> None:
    add = app.tasks["e2e.add"]
    result = await chain(add.s(1, 1), sig(app, "fail"), add.s(100)).send()
    with pytest.raises(ValueError, match=r"on purpose with \[2\]"):
        await result.get(timeout=10)
    assert await result.parent.parent.get(timeout=1) == 2


async def test_immutable_signature_ignores_the_parent(app: App) -> None:
    add = app.tasks["e2e.add"]
    result = await (add.s(1, 1) | add.si(5, 5)).send()
    assert await result.get(timeout=10) == 10


async def test_seed_group_of_ten_scans_gives_ten_zeros(app: App) -> None:
    scan = app.tasks["e2e.scan"]
    result = await group(scan.s(i, i) for i in range(10)).send()
    assert isinstance(result, GroupResult) and len(result) == 10
    assert await result.get(timeout=10) == [0] * 10
    assert await result.ready() and await result.successful()
    assert await result.completed_count() == 10
    assert not await result.failed()


async def test_group_results_in_call_order_and_a_failure(app: App) -> None:
    add = app.tasks["e2e.add"]
    result = await group(add.s(i, 0) for i in range(20)).send()
    assert await result.get(timeout=10) == list(range(20))
    mixed = await group(add.s(1, 1), sig(app, "fail")).send()
    with pytest.raises(ValueError):
        await mixed.get(timeout=10)
    assert await mixed.failed() and not await mixed.successful()
    assert await mixed.completed_count() == 1


async def test_chord_sums_its_members(app: App) -> None:
    add, xsum = app.tasks["e2e.add"], app.tasks["e2e.xsum"]
    result = await chord((add.s(i, i) for i in range(10)), xsum.s()).send()
    assert await result.get(timeout=10) == sum(i + i for i in range(10))
    assert isinstance(result.parent, GroupResult)
    assert await result.parent.get(timeout=1) == [i + i for i in range(10)]
    empty = await chord([], xsum.s()).send()
    assert await empty.get(timeout=10) == 0


async def test_chord_member_failure_fails_the_chord_without_the_body(app: App) -> None:
    add, xsum = app.tasks["e2e.add"], app.tasks["e2e.xsum"]
    result = await chord([add.s(1, 1), sig(app, "fail", "x"), add.s(2, 2)], xsum.s()).send()
    with pytest.raises(ValueError, match="on purpose"):
        await result.get(timeout=10)
    assert (await app.backend.get(result.id)) is not None  # the failure, not the body's value


async def test_nesting_group_in_chain_becomes_a_chord_and_chain_in_group(app: App) -> None:
    add, mul, xsum = app.tasks["e2e.add"], app.tasks["e2e.mul"], app.tasks["e2e.xsum"]
    # a group inside a chain: its results feed the next step as a list
    result = await (add.s(1, 1) | group(mul.s(i) for i in range(1, 4)) | xsum.s()).send()
    assert await result.get(timeout=10) == 2 * 1 + 2 * 2 + 2 * 3
    # chains inside a group: each runs its own steps
    grouped = await group(add.s(i, i) | mul.s(10) for i in range(3)).send()
    assert await grouped.get(timeout=10) == [0, 20, 40]
    # a chain ending in a group
    tail = await (add.s(2, 3) | group(mul.s(2), mul.s(3))).send()
    assert await tail.get(timeout=10) == [10, 15]


async def test_options_route_every_member_and_bad_arguments_fail_at_send(app: App) -> None:
    add, mul = app.tasks["e2e.add"], app.tasks["e2e.mul"]
    routed = await group(add.s(1, 1), add.s(2, 2)).aapply_async(queue="elsewhere")
    assert await app.broker.purge("elsewhere") == 2  # both went there, not to default
    await routed.forget()
    with pytest.raises(TypeError, match="too many positional arguments"):
        await (add.s(1, 1) | mul.s(2, 3)).send()  # mul gets the parent's result too


def test_sync_api_from_plain_code(tmp_path: Path) -> None:
    app = build(f"sqlite:///{tmp_path}/sync.db")
    worker = WorkerProcess(f"sqlite:///{tmp_path}/sync.db").ready()
    try:
        scan = app.tasks["e2e.scan"]
        assert group(scan.s(i, i) for i in range(10)).delay().get(timeout=10) == [0] * 10
        mul = app.tasks["e2e.mul"]
        m = mul.apply_async((2, 2), link=mul.s(3))
        assert m.get(timeout=10) == 4 and m.children[0].get(timeout=10) == 12
        assert (mul.s(2, 2) | mul.s(3)).apply_async().get(timeout=10) == 12
        assert chord(mul.s(i, 1) for i in range(3))(app.tasks["e2e.xsum"].s()).get(timeout=10) == 3
    finally:
        worker.stop()
        app.close()


@pytest.fixture
def two_workers(redis_url: str) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(redis_url, "-c", "10") for _ in range(2)]
    for worker in workers:
        worker.ready()
    yield workers
    for worker in workers:
        worker.stop()


def test_seed_chord_of_100_over_two_worker_processes(
    redis_url: str, two_workers: list[WorkerProcess]
) -> None:
    app = build(redis_url)
    try:
        add, xsum = app.tasks["e2e.add"], app.tasks["e2e.xsum"]
        result = chord((add.s(i, 0) for i in range(100)), xsum.s()).apply_async()
        assert result.get(timeout=30) == sum(range(100))

        def ran() -> list[int]:  # the log lines come through reader threads: wait for them
            return [w.count(r"Task e2e\.add\[.*\] succeeded") for w in two_workers]

        wait_for(lambda: sum(ran()) >= 100, timeout=5)
        assert sum(ran()) == 100 and min(ran()) > 0, ran()  # spread over both processes

        def bodies() -> int:
            return sum(w.count(r"Task e2e\.xsum\[.*\] succeeded") for w in two_workers)

        wait_for(lambda: bodies() >= 1, timeout=5)
        assert bodies() == 1  # the body ran exactly once
    finally:
        app.close()
