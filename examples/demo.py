"""The main job: 2,000 SMS-like async tasks through one worker process at concurrency 200.

This script starts a small local HTTP "gateway" that answers after 100 ms and fails 2% of
requests with 503 (the task retries those with backoff), starts `aiotq worker
examples.demo:app -c 200` as a separate process on the embedded default broker (the SQLite
file ./aiotq.db, or $AIOTQ_HOME/aiotq.db: no server), sends the tasks, shows progress as
results arrive, prints a summary and stops the worker with SIGTERM. Run: `make demo`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from aiotq import App
from examples._gateway import GatewayError, post_sms, start_gateway

TASKS = 2000
CONCURRENCY = 200
GATEWAY_DELAY_S = 0.1

QUEUE = "demo-sms"

app = App("demo", task_default_queue=QUEUE)  # no broker configured: the embedded default


@app.task(
    name="demo.send_sms",  # run as __main__ here, imported as examples.demo by the worker
    autoretry_for=(GatewayError,),
    max_retries=5,
    retry_backoff=0.2,
    retry_backoff_max=2,
)
async def send_sms(port: int, phone: str, text: str) -> str:
    await post_sms(port, phone, text)
    return "sent"


def progress(done: int, total: int, started: float) -> None:
    width = 40
    filled = width * done // total
    rate = done / max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {rate:7.0f} tasks/s"
    )
    sys.stdout.flush()


async def start_worker() -> asyncio.subprocess.Process:
    command = ["-m", "aiotq", "worker", "examples.demo:app", "-c", str(CONCURRENCY), "-Q", QUEUE]
    return await asyncio.create_subprocess_exec(sys.executable, *command, "-l", "error")


async def main() -> None:
    server, port = await start_gateway(GATEWAY_DELAY_S, failure_rate=0.02)
    print(f"gateway on 127.0.0.1:{port} ({GATEWAY_DELAY_S * 1000:.0f} ms per request)")
    stale = await app.broker.purge(QUEUE)  # from an earlier, interrupted demo
    worker = await start_worker()
    async with server:
        try:
            await (await send_sms.send(port, "+15550000000", "warm-up")).get(timeout=60)
            print(f"worker pid {worker.pid} on {app.broker.url} with concurrency {CONCURRENCY}")
            print(f"sending {TASKS} tasks" + (f" (dropped {stale} stale ones)" if stale else ""))
            started = time.perf_counter()
            results = [
                await send_sms.send(port, f"+1555{i:07d}", "your code is 1234")
                for i in range(TASKS)
            ]
            failures = 0
            for done, result in enumerate(results, start=1):
                try:
                    await result.get(timeout=120)
                except Exception:
                    failures += 1
                if done % 50 == 0 or done == TASKS:
                    progress(done, TASKS, started)
            elapsed = time.perf_counter() - started
            retries = sum(result.retries or 0 for result in results)
        finally:
            worker.send_signal(signal.SIGTERM)  # warm shutdown
            code = await worker.wait()
            await app.aclose()
    print()
    limit = CONCURRENCY / GATEWAY_DELAY_S
    print(f"worker stopped cleanly (exit {code})" if code == 0 else f"worker exit {code}")
    print(
        f"tasks: {TASKS}  seconds: {elapsed:.2f}  tasks/s: {TASKS / elapsed:.0f}  "
        f"failures: {failures}  retries: {retries}  "
        f"(limit at concurrency {CONCURRENCY}: {limit:.0f}/s)"
    )


if __name__ == "__main__":
    from aiotq.app import run

    run(main())
