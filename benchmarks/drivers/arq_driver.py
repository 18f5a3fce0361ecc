"""arq: `arq WorkerSettings` (max_jobs = concurrency); results polled by Job.result()."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import Driver, options, run, scenario, succeeded


class ArqDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        arq = os.path.join(os.path.dirname(sys.executable), "arq")
        return [arq, "benchmarks.drivers.arq_app.WorkerSettings"]

    async def start(self, opts: argparse.Namespace) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = await create_pool(RedisSettings.from_dsn(opts.redis))
        self.port = opts.gateway_port
        self.poll_s = 0.01 if opts.tuned else 0.5  # arq's default result poll is 0.5 s

    async def stop(self) -> None:
        await self.pool.aclose()

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return await self.pool.enqueue_job("add", i, i)
        if kind == "io":
            return await self.pool.enqueue_job("io")
        return await self.pool.enqueue_job("sms", self.port, f"+1555{i:07d}")

    async def wait(self, handle: Any, timeout: float) -> bool:
        return await succeeded(handle.result(timeout=timeout, poll_delay=self.poll_s))


if __name__ == "__main__":
    opts = options()
    run(lambda: scenario(ArqDriver(), opts))
