"""Celery: `celery worker -P prefork|gevent|threads -c N`; the producer is Celery's own (sync)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import Driver, options, run, scenario


class CeleryDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "benchmarks.drivers.celery_app", "worker",
                "-P", opts.pool or "prefork", "-c", str(opts.concurrency), "--loglevel=warning",
                "--without-heartbeat", "--without-mingle", "--without-gossip",
                # two workers on one host need two node names (on RabbitMQ each holds an
                # exclusive remote-control queue named after its node)
                "-n", "bench{index}@%h"]  # fmt: skip

    async def start(self, opts: argparse.Namespace) -> None:
        from benchmarks.drivers import celery_app

        self.app = celery_app.app
        self.port = opts.gateway_port

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return self.app.send_task("bench.add", (i, i))
        if kind == "io":
            return self.app.send_task("bench.io")
        return self.app.send_task("bench.sms", (self.port, f"+1555{i:07d}"))

    async def wait(self, handle: Any, timeout: float) -> bool:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            handle.get(timeout=timeout, propagate=True)
        except CeleryTimeout:
            raise TimeoutError(f"no result for {handle.id} in {timeout:.0f}s") from None
        except Exception:
            return False
        return True


if __name__ == "__main__":
    opts = options()
    run(lambda: scenario(CeleryDriver(), opts))
