"""Raw aio-pika, the floor for RabbitMQ sends: persistent messages published to the same
durable queue aiotq uses (`default`, priorities 0-9, classic queue storage version 2),
each waiting for its publisher confirm. Only the sends scenario; there is no worker."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aio_pika
import uvloop

from ._common import Driver, options, run, scenario

BODY = b'{"v":1,"id":"00000000-0000-0000-0000-000000000000","task":"bench.add","args":[1,1]}'


class RawDriver(Driver):
    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        raise RuntimeError("raw aio-pika has no worker: it runs the sends scenario only")

    async def start(self, opts: argparse.Namespace) -> None:
        self.connection = await aio_pika.connect(opts.broker)
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.declare_queue(
            "default", durable=True, arguments={"x-max-priority": 9, "x-queue-version": 2}
        )
        self.exchange = channel.default_exchange

    async def stop(self) -> None:
        await self.connection.close()

    def _message(self, i: int) -> aio_pika.Message:
        return aio_pika.Message(
            BODY, message_id=str(i), content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )  # fmt: skip

    async def send(self, kind: str, i: int) -> Any:
        return await self.exchange.publish(self._message(i), "default")

    async def send_concurrent(self, kind: str, n: int) -> list[Any]:
        publish = self.exchange.publish
        return list(await asyncio.gather(*(publish(self._message(i), "default") for i in range(n))))

    async def wait(self, handle: Any, timeout: float) -> bool:
        return True


if __name__ == "__main__":
    opts = options()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as aiotq's producer
    run(lambda: scenario(RawDriver(), opts))
