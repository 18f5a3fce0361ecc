"""What the Redis broker and backend share: URL parsing, per-loop clients, error mapping."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from ._loops import PerLoop
from ._redis_cluster import BoundedCluster, cluster_may_pass, nodes_of
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
from .urls import cluster_nodes, db_of, mask_password, scheme_of, sentinel_nodes

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


class BoundedSentinelPool(BoundedPool, SentinelConnectionPool):
    """BoundedPool's bound on redis-py's pool whose connections ask the sentinels where the
    master is (on each connect: a failover is followed by reconnecting)."""


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


class SentinelTarget:
    """The master of a `sentinel://` URL, found through the sentinels: kombu's transport
    options `master_name` (required), `sentinel_kwargs` (the sentinels' own connection
    options, such as their password) and `min_other_sentinels`."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.nodes = sentinel_nodes(url)
        name = options.get("master_name")
        if not name or not isinstance(name, str):
            raise ConfigurationError(
                f"{mask_password(url)!r} needs the master's name: set broker_transport_options"
                f" = {{'master_name': 'mymaster'}} (result_backend_transport_options for the"
                f" result backend)"
            )
        self.master_name = name
        self.sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
        self.min_other_sentinels = int(options.get("min_other_sentinels") or 0)

    def client(
        self, max_connections: int, timeout_s: float, socket_timeout_s: float | None
    ) -> aioredis.Redis:
        """A client of the master, with a Sentinel of its own (its clients are bound to this
        loop, like the pool's): `close()` closes both."""
        sentinel = Sentinel(
            self.nodes.nodes,
            min_other_sentinels=self.min_other_sentinels,
            # a sentinel that never answers must not hold a connect: bounded like one; and
            # one that is down is skipped at once (redis-py would retry it with backoff
            # before asking the next), our callers retry with their own
            sentinel_kwargs={
                "socket_connect_timeout": timeout_s,
                "socket_timeout": timeout_s,
                "retry": Retry(NoBackoff(), 0),
                **self.sentinel_kwargs,
            },
        )
        client: aioredis.Redis = sentinel.master_for(
            self.master_name,
            connection_pool_class=BoundedSentinelPool,
            max_connections=max_connections,
            db=self.nodes.db,
            username=self.nodes.username,
            password=self.nodes.password,
            socket_connect_timeout=timeout_s,
            socket_timeout=socket_timeout_s,
            health_check_interval=30,
        )
        return client


async def close(client: Any) -> None:
    """Close a client LoopClients made, with its pool (and a Sentinel's sentinel clients)."""
    await client.aclose()
    if isinstance(client, RedisCluster):
        return  # its aclose() closed every node's connections
    pool = client.connection_pool
    await pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


