"""Task history: one record per task, kept in the result backend with a retention limit, so
the dashboard lists, filters and pages tasks across restarts (Flower keeps them in memory).

Workers write it: a worker combines the task events it makes (received, started, then the
outcome) into one record per run (`Combiner`) and writes a tick's records in one round
trip; a task shows up when its run ends (running ones: `inspect active`). The record keeps
what a person looking at a task wants: name, state, args and kwargs (capped), result or
exception and traceback, worker, queue, retries, the times, parent and root, and the
timeline of its events.

    app.history                     a HistoryStore, or None (rpc:// keeps nothing)
    await app.history.search(TaskQuery(state="FAILURE", name="proj.send_sms"))
    await app.history.get(task_id)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

# the state a task is in after each event (Celery's)
STATE_OF = {
    "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
    "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
    "task-rejected": "REJECTED", "task-revoked": "REVOKED",
}  # fmt: skip
OUTCOME_EVENTS = {"SUCCESS": "task-succeeded", "FAILURE": "task-failed",
                  "RETRY": "task-retried", "REJECTED": "task-rejected",
                  "REVOKED": "task-revoked"}  # fmt: skip


class TaskRecord(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    id: str
    state: str
    name: str | None = None
    args: Any = None
    kwargs: Any = None
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    worker: str | None = None
    queue: str | None = None
    retries: int = 0
    eta: float | None = None
    sent_at_s: float | None = None
    received_at_s: float | None = None
    started_at_s: float | None = None
    finished_at_s: float | None = None
    runtime_s: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    updated_at_s: float = 0.0

    @property
    def timeline(self) -> list[tuple[str, float, str | None]]:
        """The run's events, (type, time, hostname), read from its times: not stored, as
        a worker's records always hold them (received, started, the outcome)."""
        steps: list[tuple[str, float, str | None]] = []
        if self.received_at_s is not None:
            steps.append(("task-received", self.received_at_s, self.worker))
        if self.started_at_s is not None:
            steps.append(("task-started", self.started_at_s, self.worker))
        event = OUTCOME_EVENTS.get(self.state)
        if event is not None:
            steps.append((event, self.updated_at_s, self.worker))
        return steps


class Run(msgspec.Struct, gc=False):
    """One run as a worker's steps noted it (worker/taskevents.py); its record is built when
    it is folded. Garbage collection: a run is not tracked (it is never part of a cycle),
    and it copies what it needs of its message rather than keep the message (and its half
    dozen containers) alive: a fold's worth of either made every collection longer."""

    name: str | None
    queue: str | None
    received_at_s: float | None  # None: not received by this worker (revoked or refused)
    args: Any = None
    kwargs: Any = None
    retries: int = 0
    eta: float | None = None
    sent_at_s: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    started_at_s: float | None = None
    # its outcome, once it ended
    id: str = ""
    state: str = ""
    ended_at_s: float = 0.0
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    runtime_s: float | None = None
    retry_eta: float | None = None


class RunSink(Protocol):
    """What the history and the metrics are told, a batch at a time: the runs received and
    started since the last batch, and the records of those that ended (not changed after)."""

    def fold(
        self, received: Sequence[Run], started: Sequence[Run], finished: Sequence[TaskRecord]
    ) -> None: ...


class TaskQuery(msgspec.Struct, kw_only=True):
    """A search: every given field narrows it; newest first (by last update)."""

    q: str | None = None  # a substring of the id, the name or the args/kwargs
    state: str | None = None
    name: str | None = None
    worker: str | None = None
    queue: str | None = None
    since_s: float | None = None
    until_s: float | None = None
    root_id: str | None = None  # a whole canvas: every task of one root
    page: int = 1
    per_page: int = 50


COUNT_LIMIT = 10_000  # matches counted at most: a page of a million stays fast


class Page(msgspec.Struct, kw_only=True):
    records: list[TaskRecord]
    total: int  # matching records, counted up to COUNT_LIMIT (then `exact` is False)
    page: int
    per_page: int
    exact: bool = True


class Minute(msgspec.Struct, kw_only=True):
    """Per-minute counters for the overview charts (kept as long as the history)."""

    minute_s: int  # start of the minute, epoch seconds
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    revoked: int = 0
    runtime_p50_s: float | None = None
    runtime_p95_s: float | None = None


class HistoryStore(Protocol):
    async def write(self, records: Sequence[TaskRecord]) -> None:
        """Store finished records (one worker's tick; a later run of the same id replaces
        the earlier one), one round trip where the store can; trims past the limits."""

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def search(self, query: TaskQuery) -> Page: ...

    async def names(self) -> list[str]:
        """Every task name seen (for the filter)."""
        ...

    async def minutes(self, since_s: float) -> list[Minute]:
        """Per-minute counters from `since_s` on, oldest first."""
        ...


class Combiner:
    """Task events in, one finished record per run out: a worker keeps what a task's
    received and started events said until its outcome (succeeded, failed, retried,
    rejected, revoked), then writes the whole record once (a record is written once per
    run, not once per event). At most `cap` runs are held open."""

    def __init__(self, cap: int = 20_000) -> None:
        self.cap = cap
        self._open: dict[str, dict[str, Any]] = {}

    def feed(self, event: dict[str, Any]) -> TaskRecord | None:
        type_ = event["type"]
        task_id = event.get("uuid")
        if task_id is None:
            return None
        if type_ == "task-received":
            self._open[task_id] = event
            if len(self._open) > self.cap:
                del self._open[next(iter(self._open))]
            return None
        if type_ == "task-started":
            received = self._open.get(task_id)
            if received is not None:
                received["_started"] = event["timestamp"]
            return None
        state = STATE_OF.get(type_)
        if state is None or type_ == "task-sent":
            return None
        return finished(self._open.pop(task_id, None), event, state)


