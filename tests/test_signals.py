"""Celery's signals, sent by the producer and an in-process worker at the right points with
Celery's arguments; async receivers are awaited on the worker's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aiotq import App, Request, Task, TaskRevoked, Worker, signals
from aiotq.testing import run_worker

from .conftest import async_wait_for

Seen = list[tuple[str, Any, dict[str, Any]]]


@pytest.fixture
def seen() -> Iterator[Callable[..., Seen]]:
    """`listen(signal, ...)`: record what each signal sends until the test ends."""
    record: Seen = []
    connected: list[tuple[signals.Signal, Any]] = []

    def listen(*watched: signals.Signal, run_async: bool = False) -> Seen:
        for signal in watched:

            def receiver(sender: Any = None, signal: Any = None, **named: Any) -> None:
                record.append((signal.name, sender, named))

            async def async_receiver(sender: Any = None, signal: Any = None, **named: Any) -> None:
                await asyncio.sleep(0)  # really awaited on the loop
                record.append((signal.name, sender, named))

            fn = async_receiver if run_async else receiver
            signal.connect(fn)
            connected.append((signal, fn))
        return record

    yield listen
    for signal, fn in connected:
        signal.disconnect(fn)


def of(record: Seen, name: str) -> list[tuple[Any, dict[str, Any]]]:
    return [(sender, named) for signal, sender, named in record if signal == name]


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_task_signals_around_success_failure_and_retry(
    seen: Callable[..., Seen], run_async: bool
) -> None:
    app = App("sig", broker="memory://")

    @app.task(name="sig.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="sig.boom")
    def boom() -> None:
        raise ValueError("nope")

    @app.task(name="sig.again", bind=True, max_retries=1, default_retry_delay=0)
    async def again(self: Task) -> str:
        if self.request.retries == 0:
            raise self.retry()
        return "second time"

    record = seen(
        signals.task_received, signals.task_prerun, signals.task_postrun,
        signals.task_success, signals.task_failure, signals.task_retry,
        run_async=run_async,
    )  # fmt: skip
    async with run_worker(app) as worker:
        ok = await add.aapply_async((2, 3), {}, task_id="s-1")
        assert await ok.get(timeout=5) == 5
        assert [name for name, _, _ in record] == [
            "task_received", "task_prerun", "task_success", "task_postrun",
        ]  # fmt: skip
        [(sender, received)] = of(record, "task_received")
        assert sender is worker and isinstance(received["request"], Request)
        assert received["request"].id == "s-1"
        [(sender, prerun)] = of(record, "task_prerun")
        assert sender is add and prerun == {"task_id": "s-1", "task": add, "args": [2, 3],
                                            "kwargs": {}}  # fmt: skip
        assert of(record, "task_success") == [(add, {"result": 5})]
        [(sender, postrun)] = of(record, "task_postrun")
        assert sender is add and postrun["retval"] == 5 and postrun["state"] == "SUCCESS"
        record.clear()

        bad = await boom.aapply_async(task_id="s-2")
        with pytest.raises(ValueError):
            await bad.get(timeout=5)
        [(sender, failure)] = of(record, "task_failure")
        assert sender is boom and failure["task_id"] == "s-2"
        assert isinstance(failure["exception"], ValueError)
        assert failure["args"] == [] and failure["kwargs"] == {}
        assert failure["traceback"] is not None and "ValueError" in failure["einfo"].traceback
        assert of(record, "task_postrun")[0][1]["state"] == "FAILURE"
        record.clear()

        retried = await again.send()
        assert await retried.get(timeout=5) == "second time"
        [(sender, retry)] = of(record, "task_retry")
        assert sender is again and retry["request"].id == retried.id
        assert "retry" in str(retry["reason"]) and retry["einfo"].exception is retry["reason"]
        states = [named["state"] for _, named in of(record, "task_postrun")]
        assert states == ["RETRY", "SUCCESS"]


async def test_task_revoked_for_a_revoked_an_expired_and_a_terminated_task(
    seen: Callable[..., Seen],
) -> None:
    app = App("rev", broker="memory://")
    started = asyncio.Event()

    @app.task(name="rev.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="rev.forever")
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    record = seen(signals.task_revoked)
    expired = await add.aapply_async((1, 1), expires=0.01)
    await asyncio.sleep(0.05)
    async with run_worker(app):
        with pytest.raises(TaskRevoked):
            await expired.get(timeout=5)
        [(sender, named)] = of(record, "task_revoked")
        assert sender is add and named["expired"] is True and named["terminated"] is False
        assert named["request"].id == expired.id
        record.clear()

        running = await forever.send()
        await asyncio.wait_for(started.wait(), 5)
        await running.revoke(terminate=True)
        with pytest.raises(TaskRevoked):
            await running.get(timeout=5)
        await async_wait_for(lambda: of(record, "task_revoked"))
        [(sender, named)] = of(record, "task_revoked")
        assert sender is forever and named["terminated"] is True and named["signum"] == 15
        record.clear()

        revoked = await add.aapply_async((1, 2), countdown=0.3)
        await revoked.revoke()
        with pytest.raises(TaskRevoked):  # stored at once by the revoke
            await revoked.get(timeout=5)
        await async_wait_for(lambda: of(record, "task_revoked"))  # when the worker meets it
        [(sender, named)] = of(record, "task_revoked")
        assert named["expired"] is False and named["terminated"] is False


async def test_publish_signals_carry_celerys_arguments_and_added_headers_travel(
    seen: Callable[..., Seen],
) -> None:
    app = App("pub", broker="memory://")

    @app.task(name="pub.headers", bind=True)
    async def headers(self: Task) -> dict[str, Any]:
        return dict(self.request.headers)

    def stamp(sender: Any = None, headers: dict[str, Any] | None = None, **named: Any) -> None:
        assert headers is not None
        headers["x-tenant"] = "acme"  # a receiver may add headers (Celery's tracing idiom)

    record = seen(signals.before_task_publish, signals.after_task_publish)
    signals.before_task_publish.connect(stamp, sender="pub.headers")
    try:
        async with run_worker(app):
            result = await headers.aapply_async(task_id="p-1", queue="default")
            assert await result.get(timeout=5) == {"x-tenant": "acme"}
    finally:
        signals.before_task_publish.disconnect(stamp, sender="pub.headers")
    [(sender, before)] = of(record, "before_task_publish")
    assert sender == "pub.headers"
    assert before["headers"]["id"] == "p-1" and before["headers"]["task"] == "pub.headers"
    assert before["body"][0] == [] and before["body"][1] == {}
    assert before["routing_key"] == "default"
    assert {"exchange", "properties", "declare", "retry_policy"} <= before.keys()
    [(sender, after)] = of(record, "after_task_publish")
    assert sender == "pub.headers" and after["routing_key"] == "default"
    assert {"body", "exchange"} <= after.keys()


async def test_worker_signals_have_the_worker_as_sender(seen: Callable[..., Seen]) -> None:
    app = App("w", broker="memory://")
    record = seen(signals.worker_init, signals.worker_ready, signals.worker_shutdown,
                  run_async=True)  # fmt: skip
    async with run_worker(app) as worker:
        assert [name for name, _, _ in record] == ["worker_init", "worker_ready"]
    assert [name for name, _, _ in record] == ["worker_init", "worker_ready", "worker_shutdown"]
    assert all(sender is worker for _, sender, _ in record)
    assert isinstance(worker, Worker)


async def test_a_receiver_for_one_task_name_sees_only_that_task(
    seen: Callable[..., Seen],
) -> None:
    app = App("one", broker="memory://")
    mine: list[str] = []

    @app.task(name="one.a")
    async def a() -> None: ...

    @app.task(name="one.b")
    async def b() -> None: ...

    def only_a(sender: Any = None, **named: Any) -> None:
        mine.append(sender.name)

    signals.task_postrun.connect(only_a, sender="one.a")
    try:
        async with run_worker(app):
            await (await a.send()).get(timeout=5)
            await (await b.send()).get(timeout=5)
    finally:
        signals.task_postrun.disconnect(only_a, sender="one.a")
    assert mine == ["one.a"]
