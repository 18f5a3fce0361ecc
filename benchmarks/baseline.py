"""aiotq's own figures on one broker: enqueue rate, drain rate, latency, idle CPU.

    .venv/bin/python -m benchmarks.baseline [--url redis://127.0.0.1:6379/11] [--tasks 20000]
    .venv/bin/python -m benchmarks.baseline --url sqlite:////tmp/aiotq-bench.db

One producer (awaited sends) fills the queue, then one worker subprocess drains it with
results stored; then the worker's CPU while idle; then sequential round trips on the idle
worker, split into send -> task start and task start -> result in the caller's hands. The
peer comparison (Celery, arq, saq, taskiq in the same run) is `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

import uvloop

from aiotq import App

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(url: str) -> App:
    app = App("bench", broker=url)
    # benchmarks.pertask turns the per-task features off and on through these
    if os.environ.get("AIOTQ_BENCH_HISTORY") == "0":
        app.conf.history_max_tasks = 0
    elif os.environ.get("AIOTQ_BENCH_HISTORY_MAX"):  # a retention other than the default
        app.conf.history_max_tasks = int(os.environ["AIOTQ_BENCH_HISTORY_MAX"])
    if os.environ.get("AIOTQ_BENCH_TRACING") == "0":
        app.conf.tracing = False

    @app.task(name="bench.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="bench.io")
    async def io(delay_s: float) -> None:
        await asyncio.sleep(delay_s)

    @app.task(name="bench.started_at")
    async def started_at() -> float:
        return time.time()

    return app


app = build(os.environ.get("AIOTQ_BROKER_URL", "redis://127.0.0.1:6379/11"))


async def start_worker(
    url: str, *extra: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """One worker process, as a user would start it (`extra`: more options, e.g. -E)."""
    command = [
        "-m",
        "aiotq",
        "worker",
        "benchmarks.baseline:app",
        "-c",
        "200",
        "-l",
        "warning",
        *extra,
    ]
    environment = {**os.environ, "AIOTQ_BROKER_URL": url, **(env or {})}
    return await asyncio.create_subprocess_exec(sys.executable, *command, cwd=ROOT, env=environment)


async def enqueue(producer: App, n: int) -> tuple[float, list]:  # type: ignore[type-arg]
    add = producer.tasks["bench.add"]
    started = time.perf_counter()
    results = [await add.send(i, i) for i in range(n)]
    return n / (time.perf_counter() - started), results


async def drain(  # type: ignore[type-arg]
    producer: App, results: list, url: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """From the first result stored to the last, so worker start-up is not counted."""
    backend = producer.backend
    worker = await start_worker(url, *extra, env=env)
    try:
        while await backend.get(results[0].id) is None:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        for result in results[1:]:
            while await backend.get(result.id) is None:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    return (len(results) - 1) / elapsed, cpu / len(results) * 1e6


async def idle_and_latency(
    producer: App, n: int, url: str
) -> tuple[float, list[float], list[float], list[float]]:
    """Idle CPU (% of a core over 5 s), then round trips: total, send->start, start->result."""
    worker = await start_worker(url)
    stamp = producer.tasks["bench.started_at"]
    try:
        await (await stamp.send()).get(timeout=30)  # warm: the worker is up
        cpu_before, began = _cpu_seconds(worker.pid), time.perf_counter()
        await asyncio.sleep(5.0)
        idle = (_cpu_seconds(worker.pid) - cpu_before) / (time.perf_counter() - began) * 100
        total, to_start, to_result = [], [], []
        for _ in range(n):
            sent = time.time()
            started = await (await stamp.send()).get(timeout=10)
            done = time.time()
            total.append((done - sent) * 1000)
            to_start.append((started - sent) * 1000)
            to_result.append((done - started) * 1000)
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    return idle, total, to_start, to_result


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _quantiles(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{name}: p50 {q[49]:.2f} ms  p95 {q[94]:.2f} ms  p99 {q[98]:.2f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--round-trips", type=int, default=500)
    options = parser.parse_args()
    url = options.url
    producer = build(url)
    await producer.broker.purge("default")
    rate, results = await enqueue(producer, options.tasks)
    drained, cpu_us = await drain(producer, results, url)
    idle, total, to_start, to_result = await idle_and_latency(producer, options.round_trips, url)
    await producer.aclose()
    print(f"broker and backend: {url}")
    print(f"enqueue (one producer, awaited sends): {rate:8.0f} tasks/s")
    print(f"drain (one worker, results stored):    {drained:8.0f} tasks/s", end="")
    print(f"   worker CPU {cpu_us:.0f} us/task")
    print(f"idle worker CPU: {idle:.2f}% of a core")
    print(_quantiles("round trip send->get   ", total))
    print(_quantiles("  send -> task started ", to_start))
    print(_quantiles("  task started -> get  ", to_result))


if __name__ == "__main__":
    uvloop.run(main())  # the producer on uvloop, as under uvicorn
