"""The worker's behaviour, in-process on the memory broker (the same worker code)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from aiotq import App, AsyncResult, NotRegistered, TaskError, TaskRevoked, TimeLimitExceeded
from aiotq.testing import run_worker

from .apps import build
from .conftest import async_wait_for


@pytest.fixture
def app() -> App:
    return build("memory://")


async def test_async_sync_and_process_tasks(app: App) -> None:
    async with run_worker(app, processes=1):
        add = await app.asend_task("e2e.add", (2, 3))
        mul = await app.asend_task("e2e.mul", (3, 4))
        cpu = await app.asend_task("e2e.cpu", (100,))
        child = await app.asend_task("e2e.child_pid")
        assert await add.get(timeout=5) == 5
        assert await mul.get(timeout=5) == 12
        assert await cpu.get(timeout=30) == sum(i * i for i in range(100))
        assert await child.get(timeout=30) != os.getpid()


async def test_concurrency_bounds_tasks_in_flight() -> None:
    app = App("c", broker="memory://")
    state = {"now": 0, "max": 0}

    @app.task
    async def tracked() -> None:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1

    async with run_worker(app, concurrency=5):
        results = [await tracked.send() for _ in range(30)]
        for r in results:
            await r.get(timeout=10)
    assert state["max"] == 5


async def test_retry_seed_scenario_runs_four_times_then_fails(app: App) -> None:
    async with run_worker(app):
        result = await app.asend_task("e2e.fast_div", (2, 0))
        with pytest.raises(ZeroDivisionError):
            await result.get(timeout=10)
        await result.refresh()
        assert result.retries == 3
        assert result.state == "FAILURE"
        ok = await app.asend_task("e2e.fast_div", (2, 1))
        assert await ok.get(timeout=5) == 2.0


async def test_autoretry_for_with_backoff() -> None:
    app = App("auto", broker="memory://")
    attempts: list[float] = []

    @app.task(
        autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=0.05, retry_jitter=False
    )
    async def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("gateway down")
        return "sent"

    @app.task(autoretry_for=(ConnectionError,), max_retries=1, default_retry_delay=0.01)
    async def hopeless() -> None:
        raise ConnectionError("always down")

    async with run_worker(app):
        assert await (await flaky.send()).get(timeout=5) == "sent"
        with pytest.raises(ConnectionError, match="always down"):
            await (await hopeless.send()).get(timeout=5)
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.045  # backoff 0.05, then 0.1
    assert attempts[2] - attempts[1] >= 0.095


async def test_countdown_and_eta_delay_the_run(app: App) -> None:
    async with run_worker(app):
        sent = time.monotonic()
        result = await app.asend_task("e2e.add", (1, 1), countdown=0.3)
        assert await result.get(timeout=5) == 2
        assert time.monotonic() - sent >= 0.28


async def test_expired_task_is_not_run_and_ends_revoked(app: App) -> None:
    result = await app.asend_task("e2e.add", (1, 1), expires=0.05)
    await asyncio.sleep(0.1)  # let it expire before any worker exists
    async with run_worker(app):
        with pytest.raises(TaskRevoked, match="expired"):
            await result.get(timeout=5)
        assert result.state == "REVOKED"


async def test_time_limits(app: App) -> None:
    async with run_worker(app, processes=1):
        hard = await app.asend_task("e2e.hard_limit")
        soft = await app.asend_task("e2e.soft_limit")
        thread = await app.asend_task("e2e.thread_limit")
        child = await app.asend_task("e2e.child_sleep", (10,))
        with pytest.raises(TimeLimitExceeded, match=r"0\.3s"):
            await hard.get(timeout=5)
        assert await soft.get(timeout=5) == "cleaned up"
        with pytest.raises(TimeLimitExceeded):
            await thread.get(timeout=5)
        with pytest.raises(TimeLimitExceeded, match=r"0\.5s"):
            await child.get(timeout=30)
        # the pool was replaced: process tasks keep working
        assert await (await app.asend_task("e2e.cpu", (10,))).get(timeout=30) == 285


async def test_bound_task_sees_its_request(app: App) -> None:
    async with run_worker(app, queues=["default", "other"]):
        result = await app.asend_task("e2e.whoami", queue="other", task_id="fixed-id")
        info = await result.get(timeout=5)
    assert info["id"] == "fixed-id"
    assert info["task"] == "e2e.whoami"
    assert info["queue"] == "other"
    assert info["retries"] == 0
    assert info["root_id"] == "fixed-id"
    assert str(info["hostname"]).startswith("aiotq@")


async def test_rate_limit_delays_never_drops() -> None:
    app = App("rl", broker="memory://")
    starts: list[float] = []

    @app.task(rate_limit="20/s")
    async def limited() -> None:
        starts.append(time.monotonic())

    async with run_worker(app):
        results = [await limited.send() for _ in range(6)]
        for r in results:
            await r.get(timeout=5)
    assert len(starts) == 6
    assert starts[-1] - starts[0] >= 5 * 0.05 * 0.95


async def test_unknown_task_is_dead_lettered_and_its_result_says_so(app: App) -> None:
    async with run_worker(app):
        result = await app.asend_task("e2e.no_such_task", (1,))
        with pytest.raises(NotRegistered, match="no_such_task"):
            await result.get(timeout=5)
        assert await (await app.asend_task("e2e.add", (1, 2))).get(timeout=5) == 3
    [(_, reason)] = await app.broker.dead_letters("default")
    assert "unknown task 'e2e.no_such_task'" in reason


async def test_malformed_message_is_dead_lettered_and_worker_lives(app: App) -> None:
    async with run_worker(app):
        await app.broker.publish(
            "default", b"\xff\x00garbage", {"content-type": "application/json"}
        )
        await app.broker.publish(
            "default", b"x", {"content-type": "application/x-python-serialize"}
        )
        assert await (await app.asend_task("e2e.add", (2, 2))).get(timeout=5) == 4
        dead = await async_wait_for(lambda: app.broker._dead.get("default"))  # type: ignore[attr-defined]
    reasons = [reason for _, reason in dead]
    assert any("undecodable json" in r for r in reasons)
    assert any("unknown content type" in r for r in reasons)


async def test_link_callback_gets_the_parent_result(app: App) -> None:
    mul = app.tasks["e2e.mul"]
    async with run_worker(app):
        parent = await mul.aapply_async((2, 2), link=mul.s(3))
        assert await parent.get(timeout=5) == 4
        children = await async_wait_for(lambda: app.backend._data.keys() - {parent.id})  # type: ignore[attr-defined]
        [child_id] = children
        assert await AsyncResult(child_id, app).get(timeout=5) == 12


async def test_result_api(app: App) -> None:
    async with run_worker(app):
        ok = await app.asend_task("e2e.add", (20, 22))
        assert await ok.get(timeout=5) == 42
        assert await ok.ready() and await ok.successful() and not await ok.failed()
        assert ok.state == ok.status == "SUCCESS"
        assert ok.result == 42
        assert ok.date_done is not None
        bad = await app.asend_task("e2e.child_boom")
        error = await bad.get(timeout=30, propagate=False)
        assert isinstance(error, ValueError) and "bad input in a child" in str(error)
        assert await bad.failed()
        assert "boom_in_child" in (bad.traceback or "")
        await ok.forget()
        assert await ok.refresh() is None
    never = AsyncResult("never-sent", app)
    with pytest.raises(TimeoutError, match="not ready after 0.1s"):
        await never.get(timeout=0.1)


async def test_exception_type_not_importable_becomes_task_error() -> None:
    app = App("x", broker="memory://")

    @app.task
    async def fails() -> None:
        class LocalError(Exception):
            pass

        raise LocalError("only the worker knows this type")

    async with run_worker(app):
        with pytest.raises(TaskError, match="LocalError: only the worker") as info:
            await (await fails.send()).get(timeout=5)
    assert info.value.traceback and "fails" in info.value.traceback


async def test_unserialisable_result_fails_with_a_clear_error() -> None:
    app = App("x", broker="memory://")

    @app.task
    async def returns_object() -> object:
        return object()

    async with run_worker(app):
        with pytest.raises(
            TypeError, match=r"result of .*returns_object \(object\) cannot be stored"
        ):
            await (await returns_object.send()).get(timeout=5)


async def test_ignore_result_and_early_ack() -> None:
    app = App("x", broker="memory://")
    ran = asyncio.Event()

    @app.task(ignore_result=True, acks_late=False)
    async def fire_and_forget() -> int:
        ran.set()
        return 1

    async with run_worker(app):
        result = await fire_and_forget.send()
        await asyncio.wait_for(ran.wait(), 5)
        with pytest.raises(TimeoutError):
            await result.get(timeout=0.2)
    assert result.state == "PENDING"


async def test_warm_stop_finishes_in_flight_and_cold_stop_returns_messages() -> None:
    app = App("x", broker="memory://")
    started = asyncio.Event()

    @app.task
    async def slow(seconds: float) -> float:
        started.set()
        await asyncio.sleep(seconds)
        return seconds

    async with run_worker(app) as worker:
        warm = await slow.send(0.3)
        await asyncio.wait_for(started.wait(), 5)
        worker.stop()
    assert await warm.get(timeout=1) == 0.3  # finished during the warm stop

    started.clear()
    async with run_worker(app, shutdown_timeout_s=30) as worker:
        cold = await slow.send(60)
        await asyncio.wait_for(started.wait(), 5)
        worker.stop()
        worker.stop()  # a second stop is cold
    assert app.broker.pending_count("default") == 1  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):
        await cold.get(timeout=0.1)


async def test_banner_names_everything_and_masks_passwords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build("memory://user:hunter2@localhost/0")
    with caplog.at_level("INFO", logger="aiotq.worker"):
        async with run_worker(app, queues=["sms", "default"], concurrency=7):
            pass
    banner = caplog.text
    assert "hunter2" not in banner
    assert "memory://user:**@localhost/0" in banner
    assert "concurrency: 7" in banner and ".> sms" in banner and "e2e.add" in banner
