"""The Celery side of tests/test_celery_wire.py, run by Celery's own interpreter
(.venv-celery): `celery -A celery_side worker`, or `python celery_side.py produce` (sends
one of each case to an aiotq worker and prints what `get()` returned, as JSON).

Configured from the environment: WIRE_BROKER, WIRE_BACKEND, WIRE_SERIALIZER, WIRE_QUEUE.
The tasks have the same names as the aiotq ones in the test, so either side runs either.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta

from celery import Celery, chain

serializer = os.environ.get("WIRE_SERIALIZER", "json")
app = Celery("wire", broker=os.environ["WIRE_BROKER"], backend=os.environ["WIRE_BACKEND"])
app.conf.update(
    task_serializer=serializer,
    result_serializer=serializer,
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    task_default_queue=os.environ.get("WIRE_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_extended=True,
)


@app.task(name="wire.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="wire.fail")
def fail(text: str) -> None:
    raise ValueError(text)


@app.task(name="wire.flaky", bind=True, max_retries=3)
def flaky(self, value: int) -> int:  # type: ignore[no-untyped-def]
    if self.request.retries < 1:
        raise self.retry(countdown=0.2)
    return value * 10 + self.request.retries


@app.task(name="wire.on_error")
def on_error(task_id: str) -> str:
    return f"handled {task_id}"


@app.task(name="wire.sync_mul")
def sync_mul(x: int, y: int) -> int:
    return x * y


@app.task(name="wire.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def produce() -> None:
    """One of each case for an aiotq worker; every outcome is printed, none raises."""
    out: dict[str, object] = {}

    def case(name: str, call) -> None:  # type: ignore[no-untyped-def]
        try:
            out[name] = call()
        except Exception as exc:
            out[name] = {"raised": type(exc).__name__, "module": type(exc).__module__,
                         "args": [str(a) for a in exc.args]}  # fmt: skip
            if not isinstance(exc, ValueError | type(None)):
                out[name]["trace"] = traceback.format_exc()[-2000:]  # type: ignore[index]

    case("sum", lambda: add.delay(2, 3).get(timeout=20))
    case("priority", lambda: add.apply_async((1, 1), priority=5).get(timeout=20))

    def countdown() -> list[float]:
        sent = time.time()
        value = add.apply_async((20, 1), countdown=1).get(timeout=20)
        return [value, time.time() - sent]

    case("countdown", countdown)
    case("chain", lambda: chain(add.s(1, 2), add.s(3), add.s(4)).apply_async().get(timeout=20))

    def linked() -> list[int]:
        callback = add.s(100)
        callback.freeze()
        first = add.apply_async((1, 2), link=callback).get(timeout=20)
        return [first, app.AsyncResult(callback.id).get(timeout=20)]

    case("link", linked)

    def errback() -> object:
        handler = app.signature("wire.on_error")
        handler.freeze()
        result = fail.apply_async(("linked boom",), link_error=handler)
        with contextlib.suppress(ValueError):
            result.get(timeout=20)
        return app.AsyncResult(handler.id).get(timeout=20)

    case("errback", errback)
    case("failure", lambda: fail.delay("boom").get(timeout=20))
    case("retry", lambda: flaky.delay(4).get(timeout=20))
    case("sync", lambda: app.signature("wire.sync_mul", (6, 7)).delay().get(timeout=20))
    past = datetime.now(UTC) - timedelta(seconds=5)
    case("expired", lambda: add.apply_async((1, 1), expires=past).get(timeout=20))
    case(
        "soft_limit",
        lambda: (
            app.signature("wire.sleep", (3,))
            .apply_async(soft_time_limit=0.3, time_limit=10)
            .get(timeout=20)
        ),
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["produce"]:
    produce()
