"""What task events cost: the noop drain and the io drain with events off and on (-E), in
one run, alternating so the machine's drift falls on both sides.

    .venv/bin/python -m benchmarks.events [--url redis://127.0.0.1:6379/11] [--tasks 20000]

The worker is `aiotq worker -c 200` with results stored, as in benchmarks.baseline; "on" adds
-E, so every task sends task-received, task-started and task-succeeded (one post per tick).
Nobody listens: events are not a queue that grows (docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import statistics

import uvloop

from .baseline import build, drain, enqueue


async def one(url: str, kind: str, n: int, events: bool) -> tuple[float, float]:
    producer = build(url)
    await producer.broker.purge("default")
    if kind == "noop":
        _, results = await enqueue(producer, n)
    else:
        io = producer.tasks["bench.io"]
        results = [await io.send(0.05) for _ in range(n)]
    rate, cpu_us = await drain(producer, results, url, *(["-E"] if events else []))
    await producer.aclose()
    return rate, cpu_us


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    print(f"broker and backend: {options.url}; {options.tasks} tasks a drain, -c 200")
    for kind, n in (("noop", options.tasks), ("io", options.tasks // 4)):
        figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(options.rounds):
            for events in (False, True):
                figures[events].append(await one(options.url, kind, n, events))
        off = statistics.median(rate for rate, _ in figures[False])
        on = statistics.median(rate for rate, _ in figures[True])
        cpu_off = statistics.median(cpu for _, cpu in figures[False])
        cpu_on = statistics.median(cpu for _, cpu in figures[True])
        print(
            f"{kind:>4} drain: events off {off:7.0f} tasks/s ({cpu_off:.0f} us/task)"
            f"   -E {on:7.0f} tasks/s ({cpu_on:.0f} us/task)   on/off {on / off:.2f}"
        )


if __name__ == "__main__":
    uvloop.run(main())
