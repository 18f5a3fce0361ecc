"""What the Redis broker and backend share: URL parsing, per-loop clients, error mapping."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ._loops import PerLoop
from .exceptions import (
    AccessRefused,
    BackendConnectionError,
    BackendError,
    BackendUnavailable,
    BrokerConnectionError,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
)
from .urls import mask_password

CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


# The server refused who we are (password, user, ACL rights): the same credentials are
# refused again. redis-py maps the NOAUTH, WRONGPASS and NOPERM replies to these classes.
ACCESS_ERRORS = (
    redis_errors.AuthenticationError,  # a ConnectionError subclass: caught before those
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
)


def retry_may_help(exc: BaseException) -> bool:
    """A refused certificate stays refused and a server of another protocol stays one:
    retrying only delays the real error. Looks down the chain of causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (ssl.SSLCertVerificationError, redis_errors.InvalidResponse)):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


class BoundedPool(aioredis.ConnectionPool):
    """A pool whose callers wait for a free connection instead of opening one per task.

    redis-py's BlockingConnectionPool does the same behind a Condition and a timeout block
    on every command; a semaphore costs a fraction of that on the producer's hot path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._slots.acquire()
        try:
            return await super().get_connection(*args, **kwargs)
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._slots.release()


def pool_for(
    url: str, max_connections: int, timeout_s: float, socket_timeout_s: float | None = None
) -> BoundedPool:
    """A bounded pool: callers wait for a free connection instead of opening one per task."""
    try:
        return BoundedPool.from_url(
            url.replace("redis+socket://", "unix://", 1),
            max_connections=max_connections,
            socket_connect_timeout=timeout_s,
            socket_timeout=socket_timeout_s,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {mask_password(url)!r}: {exc}") from None


class LoopClients:
    """One redis client (with its bounded pool) per event loop (a `PerLoop`): redis.asyncio
    objects are bound to the loop they first ran on, and a producer's portal loop differs
    from a worker's."""

    def __init__(
        self,
        url: str,
        max_connections: int,
        timeout_s: float,
        socket_timeout_s: float | None = None,
    ) -> None:
        self.url = url
        self._max = max_connections
        self._timeout_s = timeout_s
        # a server that never answers is an error: every command is bounded by `guarded()`
        # (asyncio.timeout), not by redis-py's socket_timeout, which costs a Task per send
        self.socket_timeout_s = socket_timeout_s
        self._clients: PerLoop[aioredis.Redis] = PerLoop(self._client)
        self.get = self._clients.get  # this loop's client: bound once, called on every command

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis(connection_pool=pool_for(self.url, self._max, self._timeout_s))

    def dedicated(self, socket_timeout_s: float | None = None) -> aioredis.Redis:
        """A client with its own connection, for blocking reads and pub/sub. A socket timeout
        above the longest BLOCK turns a wedged read into an error and a fresh connection."""
        return aioredis.Redis(
            connection_pool=pool_for(self.url, 2, self._timeout_s, socket_timeout_s)
        )

    def guarded(self, error: type[Exception]) -> AbstractAsyncContextManager[None]:
        """`translated()` for this URL, bounded by the socket timeout."""
        return translated(self.url, error, self.socket_timeout_s)

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()


# Replies of a server that is up but cannot do this now: they pass (memory freed, a failover
# done, a dump loaded, a disk fixed), so they are retried like a lost connection.
PASSING_REPLIES = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
PASSING_PREFIXES = ("MISCONF", "NOREPLICAS", "LOADING", "MASTERDOWN", "BUSY ")

# For each side, the error for "unreachable", "up but refusing for now" and "refused for good".
FAMILIES: dict[type[Exception], tuple[type[Exception], type[Exception]]] = {
    BrokerConnectionError: (BrokerUnavailable, BrokerError),
    BackendConnectionError: (BackendUnavailable, BackendError),
}


def passes(exc: redis_errors.ResponseError) -> bool:
    return isinstance(exc, PASSING_REPLIES) or str(exc).startswith(PASSING_PREFIXES)


# What a redis call may raise that `translate()` turns into one of aiotq's own.
REDIS_ERRORS = (redis_errors.RedisError, OSError)  # TimeoutError is an OSError


def translate(
    url: str, error: type[Exception], exc: BaseException, timeout_s: float | None = None
) -> Exception:
    """aiotq's error for a redis one, naming the masked URL: `error` (a connection error
    class) when unreachable or silent past `timeout_s`, AccessRefused for refused
    credentials, ConfigurationError for another protocol, the family's Unavailable when the
    reply says "not now" and its final error for any other refusal."""
    where = mask_password(url)
    if isinstance(exc, TimeoutError):  # a paused or wedged server: the connection is dropped
        within = f" within {timeout_s:g}s (broker_socket_timeout_s)" if timeout_s else ""
        return error(f"cannot reach Redis at {where}: no answer{within}")
    if isinstance(exc, ACCESS_ERRORS):  # AuthenticationError is a ConnectionError: first
        return AccessRefused(f"Redis at {where} refused access: {exc}")
    if isinstance(exc, redis_errors.InvalidResponse):  # retrying cannot make it speak Redis
        return ConfigurationError(
            f"{where} answered, but not in the Redis protocol (another service on that"
            f" port?): {exc}"
        )
    if isinstance(exc, CONNECTION_ERRORS):
        return error(f"cannot reach Redis at {where}: {exc}")
    unavailable, final = FAMILIES[error]
    if isinstance(exc, redis_errors.ResponseError) and passes(exc):
        return unavailable(f"Redis at {where} refused: {exc}")
    return final(f"Redis at {where} refused: {exc}")


@asynccontextmanager
async def translated(
    url: str, error: type[Exception], timeout_s: float | None = None
) -> AsyncIterator[None]:
    """Run the block bounded by `timeout_s`, its redis errors translated (`translate()`)."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except REDIS_ERRORS as exc:
        raise translate(url, error, exc, timeout_s) from exc