def finished(received: dict[str, Any] | None, event: dict[str, Any], state: str) -> TaskRecord:
    """The record of one run, from its received event (if seen) and its outcome."""
    begun = received or {}
    task_id = event["uuid"]
    record = TaskRecord(
        id=task_id, state=state, name=event.get("name") or begun.get("name"),
        args=begun.get("args"), kwargs=begun.get("kwargs"), worker=event.get("hostname"),
        queue=begun.get("queue"), retries=int(begun.get("retries") or 0), eta=begun.get("eta"),
        sent_at_s=begun.get("sent_at"), received_at_s=begun.get("timestamp"),
        started_at_s=begun.get("_started"), parent_id=begun.get("parent_id"),
        root_id=begun.get("root_id") or task_id,
    )  # fmt: skip
    return conclude(
        record, state, float(event.get("timestamp") or 0.0), runtime_s=event.get("runtime"),
        result=event.get("result"), exception=event.get("exception") or event.get("reason"),
        traceback=event.get("traceback"), eta=event.get("eta"),
    )  # fmt: skip


def conclude(
    record: TaskRecord,
    state: str,
    at_s: float,
    *,
    runtime_s: float | None = None,
    result: Any = None,
    exception: str | None = None,
    traceback: str | None = None,
    eta: float | None = None,
) -> TaskRecord:
    """A run's outcome written into its record: the one reading for the worker's records
    (worker/taskevents.py) and for records combined from events (`Combiner`)."""
    record.state = state
    record.updated_at_s = at_s
    if runtime_s is not None:
        record.runtime_s = float(runtime_s)
    if state == "SUCCESS":
        record.result = result
    elif state in ("FAILURE", "RETRY", "REJECTED"):
        record.exception = exception  # for REJECTED: the reason
        record.traceback = traceback
    if state == "RETRY":
        record.eta = eta  # due again then; not finished
    else:
        record.finished_at_s = at_s
    return record


def records_of(events: Sequence[dict[str, Any]]) -> list[TaskRecord]:
    """The finished records in a batch of events (for tests and tools)."""
    combiner = Combiner()
    return [r for r in (combiner.feed(e) for e in events) if r is not None]


# Runtime buckets (seconds) for the per-minute p50/p95: a minute keeps counts, not samples.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class MinuteCounts(msgspec.Struct, kw_only=True):
    """What a store keeps per minute: counts by outcome and a runtime histogram."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    revoked: int = 0
    buckets: list[int] = msgspec.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def add(self, other: MinuteCounts) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.retried += other.retried
        self.revoked += other.revoked
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def minute(self, minute_s: int) -> Minute:
        return Minute(
            minute_s=minute_s, succeeded=self.succeeded, failed=self.failed,
            retried=self.retried, revoked=self.revoked,
            runtime_p50_s=_quantile(self.buckets, 0.5), runtime_p95_s=_quantile(self.buckets, 0.95),
        )  # fmt: skip


OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried",
            "REVOKED": "revoked"}  # fmt: skip


def minute_counts(records: Sequence[TaskRecord]) -> dict[int, MinuteCounts]:
    """The per-minute counters a batch of finished records adds."""
    found: dict[int, MinuteCounts] = {}
    for record in records:
        outcome = OUTCOMES.get(record.state)
        if outcome is None:
            continue
        minute_s = int(record.updated_at_s) // 60 * 60
        counts = found.get(minute_s)
        if counts is None:
            counts = found[minute_s] = MinuteCounts()
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        if record.runtime_s is not None and outcome != "retried":
            counts.buckets[_bucket(record.runtime_s)] += 1
    return found


def _bucket(runtime_s: float) -> int:
    """The first bucket whose bound is >= runtime_s (len(BUCKETS): past the last)."""
    return bisect_left(BUCKETS, runtime_s)


def _quantile(buckets: list[int], q: float) -> float | None:
    total = sum(buckets)
    if total == 0:
        return None
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= q * total:
            return BUCKETS[index] if index < len(BUCKETS) else BUCKETS[-1] * 2
    return None


def matches(record: TaskRecord, query: TaskQuery) -> bool:
    """The one reading of a query, for stores that filter in Python (memory, Redis's
    substring search)."""
    if query.state and record.state != query.state:
        return False
    if query.name and record.name != query.name:
        return False
    if query.worker and record.worker != query.worker:
        return False
    if query.queue and record.queue != query.queue:
        return False
    if query.root_id and record.root_id != query.root_id:
        return False
    if query.since_s is not None and record.updated_at_s < query.since_s:
        return False
    if query.until_s is not None and record.updated_at_s > query.until_s:
        return False
    return not query.q or query.q.lower() in search_text(record)


_json = msgspec.json.Encoder()


def search_text(record: TaskRecord) -> str:
    """What `q` searches: the id, the name, the args and kwargs, lowercased."""
    return " ".join(
        (record.id, record.name or "", _json.encode(record.args).decode(),
         _json.encode(record.kwargs).decode())
    ).lower()  # fmt: skip
