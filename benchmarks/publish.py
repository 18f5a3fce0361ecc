"""Confirmed publishing on RabbitMQ: aiotq's sends against raw aio-pika, in one run.

    .venv/bin/python -m benchmarks.publish [--url amqp://guest:guest@127.0.0.1:5672/aiotq-bench]
                                           [--n 5000] [--rounds 3] [--only raw-seq,aiotq-seq]

Every variant publishes persistent messages to the same durable queue and waits for
RabbitMQ's publisher confirms: `raw-seq` (aio-pika, one publish after another), `raw-conc`
(aio-pika, all publishes at once, confirms gathered), `aiotq-seq` (`await add.send(i, i)`
one after another), `aiotq-conc` (`asyncio.gather` of the sends), `aiotq-many`
(`await add.send_many(...)`, batches of 1,000). Variants alternate round after round, the
queue is purged between runs, and the median counts; each line prints its ratio to the raw
figure of the same kind.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aio_pika
import uvloop

from aiotq import App

from .drivers._common import amqp_url, flush_vhost

QUEUE = "default"
BATCH = 1000


def build(url: str) -> App:
    app = App("bench", broker=url, backend="memory://")
    app.conf.history_max_tasks = 0

    @app.task(name="bench.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def raw(url: str, n: int, concurrent: bool) -> float:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        body = b'{"args":[1,1]}' * 8  # about the size of aiotq's message

        def message(i: int) -> aio_pika.Message:
            return aio_pika.Message(
                body, message_id=str(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )

        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(exchange.publish(message(i), QUEUE) for i in range(n)))
        else:
            for i in range(n):
                await exchange.publish(message(i), QUEUE)
        return n / (time.perf_counter() - started)


async def aiotq(url: str, n: int, how: str) -> float:
    app = build(url)
    add = app.tasks["bench.add"]
    await add.send(0, 0)  # connected and declared before timing
    started = time.perf_counter()
    if how == "seq":
        for i in range(n):
            await add.send(i, i)
    elif how == "conc":
        await asyncio.gather(*(add.send(i, i) for i in range(n)))
    else:
        for start in range(0, n, BATCH):
            await add.send_many([((i, i), {}) for i in range(start, min(n, start + BATCH))])
    rate = n / (time.perf_counter() - started)
    await app.aclose()
    return rate


VARIANTS: dict[str, Callable[[str, int], Awaitable[float]]] = {
    "raw-seq": lambda url, n: raw(url, n, False),
    "aiotq-seq": lambda url, n: aiotq(url, n, "seq"),
    "raw-conc": lambda url, n: raw(url, n, True),
    "aiotq-conc": lambda url, n: aiotq(url, n, "conc"),
    "aiotq-many": lambda url, n: aiotq(url, n, "many"),
}
REFERENCE = {"aiotq-seq": "raw-seq", "aiotq-conc": "raw-conc", "aiotq-many": "raw-conc"}


async def purge(url: str) -> None:
    app = build(url)
    await app.broker.purge(QUEUE)
    await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=amqp_url())
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    options = parser.parse_args()
    chosen = [v for v in options.only.split(",") if v] or list(VARIANTS)
    if options.url == amqp_url():
        flush_vhost(options.url)
    await purge(options.url)  # declares the queue as aiotq does (priorities), for raw too
    rates: dict[str, list[float]] = {}
    for _ in range(options.rounds):
        for name in chosen:
            rates.setdefault(name, []).append(await VARIANTS[name](options.url, options.n))
            await purge(options.url)
    for name, found in rates.items():
        rate = statistics.median(found)
        ref = REFERENCE.get(name)
        ratio = f"  vs {ref} {rate / statistics.median(rates[ref]):.2f}" if ref in rates else ""
        shown = ", ".join(f"{r:.0f}" for r in found)
        print(f"{name:>11}: {rate:7.0f} msgs/s  ({shown}){ratio}")


if __name__ == "__main__":
    uvloop.run(main())
