"""python -m examples.sms: 200 SMS against a gateway that fails 25% of requests."""

import asyncio
import time

from aiotq.app import run
from examples._gateway import start_gateway
from examples._worker import worker_process
from examples.sms.tasks import app, send_sms


async def main() -> None:
    server, port = await start_gateway(delay_s=0.05, failure_rate=0.25)
    async with server:
        started = time.perf_counter()
        results = [await send_sms.send(port, f"+1555{i:07d}", f"{i:04d}") for i in range(200)]
        outcomes = await asyncio.gather(
            *(result.get(timeout=60) for result in results), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
    sent = sum(isinstance(outcome, str) for outcome in outcomes)
    retries = [result.retries for result in results]
    print(f"sent {sent} of {len(results)} in {elapsed:.2f}s")
    print(f"retries: {sum(retries)} in all, at most {max(retries)} for one message")
    for result, outcome in zip(results, outcomes, strict=True):
        if not isinstance(outcome, str):
            print(f"  {result.id} failed after {result.retries} retries: {outcome!r}")
    await app.aclose()


if __name__ == "__main__":
    with worker_process("examples.sms.tasks:app", "--concurrency", "200"):
        run(main())
