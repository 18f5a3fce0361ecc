"""dramatiq: `dramatiq --processes 1 --threads N` on its RabbitMQ broker; results from
Redis with `message.get_result(block=True)` (its producer is pika's blocking client, so the
driver's sends and waits block: one at a time, as the scenarios send)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ._common import Driver, options, run, scenario


class DramatiqDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        dramatiq = os.path.join(os.path.dirname(sys.executable), "dramatiq")
        return [dramatiq, "benchmarks.drivers.dramatiq_app", "--processes", "1",
                "--threads", str(opts.concurrency)]  # fmt: skip

    async def start(self, opts: argparse.Namespace) -> None:
        from benchmarks.drivers import dramatiq_app

        self.app = dramatiq_app
        self.port = opts.gateway_port

    async def stop(self) -> None:
        self.app.broker.close()

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return self.app.add.send(i, i)
        if kind == "io":
            return self.app.io.send()
        return self.app.sms.send(self.port, f"+1555{i:07d}")

    async def wait(self, handle: Any, timeout: float) -> bool:
        from dramatiq.results import ResultFailure, ResultTimeout

        # in steps of 4 s: redis-py's default socket timeout (5 s) ends a longer BRPOPLPUSH
        deadline = time.monotonic() + timeout
        while True:
            step = max(1.0, min(4.0, deadline - time.monotonic()))
            try:
                handle.get_result(backend=self.app.backend, block=True, timeout=int(step * 1000))
            except ResultTimeout:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no result in {timeout:.0f}s") from None
                continue
            except ResultFailure:
                return False
            return True


if __name__ == "__main__":
    opts = options()
    run(lambda: scenario(DramatiqDriver(), opts))
