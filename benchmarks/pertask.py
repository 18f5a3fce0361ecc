"""What each per-task feature costs the worker: the noop and io drains with task history,
metrics, tracing and events turned on one at a time, in one run, alternating rounds so the
machine's drift falls on every variant.

    .venv/bin/python -m benchmarks.pertask [--url redis://127.0.0.1:6379/11] [--tasks 20000]

The worker is `aiotq worker -c 200` with results stored (benchmarks.baseline). Variants:
`bare` (history, tracing and events off), `history` (the default: history on),
`history+metrics` (what the monitoring issue bounds at 15%), `+metrics`
(--metrics-port), `+tracing` (OpenTelemetry API installed, no SDK: no-op spans), `+events`
(-E, nobody listening), and `all`. Each line prints its ratio to `bare` and the worker's
CPU per task (all its threads: the history's SQLite writes run on a thread of their own).
Every drain starts from the same empty store (a new SQLite file beside `--url`, or the
Redis db of `--url` flushed: give it a db of its own), and each round starts with the next
variant, so neither a growing database nor the order favours one.
"""

from __future__ import annotations

import argparse
import socket
import statistics
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio
import uvloop

from .baseline import build, drain, enqueue

OFF = {"AIOTQ_BENCH_HISTORY": "0", "AIOTQ_BENCH_TRACING": "0"}


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def variants() -> dict[str, tuple[list[str], dict[str, str]]]:
    return {
        "bare": ([], OFF),
        "history": ([], {"AIOTQ_BENCH_TRACING": "0"}),
        "history+metrics": (["--metrics-port", _port()], {"AIOTQ_BENCH_TRACING": "0"}),
        "+metrics": (["--metrics-port", _port()], OFF),
        "+tracing": ([], {"AIOTQ_BENCH_HISTORY": "0"}),
        "+events": (["-E"], OFF),
        "all": (["-E", "--metrics-port", _port()], {}),
    }


async def fresh(url: str) -> str:
    """The store a drain starts from, the same for every variant (a database grown by the
    earlier drains makes each later one slower, whatever it runs): a new SQLite file beside
    the given one, or the given Redis db flushed (the bench's own db, as in compare.py)."""
    if url.startswith("redis"):
        client = redis.asyncio.from_url(url)
        await client.flushdb()
        await client.aclose()
        return url
    path = Path(urlsplit(url).path)
    for old in path.parent.glob(f"{path.stem}-drain*"):
        old.unlink()
    return f"sqlite:///{path.with_name(path.stem + '-drain' + path.suffix)}"


async def one(
    url: str, kind: str, n: int, extra: list[str], env: dict[str, str]
) -> tuple[float, float]:
    url = await fresh(url)
    producer = build(url)
    await producer.broker.purge("default")
    if kind == "noop":
        _, results = await enqueue(producer, n)
    else:
        io = producer.tasks["bench.io"]
        results = [await io.send(0.05) for _ in range(n)]
    rate, cpu_us = await drain(producer, results, url, *extra, env=env)
    await producer.aclose()
    return rate, cpu_us


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated variants (bare first)")
    options = parser.parse_args()
    chosen = [v for v in options.only.split(",") if v] or list(variants())
    print(f"broker and backend: {options.url}; {options.tasks} tasks a noop drain, -c 200")
    for kind, n in (("noop", options.tasks), ("io", options.tasks // 4)):
        rates: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        for round_no in range(options.rounds):
            table = [(name, v) for name, v in variants().items() if name in chosen]
            turn = round_no % len(table)  # each round starts with the next variant: drift
            for name, (extra, env) in table[turn:] + table[:turn]:  # falls on all of them
                rate, cpu_us = await one(options.url, kind, n, extra, env)
                rates.setdefault(name, []).append(rate)
                cpus.setdefault(name, []).append(cpu_us)
        bare = statistics.median(rates["bare"])
        for name, found in rates.items():
            rate, cpu_us = statistics.median(found), statistics.median(cpus[name])
            print(f"{kind:>4} {name:>15}: {rate:7.0f} tasks/s   vs bare {rate / bare:.2f}"
                  f"   worker CPU {cpu_us:5.0f} us/task")  # fmt: skip


if __name__ == "__main__":
    uvloop.run(main())
