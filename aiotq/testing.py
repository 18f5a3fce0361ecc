"""Testing helpers and a pytest plugin (registered through the `pytest11` entry point).

    from aiotq.testing import run_worker

    async def test_sends_sms():
        app = App("t", broker="memory://")
        async with run_worker(app):
            result = await send_sms.send("+1555", "hi")
            assert await result.get(timeout=5) == "sent"

The worker runs in the test's own event loop on the same broker code as production, so a
test sees retries, time limits and routing exactly as a deployment would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .app import App
from .worker.worker import Worker


@contextlib.asynccontextmanager
async def run_worker(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 20,
    shutdown_timeout_s: float = 5.0,
    **options: Any,
) -> AsyncIterator[Worker]:
    """Run an in-process worker until the block ends (warm stop, then cold after the timeout)."""
    worker = Worker(
        app,
        queues=queues,
        concurrency=concurrency,
        shutdown_timeout_s=shutdown_timeout_s,
        handle_signals=False,
        **options,
    )
    running = asyncio.create_task(worker.run(), name="aiotq-test-worker")
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        running.result()  # a start-up error surfaces here
    try:
        yield worker
    finally:
        if not worker.stopping:
            worker.stop()
        await running
