"""The benchmark's tasks on dramatiq: its RabbitMQ broker (BENCH_BROKER, pika; sends not
confirmed, dramatiq's default) and results in Redis (BENCH_REDIS). Actors are plain
functions run by the worker's threads, dramatiq's own model (as Celery's thread pool)."""

import http.client
import json
import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
# redis-py 8 refuses a 101st connection by default; the 200 worker threads each hold one
backend = RedisBackend(url=f"{redis_url}?max_connections=250")
broker = RabbitmqBroker(url=os.environ.get("BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672/"))
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.add", store_results=True)
def add(x: int, y: int) -> int:
    return x + y


@dramatiq.actor(actor_name="bench.io", store_results=True)
def io() -> None:
    time.sleep(0.1)


@dramatiq.actor(actor_name="bench.sms", store_results=True)
def sms(port: int, phone: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/sms", json.dumps({"to": phone, "text": "your code is 1234"}),
                       {"Content-Type": "application/json"})  # fmt: skip
    status = connection.getresponse().status
    connection.close()
    if status != 200:
        raise RuntimeError(f"gateway answered {status}")
