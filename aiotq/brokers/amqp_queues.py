"""Declaring aiotq's queues on RabbitMQ, classic ones in the version 2 storage (CQv2).

RabbitMQ 3.10+ stores a classic queue declared with `x-queue-version: 2` in per-queue
segment files instead of version 1's journal; RabbitMQ recommends it for every new
deployment and 4.0 has no other. It confirms a persistent message once the message is
written to those files, where version 1 fsyncs for each confirm: a sequential confirmed
send is twice as fast on this project's machine (docs/benchmarks.md says what each send
promises). RabbitMQ before 3.10 ignores the argument.

A queue declared before aiotq asked for version 2 has no such argument, and RabbitMQ refuses
a declaration whose arguments differ from the queue's. Such a queue is used as it is (its
messages stay where they are) with one warning; RabbitMQ's `queue-version` policy converts
it in place. Each queue's arguments are settled once per broker, on a channel of their own
(a refused declaration closes its channel). Each declaration waits `timeout_s` at most: a
server that accepts and never answers raises TimeoutError (a connection error to the
broker's callers, which retry within their own bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

log = logging.getLogger("aiotq.broker")

QUEUE_VERSION = "x-queue-version"
CLASSIC_V2 = {QUEUE_VERSION: 2}


class QueueDeclarations:
    """The arguments each queue is declared with: aiotq's, or those of the queue found."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._settled: dict[str, Mapping[str, Any] | None] = {}

    async def declare(
        self,
        connection: AbstractConnection,
        channel: AbstractChannel,
        name: str,
        arguments: Mapping[str, Any] | None,
    ) -> AbstractQueue:
        async with asyncio.timeout(self.timeout_s):
            if name not in self._settled:
                self._settled[name] = await self._settle(connection, name, arguments)
            settled = self._settled[name]
            return await channel.declare_queue(
                name, durable=True, arguments=dict(settled) if settled else None
            )

    async def _settle(
        self, connection: AbstractConnection, name: str, arguments: Mapping[str, Any] | None
    ) -> Mapping[str, Any] | None:
        if not arguments or QUEUE_VERSION not in arguments:
            return arguments
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(name, durable=True, arguments=dict(arguments))
            return arguments
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if QUEUE_VERSION not in str(exc):
                raise
            log.warning(
                "RabbitMQ queue %r exists as a classic queue of version 1: used as it is"
                " (the policy queue-version: 2 converts it; docs/rabbitmq-cluster.md)",
                name,
            )
            return {key: value for key, value in arguments.items() if key != QUEUE_VERSION}
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
