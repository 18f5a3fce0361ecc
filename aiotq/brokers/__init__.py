"""Broker implementations by URL scheme: one module and one line in SCHEMES each.

Imported lazily, so `memory://` needs neither redis nor aio-pika at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..urls import choose

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Broker


def _memory(url: str, settings: Settings) -> Any:
    from .memory import MemoryBroker

    return MemoryBroker(url)


def _redis(url: str, settings: Settings) -> Any:
    from .redis import RedisBroker

    return RedisBroker(
        url,
        pool_size=settings.broker_pool_size,
        connect_timeout_s=settings.broker_connection_timeout_s,
        visibility_timeout_s=settings.broker_visibility_timeout_s,
        publish_retry_s=settings.broker_publish_retry_s,
        socket_timeout_s=settings.broker_socket_timeout_s,
    )


def _sqlite(url: str, settings: Settings) -> Any:
    from .sqlite import SqliteBroker

    return SqliteBroker(
        url,
        visibility_timeout_s=settings.broker_visibility_timeout_s,
        busy_timeout_s=settings.sqlite_busy_timeout_s,
    )


def _amqp(url: str, settings: Settings) -> Any:
    from ..routing import queue_arguments
    from .amqp import AmqpBroker

    return AmqpBroker(
        url,
        connect_timeout_s=settings.broker_connection_timeout_s,
        publish_retry_s=settings.broker_publish_retry_s,
        queue_type=settings.broker_queue_type,
        queue_arguments=queue_arguments(settings.task_queues),
    )


SCHEMES = {
    "memory": _memory,
    "amqp": _amqp,
    "amqps": _amqp,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "redis+socket": _redis,
}


def make_broker(url: str, settings: Settings) -> Broker:
    broker: Broker = choose(url, SCHEMES, "broker", settings)
    return broker
