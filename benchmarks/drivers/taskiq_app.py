"""The benchmark's tasks on taskiq: a Redis list broker with the Redis result backend."""

import asyncio
import os

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from examples._gateway import post_sms

url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
pool = {"max_connection_pool_size": 250} if os.environ.get("BENCH_TUNED") == "1" else {}
broker = ListQueueBroker(url, **pool).with_result_backend(
    RedisAsyncResultBackend(url, result_ex_time=3600, **pool)
)


@broker.task(task_name="bench.add")
async def add(x: int, y: int) -> int:
    return x + y


@broker.task(task_name="bench.io")
async def io() -> None:
    await asyncio.sleep(0.1)


@broker.task(task_name="bench.sms")
async def sms(port: int, phone: str) -> None:
    await post_sms(port, phone, "your code is 1234")
