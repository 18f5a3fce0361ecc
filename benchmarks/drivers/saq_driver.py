"""saq: `saq settings` (concurrency N); results by Job.refresh(until_complete=...)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

from ._common import Driver, options, run, scenario


class SaqDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        saq = os.path.join(os.path.dirname(sys.executable), "saq")
        return [saq, "benchmarks.drivers.saq_app.settings", "--workers", "1"]

    async def start(self, opts: argparse.Namespace) -> None:
        from benchmarks.drivers import saq_app

        self.queue = saq_app.queue
        await self.queue.connect()
        self.port = opts.gateway_port

    async def stop(self) -> None:
        await self.queue.disconnect()

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return await self.queue.enqueue("add", x=i, y=i)
        if kind == "io":
            return await self.queue.enqueue("io")
        return await self.queue.enqueue("sms", port=self.port, phone=f"+1555{i:07d}")

    async def wait(self, handle: Any, timeout: float) -> bool:
        from saq.job import Status

        # Job.refresh(until_complete=) reads, then subscribes: a job finishing in between is
        # waited for until the timeout. Short waits in a loop bound that race to 0.1 s.
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(TimeoutError):  # saq's listen raises when its time is up
                await handle.refresh(until_complete=0.1)
            if handle.status in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {handle.key} not done in {timeout:.0f}s")
        return bool(handle.status == Status.COMPLETE)


if __name__ == "__main__":
    opts = options()
    run(lambda: scenario(SaqDriver(), opts))
