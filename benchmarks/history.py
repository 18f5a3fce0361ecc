"""Task history at scale: how long a dashboard page query takes with 10k, 100k and 1M
stored tasks (the first page, a state filter, a name filter, two filters, a deep page, a
substring search).

    .venv/bin/python -m benchmarks.history --url sqlite:////tmp/aiotq-history.db
    .venv/bin/python -m benchmarks.history --url redis://127.0.0.1:6379/12 --sizes 10000,100000

The store is filled through `HistoryStore.write()` as workers fill it (one finished record
per task, in ticks of 1,000); on SQLite a reader then indexes what they wrote (`absorb`,
which every read does first; timed apart); each query runs 5 times, the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import uvloop

from aiotq import App
from aiotq.history import TaskQuery, records_of

NAMES = [f"proj.tasks.job_{n}" for n in range(20)]
STATES = ("task-succeeded",) * 9 + ("task-failed",)


def events_for(start: int, count: int, now: float) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for n in range(start, start + count):
        task_id = str(uuid.uuid4())
        at = now - 3600 + n * 0.001
        name = NAMES[n % len(NAMES)]
        host = f"w{n % 4}@bench"
        found.append({"type": "task-received", "uuid": task_id, "name": name, "hostname": host,
                      "timestamp": at, "args": [n, f"+1555{n:07d}"], "kwargs": {},
                      "queue": "default", "root_id": task_id})  # fmt: skip
        end = STATES[n % len(STATES)]
        found.append({"type": end, "uuid": task_id, "hostname": host, "timestamp": at + 0.0005,
                      "runtime": 0.0005, "result": n, "exception": "ValueError: no"})  # fmt: skip
    return found


async def timed(history: Any, query: TaskQuery) -> float:
    samples = []
    for _ in range(5):
        began = time.perf_counter()
        await history.search(query)
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:////tmp/aiotq-history.db")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")]
    app = App("hist-bench", broker="memory://", backend=options.url,
              history_max_tasks=max(sizes) + 1, history_max_age_s=86400 * 7)  # fmt: skip
    history = app.history
    assert history is not None
    stored, now = 0, time.time()
    queries = {
        "first page": TaskQuery(),
        "state=FAILURE": TaskQuery(state="FAILURE"),
        "name=job_7": TaskQuery(name=NAMES[7]),
        "name+worker": TaskQuery(name=NAMES[7], worker="w3@bench"),
        "page 100": TaskQuery(page=100),
        "q=+1555000123": TaskQuery(q="+1555000123"),
    }
    print(f"history store: {options.url}")
    for size in sizes:
        began = time.perf_counter()
        while stored < size:
            batch = min(1000, size - stored)
            await history.write(records_of(events_for(stored, batch, now)))
            stored += batch
        fill = time.perf_counter() - began
        began = time.perf_counter()
        absorb = getattr(history, "absorb", None)  # SQLite: the workers' log indexed by a reader
        if absorb is not None:
            await absorb()
        indexed = time.perf_counter() - began
        figures = [f"{label} {await timed(history, q):.1f} ms" for label, q in queries.items()]
        print(f"{size:>8} tasks (filled in {fill:.0f}s, indexed by the reader in {indexed:.0f}s): "
              + ", ".join(figures))  # fmt: skip
    await app.aclose()


if __name__ == "__main__":
    uvloop.run(main())
