"""Task classes of your own (base=, app.Task), their handlers, task_annotations, and the
declaration-time checks; in-process workers on the memory broker."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest

from aiotq import App, ConfigurationError, ExceptionInfo, Task
from aiotq.testing import run_worker


def crunch_in_child(n: int) -> int:
    """A process task (module-level: the child imports it by name)."""
    if n < 0:
        raise ValueError("negative in a child")
    return n * 2


class Recording(Task):
    """Every handler records its arguments, the thread it ran on and the worker's pid."""

    calls: list[tuple[Any, ...]]

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("before_start", task_id, list(args), dict(kwargs)))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("on_success", retval, task_id, threading.current_thread().name))

    async def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        self.calls.append(("on_failure", exc, task_id, einfo, os.getpid()))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo
    ) -> None:
        self.calls.append(("on_retry", exc, self.request.retries))

    async def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", status, retval))


def names(calls: list[tuple[Any, ...]]) -> list[str]:
    return [call[0] for call in calls]


async def test_handlers_run_with_celerys_arguments_in_order() -> None:
    app = App("h", broker="memory://")
    calls: list[tuple[Any, ...]] = []

    class Mine(Recording):
        pass

    Mine.calls = calls

    @app.task(base=Mine)
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(base=Mine)
    def divide(a: int, b: int) -> float:
        return a / b

    async with run_worker(app):
        result = await add.aapply_async((2, 3), task_id="ok-1")
        assert await result.get(timeout=5) == 5
        assert names(calls) == ["before_start", "on_success", "after_return"]
        assert calls[0] == ("before_start", "ok-1", [2, 3], {})
        assert calls[1][1:3] == (5, "ok-1")
        assert calls[1][3].startswith("aiotq-task")  # a sync handler never runs on the loop
        assert calls[2] == ("after_return", "SUCCESS", 5)
        calls.clear()

        failed = await divide.aapply_async((1, 0), task_id="bad-1")
        with pytest.raises(ZeroDivisionError):
            await failed.get(timeout=5)
    assert names(calls) == ["before_start", "on_failure", "after_return"]
    _, exc, task_id, einfo, pid = calls[1]
    assert isinstance(exc, ZeroDivisionError) and task_id == "bad-1"
    assert einfo.exception is exc and einfo.type is ZeroDivisionError
    assert "ZeroDivisionError" in einfo.traceback and "divide" in einfo.traceback
    assert pid == os.getpid()
    assert calls[2][1] == "FAILURE" and calls[2][2] is exc


async def test_on_retry_then_on_failure_and_no_after_return_for_a_retry() -> None:
    app = App("r", broker="memory://")
    calls: list[tuple[Any, ...]] = []

    class Mine(Recording):
        pass

    Mine.calls = calls

    @app.task(base=Mine, bind=True, max_retries=1, default_retry_delay=0)
    async def flaky(self: Task) -> None:
        raise self.retry(exc=ConnectionError("down"))

    @app.task(base=Mine, autoretry_for=(KeyError,), max_retries=1, default_retry_delay=0)
    async def auto() -> None:
        raise KeyError("missing")

    async with run_worker(app):
        with pytest.raises(ConnectionError):
            await (await flaky.send()).get(timeout=5)
        assert [c for c in names(calls) if c != "before_start"] == [
            "on_retry", "on_failure", "after_return",
        ]  # fmt: skip
        retry = next(c for c in calls if c[0] == "on_retry")
        assert isinstance(retry[1], ConnectionError) and retry[2] == 0
        calls.clear()
        with pytest.raises(KeyError):
            await (await auto.send()).get(timeout=5)
        assert [c for c in names(calls) if c != "before_start"] == [
            "on_retry", "on_failure", "after_return",
        ]  # fmt: skip


async def test_before_start_failing_fails_the_task() -> None:
    app = App("b", broker="memory://")
    ran: list[bool] = []

    class NeedsLock(Task):
        async def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            raise RuntimeError("lock unavailable")

    @app.task(base=NeedsLock)
    async def guarded() -> None:
        ran.append(True)

    async with run_worker(app):
        with pytest.raises(RuntimeError, match="lock unavailable"):
            await (await guarded.send()).get(timeout=5)
    assert ran == []


async def test_a_handler_that_raises_is_logged_and_the_result_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("x", broker="memory://")

    class Broken(Task):
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            raise RuntimeError("metrics down")

        async def after_return(self, *args: Any) -> None:
            raise RuntimeError("after_return down")

    @app.task(base=Broken)
    async def answer() -> int:
        return 42

    with caplog.at_level(logging.ERROR, logger="aiotq.worker"):
        async with run_worker(app):
            result = await answer.send()
            assert await result.get(timeout=5) == 42
            assert result.state == "SUCCESS"
    assert "on_success handler of task" in caplog.text and "metrics down" in caplog.text
    assert "after_return handler" in caplog.text


async def test_process_task_handlers_run_in_the_worker() -> None:
    app = App("p", broker="memory://")
    calls: list[tuple[Any, ...]] = []

    class Mine(Recording):
        pass

    Mine.calls = calls
    crunch = app.task(base=Mine, executor="process", name="p.crunch")(crunch_in_child)

    async with run_worker(app, processes=1):
        assert await (await crunch.send(4)).get(timeout=30) == 8
        with pytest.raises(ValueError, match="negative in a child"):
            await (await crunch.send(-1)).get(timeout=30)
    failure = next(c for c in calls if c[0] == "on_failure")
    exc, einfo, pid = failure[1], failure[3], failure[4]
    assert isinstance(exc, ValueError)  # rebuilt from the child's failure
    assert "crunch_in_child" in einfo.traceback  # the child's stack
    assert pid == os.getpid()


