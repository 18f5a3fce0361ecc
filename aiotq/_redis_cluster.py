"""Redis Cluster for the Redis broker and backend: a bounded RedisCluster client, and what a
cluster needs that one server does not.

Where each key family lives (no command and no script crosses a slot):

- a queue's keys share the hash tag `{queue}` (brokers/redis.py): its scripts touch one slot;
  a batch of sends is one script per queue; a consumer of several queues waits for new work
  on each queue's slot at once (brokers/redis.py `_Streams._ring`);
- task history shares `{aiotq:h}` (backends/history_redis.py);
- every other key stands alone and is read and written one key at a time (results, chord
  counters, leases, the coordinator's key-value, rate slots, the bus's topics); reading the
  key-value by prefix SCANs every primary, then reads the values slot by slot.

Result announcements are classic PUBLISH, which a cluster forwards to every node: a
waiter subscribes on a plain connection to any one node (`LoopClients.subscriber()`), and
another one after a failover.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

# Set while a task holds one of a BoundedCluster's slots: redis-py runs a redirected
# pipeline command through execute_command again, which must not wait for a second slot.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("aiotq_cluster_slot", default=False)


class BoundedCluster(RedisCluster):
    """A RedisCluster whose callers wait for one of `max_connections` slots, as BoundedPool's
    do for a connection: redis-py's cluster pool raises MaxConnectionsError instead of
    waiting. A command or pipeline uses at most one connection per node, so the bound holds
    on every node."""

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        # one more per node for redis-py's own topology queries, made beside a command
        super().__init__(max_connections=max_connections + 1, **kwargs)
        self._slots = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _holding.get():
            return await super().execute_command(*args, **kwargs)
        async with self._slots:
            token = _holding.set(True)
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                _holding.reset(token)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return _BoundedPipeline(self, super().pipeline(transaction, shard_hint))


class _BoundedPipeline:
    """A ClusterPipeline whose execute() takes one of its client's slots. Cluster pipelines
    are never transactions: each command runs on its slot's node, in order per node."""

    def __init__(self, client: BoundedCluster, pipe: Any) -> None:
        self.client = client
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:  # the queued commands: the inner pipeline's
        return getattr(self._pipe, name)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if _holding.get():
            result: list[Any] = await self._pipe.execute(raise_on_error=raise_on_error)
            return result
        async with self.client._slots:
            token = _holding.set(True)
            try:
                result = await self._pipe.execute(raise_on_error=raise_on_error)
                return result
            finally:
                _holding.reset(token)


def nodes_of(client: RedisCluster, keys: Iterable[str]) -> list[ClusterNode]:
    """The primaries that hold `keys` now (by slot), each once."""
    found: dict[str, ClusterNode] = {}
    for key in keys:
        node = client.get_node_from_key(key)
        if node is None:  # a failover under way: passes (cluster_may_pass)
            raise redis_errors.SlotNotCoveredError(f"no node holds the slot of {key!r} now")
        found.setdefault(node.name, node)
    return list(found.values())


def cluster_may_pass(exc: redis_errors.RedisClusterException) -> bool:
    """redis-py's cluster errors that are not RedisErrors: no node reachable, or a topology
    with slots uncovered or in dispute (a failover under way) pass; the rest (a command that
    would cross slots) are a bug that retrying cannot fix."""
    if isinstance(exc, redis_errors.SlotNotCoveredError):
        return True
    message = str(exc)
    return any(
        words in message
        for words in ("cannot be connected", "not covered", "could not agree", "No targets")
    )
