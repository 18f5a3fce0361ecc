"""aiotq: `aiotq worker -c 200` (one event loop), producer on uvloop with awaited sends."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import uvloop

from aiotq import App

from ._common import BULK, Driver, options, run, scenario, succeeded


class AiotqDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        return [sys.executable, "-m", "aiotq", "worker", "benchmarks.drivers.aiotq_app:app",
                "-c", str(opts.concurrency), "-l", "warning"]  # fmt: skip

    async def start(self, opts: argparse.Namespace) -> None:
        self.port = opts.gateway_port
        self.app = App("bench", broker=opts.broker, backend=opts.redis)

    async def stop(self) -> None:
        await self.app.aclose()

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return await self.app.asend_task("bench.add", (i, i))
        if kind in ("io", "io-conc"):
            return await self.app.asend_task("bench.io")
        return await self.app.asend_task("bench.sms", (self.port, f"+1555{i:07d}"))

    async def send_concurrent(self, kind: str, n: int) -> list[Any]:
        return list(await asyncio.gather(*(self.send(kind, i) for i in range(n))))

    async def send_bulk(self, kind: str, n: int) -> list[Any]:
        handles: list[Any] = []
        for start in range(0, n, BULK):
            calls = [((i, i), {}) for i in range(start, min(n, start + BULK))]
            handles += await self.app.asend_many("bench.add", calls)
        return handles

    async def wait(self, handle: Any, timeout: float) -> bool:
        return await succeeded(handle.get(timeout=timeout))


if __name__ == "__main__":
    opts = options()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the producer on uvloop
    run(lambda: scenario(AiotqDriver(), opts))