async def test_class_attributes_are_defaults_and_decorator_options_win() -> None:
    app = App("d", broker="memory://")

    class Defaults(app.Task):  # type: ignore[name-defined]
        max_retries = 7
        queue = "slow"
        rate_limit = "5/s"
        acks_late = False
        ignore_result = True
        time_limit = 30.0

    @app.task(base=Defaults)
    async def uses_defaults() -> None: ...

    @app.task(base=Defaults, queue="fast", max_retries=1)
    async def overrides() -> None: ...

    assert isinstance(uses_defaults, Defaults)
    assert (uses_defaults.max_retries, uses_defaults.queue) == (7, "slow")
    assert uses_defaults.rate_per_s == 5.0
    assert uses_defaults.acks_late is False and uses_defaults.ignore_result is True
    assert uses_defaults.time_limit == 30.0
    assert (overrides.max_retries, overrides.queue) == (1, "fast")


class Database:
    connections = 0

    def __init__(self) -> None:
        Database.connections += 1
        self.rows = {1: "one", 2: "two"}


class DatabaseTask(Task):
    """Celery's docs example: a resource made once per task, on first use in the worker."""

    _db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database()
        return self._db


async def test_database_task_keeps_its_resource_across_runs() -> None:
    app = App("db", broker="memory://")

    @app.task(base=DatabaseTask, bind=True)
    def lookup(self: DatabaseTask, key: int) -> str:
        return self.db.rows[key]

    Database.connections = 0
    async with run_worker(app):
        assert await (await lookup.send(1)).get(timeout=5) == "one"
        assert await (await lookup.send(2)).get(timeout=5) == "two"
    assert Database.connections == 1
    assert isinstance(lookup, DatabaseTask)


async def test_app_task_cls_is_the_default_base() -> None:
    class Audited(Task):
        seen: list[str] = []

        async def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            self.seen.append(self.name)

    app = App("a", broker="memory://", task_cls=Audited)
    assert app.Task is Audited

    @app.task(name="a.ping")
    async def ping() -> str:
        return "pong"

    async with run_worker(app):
        assert await (await ping.send()).get(timeout=5) == "pong"
    assert Audited.seen == ["a.ping"]


def test_bad_base_and_bad_options_fail_at_declaration() -> None:
    app = App("bad", broker="memory://")
    with pytest.raises(ConfigurationError, match="subclass of aiotq.Task"):
        app.task(base=dict)(lambda: None)
    with pytest.raises(TypeError, match="unknown option"):

        @app.task(retrys=3)
        async def typo() -> None: ...

    with pytest.raises(ConfigurationError, match="autoretry_for takes exception classes"):

        @app.task(autoretry_for=("ValueError",))
        async def wrong() -> None: ...


def test_soft_time_limit_on_a_sync_task_is_refused() -> None:
    app = App("soft", broker="memory://")
    with pytest.raises(
        ConfigurationError, match=r"task .*blocking: soft_time_limit needs an async"
    ):

        @app.task(soft_time_limit=5)
        def blocking() -> None: ...

    class Soft(Task):
        soft_time_limit = 5.0

    with pytest.raises(ConfigurationError, match="soft_time_limit"):
        app.task(base=Soft, executor="process", name="soft.child")(crunch_in_child)

    @app.task(soft_time_limit=5)  # async: SoftTimeLimitExceeded at an await
    async def fine() -> None: ...

    @app.task
    def sync() -> None: ...

    with pytest.raises(ConfigurationError, match="soft_time_limit needs an async task"):
        sync.apply_async(soft_time_limit=1)


# -- task_annotations ----------------------------------------------------------------------


async def test_task_annotations_by_name_star_list_and_object() -> None:
    failures: list[str] = []

    def on_failure(self: Task, exc: BaseException, task_id: str, *rest: Any) -> None:
        failures.append(f"{self.name}: {exc}")

    class SlowEverything:
        def annotate(self, task: Task) -> dict[str, Any] | None:
            return {"time_limit": 60.0} if task.name.startswith("ann.") else None

    app = App("ann", broker="memory://")
    app.conf.task_annotations = [
        {"ann.add": {"rate_limit": "10/s", "max_retries": 9}},
        {"*": {"on_failure": on_failure, "max_retries": 2}},
        SlowEverything(),
    ]

    @app.task(name="ann.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="ann.boom")
    async def boom() -> None:
        raise ValueError("annotated")

    async with run_worker(app):  # finalize applies them
        assert add.rate_per_s == 10.0 and add.max_retries == 9  # the task's own entry wins
        assert add.time_limit is None  # only the first entry that names the task applies
        assert boom.max_retries == 2 and boom.time_limit == 60.0  # '*', then the object's
        with pytest.raises(ValueError):
            await (await boom.send()).get(timeout=5)

        @app.task(name="ann.late")  # registered after finalize: annotated at once
        async def late() -> None: ...

        assert late.max_retries == 2
    assert failures == ["ann.boom: annotated"]


def test_bad_task_annotations_fail_at_finalize_in_one_line() -> None:
    app = App("bad", broker="memory://", task_annotations={"x.y": {"rate_limit": "lots"}})

    @app.task(name="x.y")
    async def xy() -> None: ...

    with pytest.raises(ConfigurationError, match=r"x\.y.*rate") as info:
        app.finalize()
    assert "\n" not in str(info.value)

    other = App("bad2", broker="memory://", task_annotations={"*": {"retires": 1}})
    with pytest.raises(ConfigurationError, match="unknown task option 'retires'"):
        other.finalize()

    shape = App("bad3", broker="memory://", task_annotations=42)
    with pytest.raises(ConfigurationError, match="task_annotations: expected a dict"):
        shape.finalize()
