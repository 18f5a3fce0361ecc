"""The benchmark's jobs on arq (BENCH_REDIS; max_jobs from BENCH_CONCURRENCY)."""

import asyncio
import os

from arq.connections import RedisSettings

from examples._gateway import post_sms


async def add(ctx: dict, x: int, y: int) -> int:
    return x + y


async def io(ctx: dict) -> None:
    await asyncio.sleep(0.1)


async def sms(ctx: dict, port: int, phone: str) -> None:
    await post_sms(port, phone, "your code is 1234")


class WorkerSettings:
    functions = [add, io, sms]
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
    )
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "200"))
    # tuned: poll the queue more often than the default 0.5 s when idle
    poll_delay = 0.01 if os.environ.get("BENCH_TUNED") == "1" else 0.5
    keep_result = 3600
    log_results = False
