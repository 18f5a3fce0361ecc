"""The benchmark's jobs on saq (BENCH_REDIS; concurrency from BENCH_CONCURRENCY)."""

import asyncio
import os

from saq import Queue

from examples._gateway import post_sms

queue = Queue.from_url(os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14"))


async def add(ctx: dict, *, x: int, y: int) -> int:
    return x + y


async def io(ctx: dict) -> None:
    await asyncio.sleep(0.1)


async def sms(ctx: dict, *, port: int, phone: str) -> None:
    await post_sms(port, phone, "your code is 1234")


settings = {
    "queue": queue,
    "functions": [add, io, sms],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "200")),
}
