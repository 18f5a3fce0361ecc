"""Running here and now (task.apply, task_always_eager), @shared_task, and Django's
on-commit sends (delay_on_commit / apply_async_on_commit)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from aiotq import (
    App,
    ConfigurationError,
    EagerResult,
    NotRegistered,
    Task,
    chain,
    chord,
    group,
    shared,
    shared_task,
    signals,
)
from aiotq.testing import run_worker


@pytest.fixture
def library() -> Iterator[dict[str, Any]]:
    """A "library" module's shared tasks, declared before the test's App exists; forgotten
    afterwards, so the Apps of later tests do not all carry them (a shared task is
    registered on every App created after it, as in Celery)."""
    declared = list(shared._declared)

    @shared_task
    def library_double(x: int) -> int:
        return 2 * x

    @shared_task(bind=True, name="library.whoami", max_retries=4)
    async def library_whoami(self: Task) -> dict[str, Any]:
        return {"name": self.name, "id": self.request.id, "max_retries": self.max_retries}

    yield {"double": library_double, "whoami": library_whoami}
    shared._declared[:] = declared


@pytest.fixture(autouse=True)
def _forget_shared_tasks() -> Iterator[None]:
    declared = list(shared._declared)
    yield
    shared._declared[:] = declared


# -- eager mode ----------------------------------------------------------------------------


def test_always_eager_runs_at_send_and_returns_a_ready_result() -> None:
    app = App("eager", broker="memory://", task_always_eager=True)
    ran: list[str] = []

    @app.task
    def add(a: int, b: int) -> int:
        ran.append("add")
        return a + b

    @app.task(bind=True)
    async def hello(self: Task, name: str) -> str:
        assert self.request.is_eager and not self.request.called_directly
        return f"hello {name} from {self.request.id}"

    result = add.delay(2, 3)
    assert ran == ["add"]  # already run, no worker anywhere
    assert isinstance(result, EagerResult)
    assert result.ready() and result.successful() and result.state == "SUCCESS"
    assert result.get() == 5 and result.result == result.info == 5
    async_result = hello.apply_async(("ada",), task_id="fixed")
    assert async_result.get(timeout=1) == "hello ada from fixed"
    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)  # the same checks as a real send
    with pytest.raises(TypeError, match="unknown option"):
        add.apply_async((1, 2), countdwn=3)


def test_eager_failures_are_kept_or_raised_per_task_eager_propagates() -> None:
    app = App("eager-fail", broker="memory://", task_always_eager=True)

    @app.task
    def boom() -> None:
        raise ValueError("eager boom")

    result = boom.delay()
    assert result.ready() and result.failed() and result.state == "FAILURE"
    assert isinstance(result.result, ValueError)
    assert "eager boom" in (result.traceback or "")
    with pytest.raises(ValueError, match="eager boom"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)

    loud = App("eager-loud", broker="memory://", task_always_eager=True,
               task_eager_propagates=True)  # fmt: skip

    @loud.task
    def boom2() -> None:
        raise ValueError("raised at once")

    with pytest.raises(ValueError, match="raised at once"):
        boom2.delay()


def test_always_eager_runs_canvas_here_and_now() -> None:
    """Celery's task_always_eager runs whole workflows at send: signatures, chains, groups,
    chords (a nested one too), links and errbacks, with no broker or worker anywhere."""
    app = App("eager-canvas", broker="memory://", task_always_eager=True)
    ran: list[str] = []

    @app.task
    def add(x: int, y: int) -> int:
        ran.append(f"add{x},{y}")
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    def boom(x: int) -> None:
        raise ValueError(f"no {x}")

    @app.task
    def noted(*args: Any) -> None:
        ran.append(f"noted{args!r}")

    assert add.s(1, 2).delay().get() == 3
    assert chain(add.s(1, 2), add.s(10), add.s(100)).apply_async().get() == 113
    assert (add.s(1, 1) | add.s(5)).delay().get() == 7
    assert group(add.s(1, 1), add.s(2, 2)).apply_async().get() == [2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async().get() == 6
    nested = chord([chain(add.s(1, 1), add.s(1)), group(add.s(2, 2), add.s(3, 3))], tsum.si([7]))
    assert nested.apply_async().get() == 7  # an immutable body ignores the header's results
    ran.clear()
    failed = chain(add.s(1, 1), boom.s(), add.s(1)).apply_async()
    assert failed.state == "FAILURE" and isinstance(failed.result, ValueError)
    assert ran == ["add1,1"]  # the step after the failure never ran
    linked = add.s(2, 2)
    linked.link(noted.s())
    linked.delay()
    assert ran[-1] == "noted(4,)"
    erring = boom.s(9)
    erring.link_error(noted.s())
    erring.delay()
    assert ran[-1].startswith("noted(") and "no 9" in ran[-1]
    with pytest.raises(ValueError, match="no 5"):
        chord([add.s(1, 1), boom.s(5)], tsum.s()).apply_async().get()
    ghost = app.signature("proj.not_here", (1,))
    with pytest.raises(NotRegistered, match="not registered in this app"):
        ghost.delay()


async def test_always_eager_canvas_in_async_code() -> None:
    app = App("eager-canvas-async", broker="memory://", task_always_eager=True)

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    result = await chain(double.s(3), double.s(), double.s()).send()
    assert isinstance(result, EagerResult) and await result.get() == 24
    assert await (await group(double.s(1), double.s(2)).send()).get() == [2, 4]


async def test_eager_in_async_code_retries_handlers_and_signals() -> None:
    app = App("eager-async", broker="memory://", task_always_eager=True)
    calls: list[str] = []

    class Noted(Task):
        def on_retry(self, exc: BaseException, *rest: Any) -> None:
            calls.append(f"retry:{exc}")

        async def on_success(self, retval: Any, *rest: Any) -> None:
            calls.append(f"success:{retval}")

    @app.task(base=Noted, bind=True, max_retries=3, default_retry_delay=60)
    async def flaky(self: Task, attempts: int) -> int:
        if self.request.retries < attempts:
            raise self.retry(exc=ConnectionError(f"try {self.request.retries}"))
        return self.request.retries

    def postrun(sender: Any = None, state: str = "", **named: Any) -> None:
        calls.append(f"postrun:{state}")

    signals.task_postrun.connect(postrun)
    try:
        result = await flaky.send(2)  # the countdown is not waited for, as in Celery
    finally:
        signals.task_postrun.disconnect(postrun)
    assert await result.get() == 2
    assert await result.ready()
    assert calls == [
        "retry:try 0", "postrun:RETRY", "retry:try 1", "postrun:RETRY",
        "success:2", "postrun:SUCCESS",
    ]  # fmt: skip
    with pytest.raises(ConnectionError):
        await flaky.aapply((5,), throw=True)  # out of retries: the cause is raised


def test_apply_runs_locally_without_eager_mode() -> None:
    app = App("apply", broker="memory://")

    @app.task(autoretry_for=(KeyError,), max_retries=1)
    def lookup(table: dict[str, int], key: str) -> int:
        return table[key]

    assert lookup.apply(({"a": 1}, "a")).get() == 1
    failed = lookup.apply(({}, "a"))
    assert failed.state == "FAILURE" and isinstance(failed.result, KeyError)
    assert failed.retries == 1  # autoretry ran it again once
    with pytest.raises(KeyError):
        lookup.apply(({}, "b"), throw=True)
    app.close()


async def test_aapply_in_async_code() -> None:
    app = App("aapply", broker="memory://")

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    result = await double.aapply((4,))
    assert await result.get() == 8 and await result.successful()


def test_update_state_in_eager_mode_stores_nothing() -> None:
    app = App("eager-state", broker="memory://", task_always_eager=True)

    @app.task(bind=True)
    def report(self: Task) -> str:
        self.update_state(state="PROGRESS", meta={"at": 1})
        return "ok"

    assert report.delay().get() == "ok"
    app.close()


# -- @shared_task --------------------------------------------------------------------------


async def test_shared_task_declared_before_the_app_runs_on_its_worker(
    library: dict[str, Any],
) -> None:
    library_double, library_whoami = library["double"], library["whoami"]
    app = App("lib-user", broker="memory://")
    assert library_double.name in app.tasks and "library.whoami" in app.tasks
    async with run_worker(app):
        assert await (await library_double.send(21)).get(timeout=5) == 42
        info = await (await library_whoami.aapply_async(task_id="w-1")).get(timeout=5)
    assert info == {"name": "library.whoami", "id": "w-1", "max_retries": 4}
    assert library_double(4) == 8  # calling it runs it here
    assert repr(library_double) == f"<@shared_task: {library_double.name}>"


async def test_shared_task_goes_through_the_current_app() -> None:
    first = App("first", broker="memory://")
    second = App("second", broker="memory://")  # the last created is current

    @shared_task(name="lib.late")
    async def late() -> str:  # declared after both exist: registered on both
        return "late"

    assert "lib.late" in first.tasks and "lib.late" in second.tasks
    assert late.producer is second.producer
    first.set_current()
    assert late.producer is first.producer
    async with run_worker(first):
        assert await (await late.send()).get(timeout=5) == "late"
    quiet = App("quiet", broker="memory://", set_as_current=False)
    assert "lib.late" in quiet.tasks
    assert late.producer is first.producer


# -- Django: send after the transaction commits -----------------------------------------

# Run in a process of its own: Django's settings are configured once per process, and the
# Django example's tests configure their own.
DJANGO_SCRIPT = """
from typing import Any
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
)
django.setup()
from django.db import transaction

