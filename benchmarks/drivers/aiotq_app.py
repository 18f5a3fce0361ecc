"""The benchmark's tasks on aiotq (broker BENCH_BROKER, results in Redis: BENCH_REDIS)."""

import asyncio
import os

from aiotq import App
from examples._gateway import post_sms

redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
app = App("bench", broker=os.environ.get("BENCH_BROKER", redis), backend=redis)


@app.task(name="bench.add")
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="bench.io")
async def io() -> None:
    await asyncio.sleep(0.1)


@app.task(name="bench.sms")
async def sms(port: int, phone: str) -> None:
    await post_sms(port, phone, "your code is 1234")
