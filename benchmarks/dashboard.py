"""How long the dashboard's task pages take over a large history: fill the store with
benchmarks.history first, then time whole page renders (routing, query, template) in
process through httpx's ASGI transport.

    .venv/bin/python -m benchmarks.history --url sqlite:////tmp/aiotq-history.db --sizes 1000000
    .venv/bin/python -m benchmarks.dashboard --url sqlite:////tmp/aiotq-history.db
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import uvloop

from aiotq import App
from aiotq.dashboard import asgi
from aiotq.history import TaskQuery

from .history import NAMES

PAGES = {
    "/tasks": "/tasks",
    "/tasks?state=FAILURE": "/tasks?state=FAILURE",
    "/tasks?name=job_7": f"/tasks?name={NAMES[7]}",
    "/tasks?page=100": "/tasks?page=100",
    "/tasks?q=+1555000123": "/tasks?q=%2B1555000123",
    "/ (overview)": "/",
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:////tmp/aiotq-history.db")
    options = parser.parse_args()
    app = App("dash-bench", broker="memory://", backend=options.url,
              history_max_tasks=10_000_000, history_max_age_s=86400 * 7)  # fmt: skip
    history = app.history
    assert history is not None
    stored = (await history.search(TaskQuery())).total
    transport = httpx.ASGITransport(app=asgi(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        print(f"history store: {options.url} ({stored}{'+' if stored >= 10_000 else ''} tasks)")
        for label, path in PAGES.items():
            samples = []
            for _ in range(5):
                began = time.perf_counter()
                answer = await client.get(path)
                samples.append((time.perf_counter() - began) * 1000)
                assert answer.status_code == 200, (path, answer.status_code)
            print(f"  {label:<24} {statistics.median(samples):8.1f} ms")
    await app.aclose()


if __name__ == "__main__":
    uvloop.run(main())