from aiotq import App, signals

app = App("django", broker="memory://")
sent: list[Any] = []

@app.task(name="dj.notify")
async def notify(user_id: int, text: str = "") -> None: ...

@signals.after_task_publish.connect
def published(sender=None, body=None, **named):
    sent.append((sender, body[0], body[1]))

with transaction.atomic():
    notify.delay_on_commit(1, text="hi")
    notify.apply_async_on_commit((2,), {"text": "there"}, countdown=5)
    assert sent == [], sent  # not yet: the transaction is open
assert sent == [("dj.notify", [1], {"text": "hi"}), ("dj.notify", [2], {"text": "there"})], sent
sent.clear()
try:
    with transaction.atomic():
        notify.delay_on_commit(3)
        raise RuntimeError("rolled back")
except RuntimeError:
    pass
assert sent == [], sent  # never sent
notify.delay_on_commit(4)  # outside a transaction (autocommit): at once
assert sent == [("dj.notify", [4], {})], sent
for call in (lambda: notify.delay_on_commit(), lambda: notify.apply_async_on_commit((1,), countdwn=1)):
    try:
        call()  # checked now, not at the commit
    except TypeError as exc:
        print("refused:", exc)
    else:
        raise AssertionError("not refused")
app.close()
print("ok")
"""


def test_delay_on_commit_sends_only_after_commit() -> None:
    pytest.importorskip("django")
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok"
    assert "missing a required argument" in done.stdout and "unknown option" in done.stdout


def test_on_commit_without_django_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("nodj", broker="memory://")

    @app.task
    def task() -> None: ...

    monkeypatch.setitem(sys.modules, "django.db", None)  # as if Django were not installed
    with pytest.raises(ConfigurationError, match="Django is not installed"):
        task.delay_on_commit()
