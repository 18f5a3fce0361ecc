"""Result backends by URL scheme: one module and one line in SCHEMES each. (A broker that keeps
no results names its default backend in its own line of brokers/__init__.py's SCHEMES.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..urls import choose, redis_url
from .base import Coordinator

if TYPE_CHECKING:
    from ..brokers.base import Broker
    from ..settings import Settings
    from .base import ResultStore


def _memory(url: str, settings: Settings, broker: Broker) -> Any:
    from .memory import MemoryBackend

    return MemoryBackend(url)


def _redis(url: str, settings: Settings, broker: Broker) -> Any:
    if settings.task_protocol == "celery":
        return _celery_redis(url, settings, broker)
    from .redis import RedisBackend

    return RedisBackend(redis_url(url), **_redis_options(url, settings))


def _redis_options(url: str, settings: Settings) -> dict[str, Any]:
    """A backend on the broker's own URL takes broker_transport_options (a sentinel://'s
    master_name) unless result_backend_transport_options are set, as its URL is the same."""
    options = settings.result_backend_transport_options
    if not options and url == settings.broker_url:
        options = settings.broker_transport_options
    return {
        "pool_size": settings.broker_pool_size,
        "connect_timeout_s": settings.broker_connection_timeout_s,
        "socket_timeout_s": settings.broker_socket_timeout_s,
        "transport_options": options,
        "wait_replicas": settings.redis_wait_replicas,
        "wait_timeout_s": settings.redis_wait_timeout_s,
    }


def _celery_redis(url: str, settings: Settings, broker: Broker) -> Any:
    from .celery_redis import CeleryRedisBackend

    return CeleryRedisBackend(
        redis_url(url.removeprefix("celery+")),
        serializer=settings.result_serializer,
        **_redis_options(url, settings),
    )


def _sqlite(url: str, settings: Settings, broker: Broker) -> Any:
    from .sqlite import SqliteBackend

    return SqliteBackend(url, busy_timeout_s=settings.sqlite_busy_timeout_s)


def _rpc(url: str, settings: Settings, broker: Broker) -> Any:
    from .rpc import RpcBackend

    return RpcBackend(url, broker)


SCHEMES = {
    "rpc": _rpc,
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "redis+socket": _redis,
    "sentinel": _redis,
    "redis+cluster": _redis,
    "celery+redis": _celery_redis,  # Celery's result format whatever task_protocol says
    "celery+rediss": _celery_redis,
}


def make_backend(url: str, settings: Settings, broker: Broker) -> ResultStore:
    """The result store of `url`; also the app's coordinator where it is one
    (`make_coordinator`): every store but rpc://'s."""
    store: ResultStore = choose(url, SCHEMES, "result backend", settings, broker)
    return store


def make_coordinator(store: ResultStore) -> Coordinator | None:
    """The coordinator that goes with a result store: the store itself, when it is one. None
    for rpc://, which keeps nothing: what needs one (chords, beat) refuses it, saying so."""
    return store if isinstance(store, Coordinator) else None
