"""`aiotq events`: a live terminal monitor of workers and tasks, as `celery events`.

A Textual app over `app.events.receive()`: the events feed a `MonitorState`
(aiotq/monitor_state.py, pure and tested alone) from a background worker, and the screen
redraws from that state a few times a second, so a burst of events costs one redraw, not
one per event. Keys: arrows/enter select a task, `r` revokes it, `t` terminates it, `q`
quits. A broker error never ends the monitor: it shows on the status line and the reader
starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.pretty import pretty_repr
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Static

from .monitor_state import (
    COUNTED,
    FAILURE,
    OFFLINE,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    MonitorState,
    TaskInfo,
    WorkerInfo,
)

if TYPE_CHECKING:
    from .app import App as AiotqApp

__all__ = ["EventsMonitor", "MonitorState", "run_monitor"]

REFRESH_S = 0.25
NAME_MAX = 40  # a task name longer than this shows its tail: the module path matters least
RETRY_READ_S = 1.0  # between two attempts to read the events when the broker is away
STATE_STYLES = {
    SUCCESS: "green", FAILURE: "bold red", RETRY: "yellow", REVOKED: "magenta",
    REJECTED: "red", STARTED: "cyan", OFFLINE: "red", "ONLINE": "green",
}  # fmt: skip
RATE_LABELS = {SUCCESS: "succeeded", FAILURE: "failed", RETRY: "retried", REVOKED: "revoked"}
TASK_COLUMNS = (
    ("Name", "name"), ("UUID", "uuid"), ("State", "state"), ("Runtime", "runtime"),
    ("Worker", "worker"), ("Received", "received"),
)  # fmt: skip
WORKER_COLUMNS = (
    ("Worker", "hostname"), ("State", "state"), ("Active", "active"),
    ("Processed", "processed"), ("Load", "load"), ("Heartbeat", "heartbeat"),
)  # fmt: skip


def _styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def task_cells(task: TaskInfo) -> tuple[Any, ...]:
    runtime = f"{task.runtime:.3f}s" if task.runtime is not None else "-"
    received = task.received or task.sent
    name = task.name or "?"
    if len(name) > NAME_MAX:
        name = "…" + name[1 - NAME_MAX :]
    return (
        name, task.uuid, _styled(task.state), runtime, task.worker or "-",
        _clock(received),
    )  # fmt: skip


def worker_cells(worker: WorkerInfo, now: float) -> tuple[Any, ...]:
    load = " ".join(f"{x:.2f}" for x in worker.loadavg) if worker.loadavg else "-"
    age = f"{max(0.0, now - worker.last_seen):.1f}s ago" if worker.last_seen else "-"
    return (
        worker.hostname, _styled(worker.state(now)), str(worker.active), str(worker.processed),
        load, age,
    )  # fmt: skip


def task_detail(task: TaskInfo) -> Text:
    """The detail panel: what the task was given and what came of it."""
    text = Text()

    def line(label: str, value: Any) -> None:
        text.append(f"{label:<10}", style="bold")
        text.append(value if isinstance(value, str) else pretty_repr(value, max_width=70))
        text.append("\n")

    line("name", task.name or "?")
    line("uuid", task.uuid)
    text.append(f"{'state':<10}", style="bold")
    text.append_text(_styled(task.state))
    text.append("\n")
    line("worker", task.worker or "-")
    line("received", _clock(task.received or task.sent))
    line("started", _clock(task.started))
    line("finished", _clock(task.finished))
    if task.runtime is not None:
        line("runtime", f"{task.runtime:.3f}s")
    if task.retries:
        line("retries", str(task.retries))
    line("args", task.args if task.args is not None else [])
    line("kwargs", task.kwargs if task.kwargs is not None else {})
    if task.state == SUCCESS:
        line("result", task.result)
    if task.exception is not None:
        line("exception", task.exception)
    if task.reason:
        line("reason", task.reason)
    if task.traceback:
        text.append("traceback\n", style="bold")
        text.append(task.traceback.rstrip() + "\n", style="red")
    return text


class EventsMonitor(App[None]):
    """The monitor: workers, outcome rates, the latest tasks and the selected one."""

    TITLE = "aiotq events"
    CSS = """
    #workers { height: auto; max-height: 12; }
    #rates { height: 1; padding: 0 1; background: $boost; }
    #main { height: 1fr; }
    #tasks { width: 2fr; height: 100%; }
    #detail-box {
        width: 1fr; min-width: 36; height: 100%; border-left: solid $primary; padding: 0 1;
    }
    #status { height: 1; padding: 0 1; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "revoke", "Revoke"),
        Binding("t", "terminate", "Terminate"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        aiotq_app: AiotqApp,
        replay: bool = True,
        *,
        rows: int = 200,
        max_tasks: int = 10_000,
    ) -> None:
        super().__init__()
        self.aiotq_app = aiotq_app
        self.replay = replay
        self.rows = rows  # tasks shown; the state keeps up to max_tasks for the detail
        self.state = MonitorState(max_tasks=max_tasks)
        self.selected: str | None = None  # the task whose detail is shown
        self.status = ""
        self._shown_tasks: list[str] = []
        self._task_cells: dict[str, tuple[Any, ...]] = {}
        self._shown_workers: list[str] = []
        self._drawn_version = -1
        self._log_handler: _StatusHandler | None = None
        self.sub_title = str(aiotq_app.main)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        workers: DataTable[Any] = DataTable(id="workers", cursor_type="none", zebra_stripes=True)
        workers.can_focus = False  # the keys go to the tasks table
        yield workers
        yield Static(id="rates")
        with Horizontal(id="main"):
            yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="detail-box"):
                yield Static("Select a task (arrows, enter or a click).", id="detail")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        for label, key in WORKER_COLUMNS:
            self.workers_table.add_column(label, key=key)
        for label, key in TASK_COLUMNS:
            self.tasks_table.add_column(label, key=key)
        self.tasks_table.focus()
        self.set_status("waiting for events...")
        self._log_handler = _StatusHandler(self)
        self._log_handler.attach()
        self.run_worker(self._read_events(), name="events", group="events", exit_on_error=False)
        self.set_interval(REFRESH_S, self.redraw)
        self.redraw()

    def on_unmount(self) -> None:
        if self._log_handler is not None:
            self._log_handler.detach()
            self._log_handler = None

    @property
    def workers_table(self) -> DataTable[Any]:
        return self.query_one("#workers", DataTable)

    @property
    def tasks_table(self) -> DataTable[Any]:
        return self.query_one("#tasks", DataTable)

    # -- events ----------------------------------------------------------------------------
    async def _read_events(self) -> None:
        """Feed the state for ever; after a broker error, say so and read again (replay only
        until the first event: a second replay would count the same outcomes twice)."""
        replay = self.replay
        while True:
            events = None
            first = True
            try:
                events = self.aiotq_app.events.receive(replay=replay)
                async for event in events:
                    if first:
                        first = replay = False
                        self.set_status("receiving events")
                    self.state.feed(event)
            except Exception as exc:  # a broker error: the UI stays up and says it
                self.set_status(f"events: {_one_line(exc)}; retrying", error=True)
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            await asyncio.sleep(RETRY_READ_S)

    # -- drawing ---------------------------------------------------------------------------
    def redraw(self) -> None:
        try:
            self._redraw(time.time())
        except NoMatches:  # the interval fired while the screen was being torn down
            return

    def _redraw(self, now: float) -> None:
        self._draw_workers(now)  # every time: the heartbeat ages move on by themselves
        self._draw_rates(now)
        if self.state.version != self._drawn_version:
            self._drawn_version = self.state.version
            self._draw_tasks()
            self._draw_detail()

    def _draw_workers(self, now: float) -> None:
        table = self.workers_table
        workers = sorted(self.state.workers.values(), key=lambda w: w.hostname)
        names = [w.hostname for w in workers]
        if names != self._shown_workers:
            table.clear()
            for worker in workers:
                table.add_row(*worker_cells(worker, now), key=worker.hostname)
            self._shown_workers = names
            return
        for worker in workers:
            for (_, column), value in zip(WORKER_COLUMNS, worker_cells(worker, now), strict=True):
                table.update_cell(worker.hostname, column, value, update_width=True)

    def _draw_rates(self, now: float) -> None:
        rates = self.state.rates(now)
        text = Text("per second: ", style="bold")
        for state in COUNTED:
            text.append(f"{RATE_LABELS[state]} ")
            text.append(f"{rates[state]:.2f}", style=STATE_STYLES[state])
            text.append("  ")
        text.append("| totals: ", style="bold")
        text.append(", ".join(f"{RATE_LABELS[s]} {self.state.totals[s]}" for s in COUNTED))
        text.append(f" | tasks {len(self.state.tasks)}, events {self.state.event_count}")
        self.query_one("#rates", Static).update(text)

    def _draw_tasks(self) -> None:
        table = self.tasks_table
        tasks = self.state.latest(self.rows)
        keys = [task.uuid for task in tasks]
        cells = {task.uuid: task_cells(task) for task in tasks}
        if keys == self._shown_tasks:  # the same rows: rewrite only the cells that changed
            for key, row in cells.items():
                old = self._task_cells.get(key)
                for index, ((_, column), value) in enumerate(zip(TASK_COLUMNS, row, strict=True)):
                    if old is None or old[index] != value:
                        table.update_cell(key, column, value, update_width=True)
        else:
            # A rebuild moves the cursor; keep it on the selected task, and keep those moves
            # from counting as the user's selection.
            with self.prevent(DataTable.RowHighlighted):
                table.clear()
                for key, row in cells.items():
                    table.add_row(*row, key=key)
                if self.selected in cells:
                    table.move_cursor(row=keys.index(self.selected), animate=False)
            self._shown_tasks = keys
        self._task_cells = cells

    def _draw_detail(self) -> None:
        detail = self.query_one("#detail", Static)
        task = self.state.tasks.get(self.selected) if self.selected else None
        if task is not None:
            detail.update(task_detail(task))
        elif self.selected:
            detail.update(Text(f"{self.selected}: no longer kept"))

    def set_status(self, message: str, *, error: bool = False) -> None:
        """One line: what the last action did, or its error."""
        self.status = message
        line = Text(f"{_clock(time.time())} ", style="dim")
        line.append(message, style="bold red" if error else "")
        with contextlib.suppress(Exception):  # before mount, or after unmount
            self.query_one("#status", Static).update(line)

    # -- selection and actions -------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "tasks" and event.row_key.value is not None:
            self.select(event.row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "tasks" and event.row_key.value is not None:
            self.select(event.row_key.value)

    def select(self, task_id: str) -> None:
        self.selected = task_id
        self._draw_detail()

    def _target(self) -> str | None:
        """The selected task, else the one under the cursor."""
        if self.selected is not None:
            return self.selected
        table = self.tasks_table
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def action_revoke(self) -> None:
        self._revoke(terminate=False)

    def action_terminate(self) -> None:
        self._revoke(terminate=True)

    def _revoke(self, *, terminate: bool) -> None:
        task_id = self._target()
        if task_id is None:
            self.set_status("no task selected", error=True)
            return
        verb = "terminate" if terminate else "revoke"
        self.set_status(f"{verb} {task_id}...")
        # In a worker: the broker round trip must not hold up the keys and the redraws.
        self.run_worker(self._send_revoke(task_id, terminate), group="actions", exit_on_error=False)

    async def _send_revoke(self, task_id: str, terminate: bool) -> None:
        verb = "terminate" if terminate else "revoke"
        try:
            await self.aiotq_app.control.revoke(task_id, terminate=terminate)
        except Exception as exc:
            self.set_status(f"{verb} {task_id} failed: {_one_line(exc)}", error=True)
        else:
            done = "terminated" if terminate else "revoked"
            self.set_status(f"{done} {task_id}")


class _StatusHandler(logging.Handler):
    """While the monitor runs, the event reader's warnings (the broker is away, a post was
    malformed: `receive()` retries those itself) go to the status line, not to a stderr
    that would scribble over the screen."""

    LOGGER = "aiotq.events"

    def __init__(self, monitor: EventsMonitor) -> None:
        super().__init__(logging.WARNING)
        self.monitor = monitor
        self.loop = asyncio.get_running_loop()
        self._propagate = True

    def attach(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        self._propagate, logger.propagate = logger.propagate, False
        logger.addHandler(self)

    def detach(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.propagate = self._propagate

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            message = (record.getMessage().splitlines() or [""])[0]
            show = functools.partial(self.monitor.set_status, f"events: {message}", error=True)
            self.loop.call_soon_threadsafe(show)  # logged from any thread


def run_monitor(aiotq_app: AiotqApp, replay: bool = True) -> None:
    """Run the monitor in this terminal until `q`, then close the app's connections (they
    were opened on the monitor's own loop)."""

    async def main() -> None:
        try:
            await EventsMonitor(aiotq_app, replay=replay).run_async()
        finally:
            await aiotq_app.aclose()

    asyncio.run(main())
