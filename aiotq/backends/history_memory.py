"""Task history in this process (memory://): the newest `max_tasks` records, by last update."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..history import (
    Minute,
    MinuteCounts,
    Page,
    TaskQuery,
    TaskRecord,
    matches,
    minute_counts,
)


class MemoryHistory:
    def __init__(self, max_tasks: int, max_age_s: float) -> None:
        self.max_tasks = max_tasks
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()  # oldest update first
        self._minutes: dict[int, MinuteCounts] = {}

    async def write(self, records: Sequence[TaskRecord]) -> None:
        with self._lock:
            for record in records:
                self._records.pop(record.id, None)
                self._records[record.id] = record
            for minute_s, counts in minute_counts(records).items():
                self._minutes.setdefault(minute_s, MinuteCounts()).add(counts)
            self._trim(time.time())

    def _trim(self, now: float) -> None:
        while len(self._records) > self.max_tasks:
            self._records.popitem(last=False)
        oldest = now - self.max_age_s
        while self._records:
            first = next(iter(self._records.values()))
            if first.updated_at_s >= oldest:
                break
            self._records.popitem(last=False)
        for minute_s in [m for m in self._minutes if m < oldest - 60]:
            del self._minutes[minute_s]

    async def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            return self._records.get(task_id)

    async def search(self, query: TaskQuery) -> Page:
        with self._lock:
            newest_first = list(reversed(self._records.values()))
        found = [r for r in newest_first if matches(r, query)]
        start = (max(query.page, 1) - 1) * query.per_page
        return Page(records=found[start : start + query.per_page], total=len(found),
                    page=query.page, per_page=query.per_page)  # fmt: skip

    async def names(self) -> list[str]:
        with self._lock:
            return sorted({r.name for r in self._records.values() if r.name})

    async def minutes(self, since_s: float) -> list[Minute]:
        with self._lock:
            kept = sorted((m, c) for m, c in self._minutes.items() if m >= since_s - 60)
        return [counts.minute(minute_s) for minute_s, counts in kept]
