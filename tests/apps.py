"""Tasks shared by the in-process and the subprocess tests.

`build(...)` registers the same names on any App, so a test's producer app and a worker
subprocess (`aiotq worker tests.apps:tq`, broker from AIOTQ_BROKER_URL) agree on them.
Process-executor functions are module-level: a child process finds them by name.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from aiotq import App, SoftTimeLimitExceeded


def cpu(n: int) -> int:
    return sum(i * i for i in range(n))


def pid_of_child() -> int:
    return os.getpid()


def sleep_in_child(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def boom_in_child() -> None:
    raise ValueError("bad input in a child")


def build(broker: str | None = None, backend: str | None = None) -> App:
    # the kill tests shorten the visibility timeout through the harness's own variable
    visibility_s = float(os.environ.get("E2E_VISIBILITY_S", "60"))
    app = App("e2e", broker=broker, backend=backend, broker_visibility_timeout_s=visibility_s)
    if os.environ.get("E2E_HEARTBEAT_S"):  # the presence tests' short heartbeat
        app.conf.worker_heartbeat_s = float(os.environ["E2E_HEARTBEAT_S"])
    if os.environ.get("E2E_SQLITE_BUSY_S"):  # the lock tests lower the busy timeout
        app.conf.sqlite_busy_timeout_s = float(os.environ["E2E_SQLITE_BUSY_S"])
    if os.environ.get("E2E_BEAT_EVERY_S"):  # the beat tests' schedule, for `worker -B`
        app.conf.beat_schedule = {
            "tick": {"task": "e2e.now", "schedule": float(os.environ["E2E_BEAT_EVERY_S"])}
        }
        app.conf.beat_lease_s = float(os.environ.get("E2E_BEAT_LEASE_S", "10"))

    @app.task(name="e2e.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="e2e.xsum")
    async def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="e2e.scan")
    async def scan(x: int, y: int) -> int:
        return x - y

    @app.task(name="e2e.fail")
    async def fail(*args: object) -> None:
        raise ValueError(f"failed on purpose with {list(args)}")

    @app.task(name="e2e.on_error")
    async def on_error(task_id: str, error: str) -> str:
        return f"{task_id} failed: {error}"

    @app.task(name="e2e.poison", max_deliveries=2)
    async def poison() -> None:
        """A task that kills its worker, as a segfault in a C extension or an OOM kill does."""
        os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="e2e.now")
    async def now() -> float:
        return time.time()

    @app.task(name="e2e.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="e2e.sleep")
    async def sleep(seconds: float, tag: str = "") -> str:
        await asyncio.sleep(seconds)
        return tag

    @app.task(name="e2e.sync_sleep")
    def sync_sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def divide(countdown: float):  # type: ignore[no-untyped-def]
        """The tutorial's div: retry on ZeroDivisionError, `countdown` apart, 3 times."""

        def div(self, x: float, y: float) -> float:  # type: ignore[no-untyped-def]
            try:
                return x / y
            except ZeroDivisionError as exc:
                raise self.retry(exc=exc, countdown=countdown, max_retries=3) from None

        return div

    app.task(name="e2e.div", bind=True)(divide(3))
    app.task(name="e2e.fast_div", bind=True)(divide(0.05))

    @app.task(name="e2e.whoami", bind=True)
    async def whoami(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
        r = self.request
        return {
            "id": r.id, "task": r.task, "args": r.args, "kwargs": r.kwargs, "retries": r.retries,
            "queue": r.delivery_info["queue"], "hostname": r.hostname, "parent_id": r.parent_id,
            "root_id": r.root_id, "pid": os.getpid(),
        }  # fmt: skip

    @app.task(name="e2e.hard_limit", time_limit=0.3)
    async def hard_limit() -> None:
        await asyncio.sleep(10)

    @app.task(name="e2e.soft_limit", soft_time_limit=0.2, time_limit=5)
    async def soft_limit() -> str:
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @app.task(name="e2e.thread_limit", time_limit=0.3)
    def thread_limit() -> None:
        time.sleep(1.0)

    app.task(name="e2e.cpu", executor="process")(cpu)
    app.task(name="e2e.child_pid", executor="process")(pid_of_child)
    app.task(name="e2e.child_sleep", executor="process", time_limit=0.5)(sleep_in_child)
    app.task(name="e2e.child_boom", executor="process")(boom_in_child)
    app.task(name="e2e.child_long", executor="process")(sleep_in_child)  # no time limit
    return app


tq = build()
