"""aiotq's own figures on Redis: enqueue rate, drain rate, send-to-result latency.

    .venv/bin/python -m benchmarks.redis_baseline [--tasks 20000] [--db 11]

One producer (awaited sends) fills the queue, then one worker subprocess drains it with
results stored; then sequential send-then-get round trips. The peer comparison (Celery,
arq, saq, taskiq in the same run) is `make bench` (the benchmarks issue); this is the
baseline the Redis work is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

import redis
import uvloop

from aiotq import App

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(url: str) -> App:
    app = App("bench", broker=url)

    @app.task(name="bench.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


app = build(os.environ.get("AIOTQ_BROKER_URL", "redis://127.0.0.1:6379/11"))


async def start_worker(url: str) -> asyncio.subprocess.Process:
    """One worker process, as a user would start it."""
    command = [
        "-m",
        "aiotq",
        "worker",
        "benchmarks.redis_baseline:app",
        "-c",
        "200",
        "-l",
        "warning",
    ]
    env = {**os.environ, "AIOTQ_BROKER_URL": url}
    return await asyncio.create_subprocess_exec(sys.executable, *command, cwd=ROOT, env=env)


async def enqueue(producer: App, n: int) -> tuple[float, list]:  # type: ignore[type-arg]
    add = producer.tasks["bench.add"]
    started = time.perf_counter()
    results = [await add.send(i, i) for i in range(n)]
    return n / (time.perf_counter() - started), results


async def drain(results: list, url: str) -> tuple[float, float]:  # type: ignore[type-arg]
    client = redis.Redis.from_url(url)
    worker = await start_worker(url)
    try:
        # time from the first message taken to the stream empty (entries go on ack, and a
        # message is acked after its result is stored), so worker start-up is not counted
        while client.xlen("aiotq:{default}:stream") == len(results):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        while client.xlen("aiotq:{default}:stream"):  # noqa: ASYNC110 - watching another process
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(worker.pid)
        pipe = client.pipeline(transaction=False)
        for result in results:
            pipe.exists(f"aiotq:result:{result.id}")
        missing = len(results) - sum(pipe.execute())
        assert missing == 0, f"{missing} results missing"
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    return len(results) / elapsed, cpu / len(results) * 1e6


async def latency(producer: App, n: int, url: str) -> list[float]:
    worker = await start_worker(url)
    add = producer.tasks["bench.add"]
    try:
        await (await add.send(0, 0)).get(timeout=30)  # warm: the worker is up
        samples = []
        for i in range(n):
            began = time.perf_counter()
            await (await add.send(i, i)).get(timeout=10)
            samples.append((time.perf_counter() - began) * 1000)
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    return samples


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--db", type=int, default=11)
    options = parser.parse_args()
    url = f"redis://127.0.0.1:6379/{options.db}"
    redis.Redis.from_url(url).flushdb()
    producer = build(url)
    rate, results = await enqueue(producer, options.tasks)
    drained, cpu_us = await drain(results, url)
    samples = sorted(await latency(producer, options.round_trips, url))
    await producer.aclose()
    redis.Redis.from_url(url).flushdb()
    q = statistics.quantiles(samples, n=100)
    print(f"enqueue (one producer, awaited sends): {rate:8.0f} tasks/s")
    print(f"drain (one worker, results stored):    {drained:8.0f} tasks/s", end="")
    print(f"   worker CPU {cpu_us:.0f} us/task")
    print(f"round trip send->get: p50 {q[49]:.2f} ms  p95 {q[94]:.2f} ms  p99 {q[98]:.2f} ms")


if __name__ == "__main__":
    uvloop.run(main())  # the producer on uvloop, as under uvicorn
