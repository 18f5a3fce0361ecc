"""Broker implementations by URL scheme: one module and one line in SCHEMES each.

Imported lazily, so `memory://` needs neither redis nor aio-pika at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..urls import AMQP_SCHEMES, amqp_url, choose, redis_url, scheme_of

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import Broker


def _memory(url: str, settings: Settings) -> Any:
    from .memory import MemoryBroker

    return MemoryBroker(url)


def _redis(url: str, settings: Settings) -> Any:
    if settings.task_protocol == "celery":
        return _celery_redis(url, settings)
    from .redis import RedisBroker

    return RedisBroker(
        redis_url(url),
        pool_size=settings.broker_pool_size,
        connect_timeout_s=settings.broker_connection_timeout_s,
        visibility_timeout_s=settings.broker_visibility_timeout_s,
        publish_retry_s=settings.broker_publish_retry_s,
        socket_timeout_s=settings.broker_socket_timeout_s,
        transport_options=settings.broker_transport_options,  # sentinel://'s master_name
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_s=settings.redis_wait_timeout_s,
    )


def _celery_redis(url: str, settings: Settings) -> Any:
    from .celery_redis import celery_redis_broker

    return celery_redis_broker(redis_url(url.removeprefix("celery+")), settings)


def _sqlite(url: str, settings: Settings) -> Any:
    from .sqlite import SqliteBroker

    return SqliteBroker(
        url,
        visibility_timeout_s=settings.broker_visibility_timeout_s,
        busy_timeout_s=settings.sqlite_busy_timeout_s,
    )


def _amqp(url: str, settings: Settings) -> Any:
    if settings.task_protocol == "celery":
        return _celery_amqp(url, settings)
    from ..routing import queue_arguments
    from .amqp import AmqpBroker

    return AmqpBroker(
        amqp_url(url),
        connect_timeout_s=settings.broker_connection_timeout_s,
        publish_retry_s=settings.broker_publish_retry_s,
        queue_type=settings.broker_queue_type,
        queue_arguments=queue_arguments(settings.task_queues),
    )


def _celery_amqp(url: str, settings: Settings) -> Any:
    from .celery_amqp import celery_amqp_broker

    return celery_amqp_broker(amqp_url(url.removeprefix("celery+")), settings)


class Scheme(NamedTuple):
    make: Callable[[str, Settings], Any]
    # the result backend when none is configured; None: the broker keeps results itself,
    # at its own URL. RabbitMQ keeps none: replies go to the caller's own queue.
    results: str | None = None


SCHEMES = {
    "memory": Scheme(_memory),
    # amqp, amqps and kombu's other names for them (pyamqp, librabbitmq)
    **{scheme: Scheme(_amqp, results="rpc://") for scheme in AMQP_SCHEMES},
    "sqlite": Scheme(_sqlite),
    "redis": Scheme(_redis),
    "rediss": Scheme(_redis),
    "redis+socket": Scheme(_redis),
    "sentinel": Scheme(_redis),  # kombu's sentinel://host:26379;sentinel://...
    "redis+cluster": Scheme(_redis),  # Redis Cluster's seed nodes: host:port,host:port
    # Celery's wire protocol whatever task_protocol says (docs/celery-wire.md)
    "celery+redis": Scheme(_celery_redis),
    "celery+rediss": Scheme(_celery_redis),
    "celery+amqp": Scheme(_celery_amqp, results="rpc://"),
    "celery+amqps": Scheme(_celery_amqp, results="rpc://"),
}


def make_broker(url: str, settings: Settings) -> Broker:
    factories = {name: scheme.make for name, scheme in SCHEMES.items()}
    broker: Broker = choose(url, factories, "broker", settings)
    return broker


def default_backend_url(broker_url: str) -> str:
    """The result backend of a broker URL when none is configured."""
    scheme = SCHEMES.get(scheme_of(broker_url))
    return scheme.results if scheme is not None and scheme.results else broker_url
