"""python -m examples.quickstart   (or: `aiotq worker examples.quickstart.tasks:app` in one
terminal and this in another, with AIOTQ_NO_WORKER=1)."""

import os

from examples._worker import worker_process
from examples.quickstart.tasks import add, app, mul, xsum


def main() -> None:
    result = add.delay(1, 9)  # delay() is the short form of apply_async()
    print(f"add.delay(1, 9) -> {result.id}")
    print(f"  .get() = {result.get(timeout=30)}  status = {result.status}")
    result = mul.apply_async((2, 4))
    print(f"mul.apply_async((2, 4)).get() = {result.get(timeout=10)}")
    print(f"  ready() = {result.ready()}  successful() = {result.successful()}")
    print(f"xsum.delay([1, 2, 3]).get() = {xsum.delay([1, 2, 3]).get(timeout=10)}")
    again = app.AsyncResult(result.id)  # a result found later by its id alone
    print(f"app.AsyncResult({result.id!r}).get() = {again.get(timeout=10)}")
    try:
        add.delay(1)
    except TypeError as exc:  # bad arguments fail here, at send time, not in the worker
        print(f"add.delay(1) -> TypeError: {exc}")


if __name__ == "__main__":
    if os.environ.get("AIOTQ_NO_WORKER"):
        main()
    else:
        with worker_process("examples.quickstart.tasks:app"):
            main()
    app.close()
