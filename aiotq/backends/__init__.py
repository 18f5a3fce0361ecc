"""Result backends by URL scheme: one module and one line in SCHEMES each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..urls import choose

if TYPE_CHECKING:
    from ..brokers.base import Broker
    from ..settings import Settings
    from .base import Backend


def _memory(url: str, settings: Settings, broker: Broker) -> Any:
    from .memory import MemoryBackend

    return MemoryBackend(url)


def _redis(url: str, settings: Settings, broker: Broker) -> Any:
    from .redis import RedisBackend

    return RedisBackend(
        url,
        pool_size=settings.broker_pool_size,
        connect_timeout_s=settings.broker_connection_timeout_s,
        socket_timeout_s=settings.broker_socket_timeout_s,
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
}


def make_backend(url: str, settings: Settings, broker: Broker) -> Backend:
    backend: Backend = choose(url, SCHEMES, "result backend", settings, broker)
    return backend
