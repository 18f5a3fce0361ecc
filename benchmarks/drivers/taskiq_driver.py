"""taskiq: `taskiq worker --workers 1 --max-async-tasks N`; results polled by wait_result()."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import Driver, options, run, scenario


class TaskiqDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        taskiq = os.path.join(os.path.dirname(sys.executable), "taskiq")
        return [taskiq, "worker", "benchmarks.drivers.taskiq_app:broker", "--workers", "1",
                "--max-async-tasks", str(opts.concurrency), "--log-level", "WARNING"]  # fmt: skip

    async def start(self, opts: argparse.Namespace) -> None:
        from benchmarks.drivers import taskiq_app

        self.app = taskiq_app
        await taskiq_app.broker.startup()
        self.port = opts.gateway_port
        self.poll_s = 0.01 if opts.tuned else 0.2  # taskiq's default check_interval is 0.2 s

    async def stop(self) -> None:
        await self.app.broker.shutdown()

    async def send(self, kind: str, i: int) -> Any:
        if kind == "noop":
            return await self.app.add.kiq(i, i)
        if kind == "io":
            return await self.app.io.kiq()
        return await self.app.sms.kiq(self.port, f"+1555{i:07d}")

    async def wait(self, handle: Any, timeout: float) -> bool:
        from taskiq.exceptions import TaskiqResultTimeoutError

        try:
            result = await handle.wait_result(check_interval=self.poll_s, timeout=timeout)
        except TaskiqResultTimeoutError:
            raise TimeoutError(f"no result in {timeout:.0f}s") from None
        return not result.is_err


if __name__ == "__main__":
    opts = options()
    run(lambda: scenario(TaskiqDriver(), opts))
