"""`aiotq events`: the monitor's state model alone, then the Textual app on a real worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from aiotq import App
from aiotq.exceptions import TaskRevoked
from aiotq.monitor import EventsMonitor, MonitorState
from aiotq.testing import run_worker

T0 = 1_700_000_000.0


def event(type_: str, ts: float, hostname: str = "w1", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "hostname": hostname, "timestamp": ts, "clock": 0, "pid": 1,
            "utcoffset": 0, **fields}  # fmt: skip


def online(
    ts: float, hostname: str = "w1", kind: str = "worker-online", **fields: Any
) -> dict[str, Any]:
    base = {"freq": 2.0, "active": 0, "processed": 0, "loadavg": [0.5, 0.25, 0.125],
            "queues": ["celery"], "concurrency": 4}  # fmt: skip
    return event(kind, ts, hostname, **{**base, **fields})


# -- the state model -------------------------------------------------------------------------
def test_task_lifecycle_gives_each_state() -> None:
    state = MonitorState()
    state.feed(online(T0))
    state.feed(event("task-sent", T0, "producer", uuid="a", name="add", args=[1, 2], kwargs={}))
    assert state.tasks["a"].state == "PENDING" and state.tasks["a"].worker is None
    state.feed(event("task-received", T0 + 1, uuid="a", name="add", args=[1, 2], kwargs={"k": 1}))
    assert state.tasks["a"].state == "RECEIVED"
    state.feed(event("task-started", T0 + 2, uuid="a", name="add"))
    assert state.tasks["a"].state == "STARTED"
    state.feed(event("task-succeeded", T0 + 3, uuid="a", name="add", result=3, runtime=0.5))
    task = state.tasks["a"]
    assert (task.state, task.result, task.runtime, task.worker) == ("SUCCESS", 3, 0.5, "w1")
    assert (task.args, task.kwargs) == ([1, 2], {"k": 1})
    assert (task.sent, task.received, task.started, task.finished) == (T0, T0 + 1, T0 + 2, T0 + 3)

    state.feed(event("task-received", T0, uuid="b", name="boom"))
    state.feed(event("task-retried", T0 + 1, uuid="b", name="boom", exception="E()", retries=1))
    assert (state.tasks["b"].state, state.tasks["b"].retries) == ("RETRY", 1)
    state.feed(event("task-received", T0 + 2, uuid="b", name="boom", retries=1))
    state.feed(event("task-failed", T0 + 3, uuid="b", name="boom", exception="ValueError('x')",
                     traceback="Traceback ...", runtime=0.1))  # fmt: skip
    failed = state.tasks["b"]
    assert (failed.state, failed.exception, failed.traceback) == (
        "FAILURE", "ValueError('x')", "Traceback ...",
    )  # fmt: skip

    state.feed(event("task-rejected", T0, uuid="c", name="x", requeue=False, reason="unknown"))
    assert (state.tasks["c"].state, state.tasks["c"].reason) == ("REJECTED", "unknown")
    state.feed(event("task-revoked", T0, uuid="d", name="slow", terminated=True, signum="SIGTERM"))
    assert state.tasks["d"].state == "REVOKED"
    assert state.totals == {"SUCCESS": 1, "FAILURE": 1, "RETRY": 1, "REVOKED": 1}
    assert [t.uuid for t in state.latest(2)] == ["d", "c"]


def test_a_late_event_does_not_undo_an_outcome() -> None:
    state = MonitorState()
    state.feed(event("task-succeeded", T0 + 5, "w2", uuid="a", name="add", result=1))
    state.feed(event("task-started", T0 + 1, "w1", uuid="a", name="add"))  # an older post
    assert state.tasks["a"].state == "SUCCESS"


def test_tasks_are_bounded_least_recently_updated_first() -> None:
    state = MonitorState(max_tasks=100)
    for i in range(1000):
        state.feed(event("task-received", T0 + i, uuid=f"t{i}", name="add"))
        if i % 10 == 0:  # t0 keeps being updated: it stays
            state.feed(event("task-started", T0 + i, uuid="t0", name="add"))
    assert len(state.tasks) == 100
    assert "t0" in state.tasks and "t1" not in state.tasks and "t999" in state.tasks
    assert [t.uuid for t in state.latest(3)] == ["t999", "t998", "t997"]
    assert len(state.latest(1000)) == 100


def test_worker_goes_offline_after_two_missed_heartbeats() -> None:
    state = MonitorState()
    state.feed(online(T0, freq=2.0))
    worker = state.workers["w1"]
    assert worker.state(T0 + 3.9) == "ONLINE"
    assert worker.state(T0 + 4.1) == "OFFLINE"
    state.feed(online(T0 + 4.0, kind="worker-heartbeat", active=2, processed=7, loadavg=[1, 2, 3]))
    assert worker.state(T0 + 4.1) == "ONLINE"
    assert (worker.active, worker.processed, worker.loadavg) == (2, 7, [1, 2, 3])
    state.feed(event("task-started", T0 + 7, uuid="a", name="add"))  # a sign of life as well
    assert worker.state(T0 + 10.0) == "ONLINE"
    state.feed(online(T0 + 8, kind="worker-offline"))
    assert worker.state(T0 + 8.1) == "OFFLINE"
    state.feed(online(T0 + 9))  # it came back
    assert worker.state(T0 + 9.1) == "ONLINE"


def test_rates_count_outcomes_over_the_window() -> None:
    state = MonitorState(window_s=60.0)
    for i in range(120):
        state.feed(event("task-succeeded", T0 + i / 2, uuid=f"s{i}", name="add"))  # 2 per s
    state.feed(event("task-failed", T0 + 59, uuid="f", name="add", exception="E"))
    rates = state.rates(T0 + 60)
    assert rates["SUCCESS"] == pytest.approx(2.0, rel=0.05)
    assert rates["FAILURE"] == pytest.approx(1 / 60)
    assert rates["RETRY"] == rates["REVOKED"] == 0
    assert state.rates(T0 + 200) == {"SUCCESS": 0, "FAILURE": 0, "RETRY": 0, "REVOKED": 0}
    assert state.totals["SUCCESS"] == 120  # the totals are not windowed

    recent = MonitorState(window_s=60.0)  # a monitor that just started divides by what it saw
    for i in range(10):
        recent.feed(event("task-succeeded", T0 + i / 2, uuid=f"s{i}", name="add"))
    assert recent.rates(T0 + 5)["SUCCESS"] == pytest.approx(2.0)


def test_unknown_and_malformed_events_are_ignored() -> None:
    state = MonitorState()
    state.feed({"no": "type"})
    state.feed(event("task-started", T0))  # no uuid
    state.feed(event("something-else", T0))
    assert not state.tasks and not state.workers


# -- the Textual app on a real worker --------------------------------------------------------
async def until(pilot: Pilot[Any], check: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check.__doc__ or check}")
        await pilot.pause(0.1)


def shown_state(monitor: EventsMonitor, task_id: str) -> str | None:
    table = monitor.tasks_table
    if task_id not in table.rows:
        return None
    return str(table.get_cell(task_id, "state"))


def text_of(monitor: EventsMonitor, selector: str) -> str:
    return str(monitor.query_one(selector, Static).content)


async def select_row(pilot: Pilot[Any], monitor: EventsMonitor, task_id: str) -> None:
    table = monitor.tasks_table
    table.move_cursor(row=table.get_row_index(task_id))
    await pilot.press("enter")
    await until(pilot, lambda: monitor.selected == task_id)


async def test_monitor_shows_a_live_worker_and_terminates_a_task(tmp_path: Path) -> None:
    app = App("mon", broker=f"sqlite:///{tmp_path}/m.db", worker_heartbeat_s=0.2)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    try:
        async with run_worker(app, send_events=True) as worker:
            monitor = EventsMonitor(app, replay=True)
            async with monitor.run_test(size=(160, 50)) as pilot:
                results = [await add.send(20, i) for i in range(3)]
                for i, result in enumerate(results):
                    assert await result.get(timeout=5) == 20 + i
                ids = [r.id for r in results]
                await until(pilot, lambda: all(shown_state(monitor, i) == "SUCCESS" for i in ids))
                await until(pilot, lambda: worker.hostname in monitor.workers_table.rows)
                assert list(monitor.tasks_table.rows)[:3] == ids[::-1]  # newest first
                assert str(monitor.tasks_table.get_cell(ids[0], "name")).endswith("add")
                assert "succeeded" in text_of(monitor, "#rates")

                await select_row(pilot, monitor, ids[1])
                detail = text_of(monitor, "#detail")
                assert "[20, 1]" in detail and "result    21" in detail and ids[1] in detail

                running = await slow.send(30)
                await until(pilot, lambda: shown_state(monitor, running.id) == "STARTED")
                await select_row(pilot, monitor, running.id)
                await pilot.press("t")
                with pytest.raises(TaskRevoked):
                    await running.get(timeout=5)
                record = await running.refresh()
                assert record is not None and record.state == "REVOKED"
                await until(pilot, lambda: shown_state(monitor, running.id) == "REVOKED")
                assert f"terminated {running.id}" in monitor.status
                await pilot.press("q")
            assert monitor.return_code == 0
    finally:
        await app.aclose()


async def test_broker_errors_show_on_the_status_line() -> None:
    app = App("bad", broker="nosuch://nowhere")
    monitor = EventsMonitor(app, replay=True)
    async with monitor.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: "unknown broker scheme" in monitor.status)
        assert "ConfigurationError" in text_of(monitor, "#status")
        await pilot.press("r")  # no task: said, not raised
        assert monitor.status == "no task selected"
        monitor.select("not-a-task")
        await pilot.press("t")
        await until(pilot, lambda: "failed" in monitor.status)
        assert monitor.is_running  # the UI is still up


async def test_event_reader_warnings_go_to_the_status_line(tmp_path: Path) -> None:
    """receive() retries a broker outage itself and logs it: the monitor shows that line."""
    app = App("quiet", broker=f"sqlite:///{tmp_path}/q.db")
    monitor = EventsMonitor(app, replay=False)
    try:
        async with monitor.run_test(size=(120, 30)) as pilot:
            logging.getLogger("aiotq.events").warning("cannot read events (%s); retrying", "down")
            await until(pilot, lambda: "cannot read events (down)" in monitor.status)
            assert "events: cannot read events" in text_of(monitor, "#status")
        assert logging.getLogger("aiotq.events").propagate  # given back as it was
    finally:
        await app.aclose()
