"""The benchmark's tasks on Celery (broker BENCH_BROKER, results in Redis: BENCH_REDIS)."""

import http.client
import json
import os
import time

from celery import Celery

url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
app = Celery("bench", broker=os.environ.get("BENCH_BROKER", url), backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # the tuned row: the result backend's client shared safely by gevent / thread pools
    result_backend_thread_safe=os.environ.get("BENCH_TUNED") == "1",
    redis_max_connections=250 if os.environ.get("BENCH_TUNED") == "1" else None,
)


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="bench.io")
def io() -> None:
    time.sleep(0.1)


@app.task(name="bench.sms")
def sms(port: int, phone: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/sms", json.dumps({"to": phone, "text": "your code is 1234"}),
                       {"Content-Type": "application/json"})  # fmt: skip
    status = connection.getresponse().status
    connection.close()
    if status != 200:
        raise RuntimeError(f"gateway answered {status}")
