"""The state behind `aiotq events` (aiotq/monitor.py): workers and tasks as the events tell.

Pure and synchronous (no Textual, no I/O), so it is tested by feeding it event dicts; every
method that depends on the time takes `now`, so a test never sleeps. Memory is bounded: at
most `max_tasks` tasks are kept (the least recently updated go first) and the per-second
counts cover a fixed window.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

ONLINE, OFFLINE = "ONLINE", "OFFLINE"
PENDING, RECEIVED, STARTED, RETRY = "PENDING", "RECEIVED", "STARTED", "RETRY"
SUCCESS, FAILURE, REJECTED, REVOKED = "SUCCESS", "FAILURE", "REJECTED", "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})

TASK_STATES = {
    "task-sent": PENDING, "task-received": RECEIVED, "task-started": STARTED,
    "task-succeeded": SUCCESS, "task-failed": FAILURE, "task-retried": RETRY,
    "task-rejected": REJECTED, "task-revoked": REVOKED,
}  # fmt: skip
COUNTED = (SUCCESS, FAILURE, RETRY, REVOKED)  # the outcomes of the "per second" row
DEFAULT_FREQ_S = 2.0  # a worker's heartbeat interval until one of its events tells
# The fields copied as they are from an event onto the task (when the event has them).
_TASK_FIELDS = ("name", "args", "kwargs", "result", "exception", "traceback", "runtime",
                "retries", "eta", "expires", "queue", "root_id", "parent_id")  # fmt: skip


@dataclass(slots=True)
class WorkerInfo:
    hostname: str
    freq: float = DEFAULT_FREQ_S
    last_seen: float = 0.0  # the timestamp of its latest event
    offline: bool = False  # it said goodbye (worker-offline)
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    concurrency: int | None = None
    queues: list[str] = field(default_factory=list)
    sw_ident: str | None = None
    sw_ver: str | None = None
    pid: int | None = None

    def state(self, now: float) -> str:
        """OFFLINE after worker-offline, or once two heartbeats were missed (as Celery)."""
        if self.offline or now > self.last_seen + 2 * self.freq:
            return OFFLINE
        return ONLINE


@dataclass(slots=True)
class TaskInfo:
    uuid: str
    seq: int  # the order in which the monitor first heard of it: "newest first" is stable
    name: str | None = None
    state: str = PENDING
    args: Any = None
    kwargs: Any = None
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    queue: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    worker: str | None = None
    reason: str | None = None  # why it was rejected
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None  # succeeded, failed, rejected or revoked
    updated: float = 0.0


class MonitorState:
    """Workers and tasks from the event stream; `feed()` each event as it comes."""

    def __init__(self, max_tasks: int = 10_000, window_s: float = 60.0) -> None:
        self.max_tasks = max_tasks
        self.window_s = window_s
        self.workers: dict[str, WorkerInfo] = {}
        self.tasks: OrderedDict[str, TaskInfo] = OrderedDict()  # least recently updated first
        self.totals: Counter[str] = Counter()  # outcomes since the monitor started
        self.event_count = 0
        self.version = 0  # bumped by every feed: a view redraws only when it changed
        self._seq = itertools.count()
        self._per_second: dict[int, Counter[str]] = {}
        self._first_ts: float | None = None

    def feed(self, event: dict[str, Any]) -> None:
        type_ = event.get("type")
        if not isinstance(type_, str):
            return
        self.event_count += 1
        self.version += 1
        timestamp = event.get("timestamp")
        ts = float(timestamp) if isinstance(timestamp, (int, float)) else 0.0
        if self._first_ts is None or ts < self._first_ts:
            self._first_ts = ts
        if type_.startswith("worker-"):
            self._worker_event(type_, event, ts)
        elif type_ in TASK_STATES:
            self._task_event(type_, event, ts)

    def _worker_event(self, type_: str, event: dict[str, Any], ts: float) -> None:
        hostname = str(event.get("hostname"))
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerInfo(hostname)
        worker.last_seen = max(worker.last_seen, ts)
        worker.offline = type_ == "worker-offline"
        freq = event.get("freq")
        if isinstance(freq, (int, float)) and freq > 0:
            worker.freq = float(freq)
        for name in ("active", "processed", "concurrency", "sw_ident", "sw_ver", "pid"):
            if name in event:
                setattr(worker, name, event[name])
        if isinstance(event.get("loadavg"), list):
            worker.loadavg = event["loadavg"]
        if isinstance(event.get("queues"), list):
            worker.queues = event["queues"]

    def _task_event(self, type_: str, event: dict[str, Any], ts: float) -> None:
        task_id = event.get("uuid")
        if not isinstance(task_id, str):
            return
        task = self.tasks.get(task_id)
        if task is None:
            task = self.tasks[task_id] = TaskInfo(task_id, next(self._seq))
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(task_id)
        for name in _TASK_FIELDS:
            value = event.get(name)
            if value is not None:
                setattr(task, name, value)
        state = TASK_STATES[type_]
        hostname = event.get("hostname")
        if type_ != "task-sent" and isinstance(hostname, str):  # task-sent is the producer's
            task.worker = hostname
            worker = self.workers.get(hostname)
            if worker is not None:  # a task event is a sign of life too (as Celery)
                worker.last_seen = max(worker.last_seen, ts)
        if state == PENDING:
            task.sent = ts
        elif state == RECEIVED:
            task.received = ts
        elif state == STARTED:
            task.started = ts
        elif state in (SUCCESS, FAILURE, REJECTED, REVOKED):
            task.finished = ts
        if state == REJECTED:
            task.reason = event.get("reason")
        # Events of one worker come in order, not those of two: a late "started" from the
        # first worker must not undo the outcome that another one already reported.
        if not (task.state in READY_STATES and state not in READY_STATES and ts <= task.updated):
            task.state = state
        task.updated = max(task.updated, ts)
        if state in COUNTED:
            self.totals[state] += 1
            second = int(ts)
            self._per_second.setdefault(second, Counter())[state] += 1
            if len(self._per_second) > 2 * self.window_s:
                self._prune(second)

    def _prune(self, now: float) -> None:
        oldest = now - self.window_s
        for second in [s for s in self._per_second if s < oldest]:
            del self._per_second[second]

    def rates(self, now: float) -> dict[str, float]:
        """Outcomes per second (SUCCESS, FAILURE, RETRY, REVOKED) over the last `window_s`
        (or since the first event, when that is more recent)."""
        self._prune(now)
        counts: Counter[str] = Counter()
        for second, counter in self._per_second.items():
            if second <= now:
                counts.update(counter)
        first = self._first_ts if self._first_ts is not None else now
        span = max(1.0, min(self.window_s, now - first))
        return {state: counts[state] / span for state in COUNTED}

    def latest(self, n: int) -> list[TaskInfo]:
        """The `n` tasks heard of most recently, newest first."""
        return heapq.nlargest(n, self.tasks.values(), key=lambda task: task.seq)

    def states(self) -> Counter[str]:
        """How many of the kept tasks are in each state."""
        return Counter(task.state for task in self.tasks.values())
