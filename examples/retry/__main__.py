"""python -m examples.retry: div(2, 1) succeeds; div(2, 0) runs 4 times, 3 s apart, then fails."""

import time

from examples._worker import worker_process
from examples.retry.tasks import app, div

if __name__ == "__main__":
    with worker_process("examples.retry.tasks:app"):
        print(f"div.delay(2, 1).get() = {div.delay(2, 1).get(timeout=30)}")
        began = time.monotonic()
        result = div.delay(2, 0)
        try:
            result.get(timeout=30)
        except ZeroDivisionError as exc:
            took = time.monotonic() - began
            print(f"div.delay(2, 0) -> ZeroDivisionError({exc}) after {result.retries} retries")
            print(f"  in {took:.1f}s; state {result.state}")
    app.close()
