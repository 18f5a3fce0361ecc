"""States of a task's own (update_state, progress), AsyncResult.info / .name / result_extended,
Celery's get() arguments and GroupResult.join: a real worker (in-process) and real backends
(the suite's redis-server, a SQLite file)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aiotq import App, AsyncResult, GroupResult, Task
from aiotq.testing import run_worker

# A process task finds its task by module and name: this app exists in the child too, and
# reaches the same SQLite file through AIOTQ_RESULT_BACKEND (set by the test, inherited).
child_app = App("states-child", broker="memory://")


@child_app.task(bind=True, executor="process", name="states.progress_in_child")
def progress_in_child(self: Task, marks: str) -> str:
    for step in (1, 2, 3):
        self.update_state(state="PROGRESS", meta={"current": step, "pid": os.getpid()})
        deadline = time.monotonic() + 20
        while not Path(marks, f"go-{step}").exists():  # the test saw this step
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {step} was not seen")
            time.sleep(0.01)
    return "child done"


@pytest.fixture(params=["redis", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/results.db"


async def state_becomes(
    result: AsyncResult[Any], state: str, info: Any, limit_s: float = 10
) -> None:
    """Poll as a progress bar would (the backend is read afresh each time)."""
    deadline = time.monotonic() + limit_s
    while True:
        await result.refresh()
        if result.state == state and result.info == info:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"state {result.state} / {result.info!r}, wanted {state} / {info!r}"
            )
        await asyncio.sleep(0.01)


async def test_async_task_reports_progress_then_success(backend_url: str) -> None:
    app = App("progress", broker="memory://", backend=backend_url)
    steps = [asyncio.Event() for _ in range(3)]

    @app.task(bind=True, name="progress.report")
    async def report(self: Task, total: int) -> str:
        for step in range(1, total + 1):
            meta = {"current": step, "total": total}
            if step == 2:
                self.update_state(state="PROGRESS", meta=meta)  # Celery's call, not awaited
            else:
                await self.aupdate_state(state="PROGRESS", meta=meta)
            await steps[step - 1].wait()
        return "done"

    async with run_worker(app):
        result = await report.send(3)
        messages: list[dict[str, Any]] = []
        waiting = asyncio.ensure_future(result.get(timeout=20, on_message=messages.append))
        for step in (1, 2, 3):
            await state_becomes(result, "PROGRESS", {"current": step, "total": 3})
            assert result.result == {"current": step, "total": 3}  # Celery: result is meta too
            assert not await result.ready()
            assert not waiting.done()  # get() waits through a state of the task's own
            steps[step - 1].set()
        assert await waiting == "done"
        await result.refresh()
    assert result.state == "SUCCESS" and result.info == "done"
    assert messages[-1]["status"] == "SUCCESS" and messages[-1]["result"] == "done"
    progress = [m["result"]["current"] for m in messages[:-1]]
    assert progress == sorted(progress) and set(progress) <= {1, 2, 3}
    assert all(m["status"] == "PROGRESS" for m in messages[:-1])


async def test_thread_task_update_state_blocks_only_its_thread(backend_url: str) -> None:
    app = App("progress-thread", broker="memory://", backend=backend_url)
    steps = [threading.Event() for _ in range(3)]

    @app.task(bind=True, name="progress.thread")
    def crunch(self: Task) -> int:
        for step in (1, 2, 3):
            self.update_state(state="CRUNCHING", meta={"done": step})
            if not steps[step - 1].wait(20):
                raise TimeoutError(f"step {step} was not seen")
        return 3

    async with run_worker(app):
        result = await crunch.send()
        for step in (1, 2, 3):
            await state_becomes(result, "CRUNCHING", {"done": step})
            steps[step - 1].set()
        assert await result.get(timeout=20) == 3


async def test_process_task_update_state_from_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/results.db"
    monkeypatch.setenv("AIOTQ_RESULT_BACKEND", url)
    async with run_worker(child_app, processes=1):
        result = await progress_in_child.send(str(tmp_path))
        for step in (1, 2, 3):
            deadline = time.monotonic() + 30
            while True:
                await result.refresh()
                if result.state == "PROGRESS" and result.info["current"] == step:
                    break
                assert time.monotonic() < deadline, f"no PROGRESS {step}: {result.state}"
                await asyncio.sleep(0.02)
            assert result.info["pid"] != os.getpid()  # stored by the child itself
            await asyncio.to_thread(Path(tmp_path, f"go-{step}").touch)
        assert await result.get(timeout=30) == "child done"


async def test_update_state_needs_a_state_and_encodable_meta() -> None:
    app = App("bad-state", broker="memory://")

    @app.task(bind=True)
    async def careless(self: Task, what: str) -> None:
        if what == "no-state":
            await self.aupdate_state(meta={"x": 1})
        else:
            await self.aupdate_state(state="PROGRESS", meta={"x": object()})

    async with run_worker(app):
        with pytest.raises(ValueError, match="needs a state"):
            await (await careless.send("no-state")).get(timeout=5)
        with pytest.raises(TypeError, match="meta of .*cannot be stored as json"):
            await (await careless.send("bad-meta")).get(timeout=5)
    with pytest.raises(ValueError, match="outside a running task needs task_id="):
        await careless.aupdate_state(state="PROGRESS")


# -- what a result shows ---------------------------------------------------------------------


async def test_result_extended_stores_the_call_and_where_it_ran(backend_url: str) -> None:
    app = App("ext", broker="memory://", backend=backend_url, result_extended=True)

    @app.task(name="ext.add")
    async def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="ext.fail")
    async def fail(reason: str) -> None:
        raise ValueError(reason)

    async with run_worker(app, queues=["default", "math"], hostname="w1@test"):
        result = await add.aapply_async((2,), {"b": 3}, queue="math")
        assert await result.get(timeout=5) == 5
        reader = AsyncResult(result.id, app)  # a fresh handle knows only the stored record
        await reader.refresh()
        assert (reader.name, reader.args, reader.kwargs) == ("ext.add", [2], {"b": 3})
        assert (reader.worker, reader.queue) == ("w1@test", "math")
        failed = await fail.send("why")
        assert isinstance(await failed.get(timeout=5, propagate=False), ValueError)
        assert (failed.args, failed.worker) == (["why"], "w1@test")
        assert isinstance(failed.info, ValueError)

    plain = App("plain", broker="memory://", backend=backend_url)

    @plain.task(name="plain.add")
    async def plain_add(a: int) -> int:
        return a

    async with run_worker(plain):
        result = await plain_add.send(1)
        assert await result.get(timeout=5) == 1
        assert result.name == "plain.add"  # the name is always stored
        assert (result.args, result.kwargs, result.worker, result.queue) == (None,) * 4


async def test_get_takes_celerys_arguments() -> None:
    app = App("get", broker="memory://")
    gate = asyncio.Event()

    @app.task(name="get.slow")
    async def slow(x: int) -> int:
        await gate.wait()
        return x

    @app.task(name="get.boom")
    async def boom() -> None:
        raise KeyError("k")

    async with run_worker(app):
        result = await slow.send(7)
        called: list[tuple[str, Any]] = []
        ticks: list[float] = []
        asyncio.get_running_loop().call_later(0.2, gate.set)
        value = await result.get(
            timeout=5, interval=0.05, no_ack=True, follow_parents=True,
            disable_sync_subtasks=False, callback=lambda i, v: called.append((i, v)),
            on_interval=lambda: ticks.append(time.monotonic()),
        )  # fmt: skip
        assert value == 7 and called == [(result.id, 7)]
        assert len(ticks) >= 2  # every interval while it waited
        failed = await boom.send()
        error = await failed.get(timeout=5, propagate=False)
        assert isinstance(error, KeyError)
        assert isinstance(await failed.get(timeout=5, PROPAGATE_STATES=()), KeyError)
        with pytest.raises(KeyError):
            await failed.get(timeout=5)
        with pytest.raises(TypeError, match="unexpected keyword argument 'timout'"):
            result.get(timout=5)


async def test_group_result_join_and_join_native() -> None:
    app = App("join", broker="memory://")

    @app.task(name="join.square")
    async def square(x: int) -> int:
        return x * x

    @app.task(name="join.boom")
    async def boom() -> None:
        raise ValueError("member failed")

    async with run_worker(app):
        members = [await square.send(i) for i in range(4)]
        group = GroupResult("g-1", members, app)
        assert await group.join(timeout=5, propagate=True, interval=0.1) == [0, 1, 4, 9]
        assert await group.join_native(timeout=5) == [0, 1, 4, 9]
        seen: list[tuple[str, int]] = []
        assert await group.join(timeout=5, callback=lambda i, v: seen.append((i, v))) == []
        assert seen == [(m.id, i * i) for i, m in enumerate(members)]
        mixed = GroupResult("g-2", [members[0], await boom.send()], app)
        with pytest.raises(ValueError, match="member failed"):
            await mixed.join(timeout=5)
        values = await mixed.join(timeout=5, propagate=False)
        assert values[0] == 0 and isinstance(values[1], ValueError)


def test_sync_get_and_state_from_sync_code(tmp_path: Path) -> None:
    """From sync code (no loop here) the same calls block and the properties fetch."""
    app = App("sync", broker="memory://", backend=f"sqlite:///{tmp_path}/r.db")

    @app.task(bind=True, name="sync.report")
    async def report(self: Task) -> str:
        await self.aupdate_state(state="PROGRESS", meta={"at": 1})
        await asyncio.sleep(0.3)
        return "ok"

    async def work() -> None:
        async with run_worker(app):
            await asyncio.to_thread(check)

    def check() -> None:
        result = report.delay()
        deadline = time.monotonic() + 10
        while result.state != "PROGRESS":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert result.info == {"at": 1}
        assert result.get(timeout=10, interval=0.1) == "ok"
        assert result.state == "SUCCESS"

    asyncio.run(work())
    app.close()