class LoopClients:
    """One redis client (with its bounded pool) per event loop (a `PerLoop`): redis.asyncio
    objects are bound to the loop they first ran on, and a producer's portal loop differs
    from a worker's. `sentinel://` reaches the master through the sentinels (`SentinelTarget`,
    from the transport options); `redis+cluster://`, or a `redis://` node that answers
    `cluster_enabled:1` (asked once, on first use), is a Redis Cluster (`_redis_cluster.py`)."""

    def __init__(
        self,
        url: str,
        max_connections: int,
        timeout_s: float,
        socket_timeout_s: float | None = None,
        *,
        transport_options: Mapping[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
        cluster_refused: str | None = None,
    ) -> None:
        """`cluster_refused`: why this layout cannot run on a Redis Cluster (ConfigurationError
        when the URL is one)."""
        self.url = url
        self._max = max_connections
        self._timeout_s = timeout_s
        # a server that never answers is an error: every command is bounded by `guarded()`
        # (asyncio.timeout), not by redis-py's socket_timeout, which costs a Task per send
        self.socket_timeout_s = socket_timeout_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_s = wait_timeout_s
        self._cluster_refused = cluster_refused
        scheme = scheme_of(url)
        self._sentinel = (
            SentinelTarget(url, transport_options or {}) if scheme == "sentinel" else None
        )
        self._seeds = cluster_nodes(url) if scheme == "redis+cluster" else None
        # None: a redis:// or rediss:// node, which may be a Cluster's (asked on first use)
        self.cluster: bool | None = None if scheme in ("redis", "rediss") else bool(self._seeds)
        if self.cluster:
            self._refuse_cluster()
        self._clients: PerLoop[Any] = PerLoop()

    def _refuse_cluster(self) -> None:
        if self._cluster_refused:
            raise ConfigurationError(
                f"{mask_password(self.url)} is a Redis Cluster: {self._cluster_refused}"
            )

    async def _make(self, max_connections: int, socket_timeout_s: float | None) -> Any:
        if self._sentinel is not None:
            return self._sentinel.client(max_connections, self._timeout_s, socket_timeout_s)
        if not self.cluster:
            pool = pool_for(self.url, max_connections, self._timeout_s, socket_timeout_s)
            return aioredis.Redis(connection_pool=pool)
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_connect_timeout": self._timeout_s,
            "socket_timeout": socket_timeout_s,
            "health_check_interval": 30,
            # no retries with backoff inside redis-py (ours back off, within our bounds); a
            # lost node still marks the slots map for a refresh before the next command
            "retry": Retry(NoBackoff(), 0),
        }
        client: Any
        if self._seeds is not None:
            seeds = self._seeds
            client = BoundedCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in seeds.nodes],
                username=seeds.username,
                password=seeds.password,
                **options,
            )
        else:
            client = BoundedCluster.from_url(self.url, **options)
        try:  # the slots map: WAIT and the result listener name nodes before any command
            await client.initialize()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _detect(self) -> Any:
        """A redis:// URL's first client: a plain one, kept unless its server is a Cluster's
        node. A server that refuses INFO (ACL) is taken for a plain one."""
        probe = await self._make(self._max, None)
        try:
            info = await probe.info("cluster")
        except redis_errors.ResponseError as exc:  # a cluster's node refuses a SELECT of db 1+
            info = {"cluster_enabled": 1} if "in cluster mode" in str(exc) else {}
        except BaseException:
            await close(probe)
            raise
        if str(info.get("cluster_enabled", 0)) != "1":
            self.cluster = False
            return probe
        await close(probe)
        if self._cluster_refused:
            self._refuse_cluster()
        if db_of(self.url):
            raise ConfigurationError(
                f"{mask_password(self.url)} is a Redis Cluster, which has db 0 only"
            )
        self.cluster = True
        return await self._make(self._max, None)

    async def client(self) -> Any:
        """This loop's client (made on first use: a `redis.asyncio.Redis`, or a BoundedCluster
        when `cluster`)."""
        client = self._clients.peek()
        if client is not None:
            return client
        made = await (self._detect() if self.cluster is None else self._make(self._max, None))
        client = self._clients.peek()  # another first caller may have made one meanwhile
        if client is not None:
            await close(made)
            return client
        self._clients.set(made)
        return made

    async def dedicated(self, socket_timeout_s: float | None = None, connections: int = 2) -> Any:
        """A client with its own connections, for blocking reads. A socket timeout above the
        longest BLOCK turns a wedged read into an error and a fresh connection."""
        if self.cluster is None:
            await self.client()  # which kind
        return await self._make(connections, socket_timeout_s)

    async def subscriber(self) -> aioredis.Redis:
        """A plain client for pub/sub: on a Cluster, to one of its nodes, picked at random
        (the cluster forwards every PUBLISH to each node); call again after losing it."""
        cluster = await self.client()
        if not self.cluster:
            return await self._make(2, None)
        node = random.choice(cluster.get_nodes())
        if self._seeds is not None:
            seeds, auth = self._seeds, ""
            if seeds.password is not None:
                auth = f"{quote(seeds.username or '', safe='')}:{quote(seeds.password, safe='')}@"
            url = f"redis://{auth}{node.host}:{node.port}/0"
        else:  # the seed's URL (password, TLS options) with the node's address
            parts = urlsplit(self.url)
            userinfo, at, _ = parts.netloc.rpartition("@")
            url = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{node.host}:{node.port}"))
        return aioredis.Redis(connection_pool=pool_for(url, 2, self._timeout_s))

    def guarded(self, error: type[Exception]) -> AbstractAsyncContextManager[None]:
        """`translated()` for this URL, bounded by the socket timeout."""
        return translated(self.url, error, self.socket_timeout_s)

    def wait(self, pipe: Any, keys: Iterable[str] = ()) -> int:
        """Queue WAIT (for `wait_replicas` replicas) behind a pipeline's writes, on the same
        connection, so it waits for exactly those: one, or on a Cluster one per node that
        holds `keys` (the keys written). Returns how many; `replicated()` reads them."""
        if not self.wait_replicas:
            return 0
        command = ("WAIT", self.wait_replicas, int(self.wait_timeout_s * 1000))
        if not self.cluster:
            pipe.execute_command(*command)
            return 1
        nodes = nodes_of(pipe.client, keys)
        for node in nodes:
            pipe.execute_command(*command, target_nodes=node)
        return len(nodes)

    def replicated(self, answers: list[Any], waits: int = 1) -> None:
        """Fail a write that fewer than `wait_replicas` replicas confirmed in time, as Redis
        fails one under min-replicas-to-write (NOREPLICAS: refused for now, retried)."""
        if not self.wait_replicas or not waits:
            return
        confirmed = min(int(answer) for answer in answers[-waits:])
        if confirmed < self.wait_replicas:
            raise redis_errors.ResponseError(
                f"NOREPLICAS written, but {confirmed} of the {self.wait_replicas} replicas"
                f" asked for (redis_wait_replicas) confirmed it within"
                f" {self.wait_timeout_s:g}s (redis_wait_timeout_s)"
            )

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            await close(client)


# Replies of a server that is up but cannot do this now: they pass (memory freed, a failover
# done, a dump loaded, a disk fixed), so they are retried like a lost connection.
PASSING_REPLIES = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
PASSING_PREFIXES = (
    "MISCONF", "NOREPLICAS", "LOADING", "MASTERDOWN", "BUSY ",
    # a WAIT sent, by the slots map of a moment ago, to a master since demoted (a Cluster's
    # failover): the write itself was redirected; the map is fresh for the retry
    "WAIT cannot be used with replica",
)  # fmt: skip

# For each side, the error for "unreachable", "up but refusing for now" and "refused for good".
FAMILIES: dict[type[Exception], tuple[type[Exception], type[Exception]]] = {
    BrokerConnectionError: (BrokerUnavailable, BrokerError),
    BackendConnectionError: (BackendUnavailable, BackendError),
}


PIPELINE_MARK = " of pipeline caused error: "  # redis-py's prefix to a pipeline's error


def passes(exc: redis_errors.ResponseError) -> bool:
    reply = str(exc)
    if reply.startswith("Command # ") and PIPELINE_MARK in reply:  # the server's reply
        reply = reply.split(PIPELINE_MARK, 1)[1].lstrip("('\"")
    return isinstance(exc, PASSING_REPLIES) or reply.startswith(PASSING_PREFIXES)


# What a redis call may raise that `translate()` turns into one of aiotq's own.
# (redis-py's cluster errors are not RedisErrors: `cluster_may_pass()` sorts them.)
REDIS_ERRORS = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


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
    if isinstance(exc, CONNECTION_ERRORS) or (
        isinstance(exc, redis_errors.RedisClusterException) and cluster_may_pass(exc)
    ):
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
