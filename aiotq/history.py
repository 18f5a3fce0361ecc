"""Task history: one record per task, kept in the result backend with a retention limit, so
the dashboard lists, filters and pages tasks across restarts (Flower keeps them in memory).

Workers write it: the task events a worker makes (received, started, succeeded, ...) are
merged into records per tick, one round trip per tick. The record keeps what a person
looking at a task wants: name, state, args and kwargs (capped), result or exception and
traceback, worker, queue, retries, the times, parent and root, and the timeline of events.

    app.history                     a HistoryStore, or None (rpc:// keeps nothing)
    await app.history.search(TaskQuery(state="FAILURE", name="proj.send_sms"))
    await app.history.get(task_id)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

# the state a task is in after each event (Celery's)
STATE_OF = {
    "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
    "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
    "task-rejected": "REJECTED", "task-revoked": "REVOKED",
}  # fmt: skip
FINAL = frozenset({"SUCCESS", "FAILURE", "REJECTED", "REVOKED"})


class TaskRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
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
    timeline: list[tuple[str, float, str | None]] = []  # (event type, time, hostname)


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


class Page(msgspec.Struct, kw_only=True):
    records: list[TaskRecord]
    total: int  # matching records (may be an estimate past `count_limit` on Redis)
    page: int
    per_page: int


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
    async def record(self, events: Sequence[dict[str, Any]]) -> None:
        """Merge task events (one worker's tick) into their records; one round trip where
        the store can; trims past the retention limit."""

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def search(self, query: TaskQuery) -> Page: ...

    async def names(self) -> list[str]:
        """Every task name seen (for the filter)."""
        ...

    async def minutes(self, since_s: float) -> list[Minute]:
        """Per-minute counters from `since_s` on, oldest first."""
        ...


def merge(record: TaskRecord | None, event: dict[str, Any]) -> TaskRecord:
    """A record with one more event applied (the one rule every store uses)."""
    type_ = event["type"]
    ts = float(event.get("timestamp") or 0.0)
    if record is None:
        record = TaskRecord(id=event["uuid"], state=STATE_OF.get(type_, "PENDING"))
    elif record.state not in FINAL or type_ in ("task-retried", "task-received"):
        record.state = STATE_OF.get(type_, record.state)
    if type_ == "task-retried" and record.state in FINAL:
        record.state = "RETRY"
    record.name = event.get("name") or record.name
    hostname = event.get("hostname")
    if type_ != "task-sent":
        record.worker = hostname or record.worker
    for field in ("args", "kwargs", "queue", "parent_id", "root_id", "eta"):
        if event.get(field) is not None:
            setattr(record, field, event[field])
    if "retries" in event and type_ != "task-retried":
        record.retries = int(event["retries"] or 0)
    if type_ == "task-sent":
        record.sent_at_s = ts
    elif type_ == "task-received":
        record.received_at_s = ts
    elif type_ == "task-started":
        record.started_at_s = ts
    elif type_ in ("task-succeeded", "task-failed", "task-rejected", "task-revoked"):
        record.finished_at_s = ts
        if event.get("runtime") is not None:
            record.runtime_s = float(event["runtime"])
    if type_ == "task-succeeded":
        record.result = event.get("result")
    elif type_ in ("task-failed", "task-retried"):
        record.exception = event.get("exception")
        record.traceback = event.get("traceback") or record.traceback
        if type_ == "task-retried":
            record.retries = int(event.get("retries") or record.retries + 1)
    elif type_ == "task-rejected":
        record.exception = event.get("reason")
    record.updated_at_s = max(record.updated_at_s, ts)
    timeline = record.timeline
    timeline.append((type_, ts, hostname))
    if len(timeline) > 50:
        del timeline[:-50]
    return record


# Runtime buckets (seconds) for the per-minute p50/p95: a minute keeps counts, not samples.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COUNTED = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried",
           "task-revoked": "revoked"}  # fmt: skip


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


def minute_counts(events: Sequence[dict[str, Any]]) -> dict[int, MinuteCounts]:
    """The per-minute counters a batch of events adds."""
    found: dict[int, MinuteCounts] = {}
    for event in events:
        outcome = COUNTED.get(event.get("type", ""))
        if outcome is None:
            continue
        minute_s = int(float(event.get("timestamp") or 0.0)) // 60 * 60
        counts = found.get(minute_s)
        if counts is None:
            counts = found[minute_s] = MinuteCounts()
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        runtime = event.get("runtime")
        if runtime is not None:
            counts.buckets[_bucket(float(runtime))] += 1
    return found


def _bucket(runtime_s: float) -> int:
    for index, bound in enumerate(BUCKETS):
        if runtime_s <= bound:
            return index
    return len(BUCKETS)


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


def task_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of a batch that belong to a task (worker events are not history)."""
    return [e for e in events if "uuid" in e and str(e.get("type", "")).startswith("task-")]


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
