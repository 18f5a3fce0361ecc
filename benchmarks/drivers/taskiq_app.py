"""The benchmark's tasks on taskiq: a Redis list broker, or aio-pika's for the RabbitMQ rows
(BENCH_BROKER), with the Redis result backend."""

import asyncio
import os

from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from examples._gateway import post_sms

url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
broker_url = os.environ.get("BENCH_BROKER", url)
tuned = os.environ.get("BENCH_TUNED") == "1"
pool = {"max_connection_pool_size": 250} if tuned else {}
if broker_url.startswith("amqp"):
    from taskiq_aio_pika import AioPikaBroker

    # taskiq-aio-pika's default qos is 10 messages in flight; the tuned row lets 200 run
    queue_broker: AsyncBroker = AioPikaBroker(broker_url, qos=200 if tuned else 10)
else:
    queue_broker = ListQueueBroker(url, **pool)
broker = queue_broker.with_result_backend(RedisAsyncResultBackend(url, result_ex_time=3600, **pool))


@broker.task(task_name="bench.add")
async def add(x: int, y: int) -> int:
    return x + y


@broker.task(task_name="bench.io")
async def io() -> None:
    await asyncio.sleep(0.1)


@broker.task(task_name="bench.sms")
async def sms(port: int, phone: str) -> None:
    await post_sms(port, phone, "your code is 1234")
