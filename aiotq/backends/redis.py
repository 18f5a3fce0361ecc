"""Redis result backend and coordinator. A result is SET with a TTL, then the same bytes are
PUBLISHed on the task's channel. The keys, each kind under its own prefix:

    aiotq:result:<task_id>    the encoded ResultRecord (expires after result_expires_s)
    aiotq:result:<task_id>    also the pub/sub channel a store announces on
    aiotq:counter:<key>       chord / group counters (INCR + EXPIRE, one script)
    aiotq:lease:<name>        a lease's holder (SET PX, taken and given up by LEASE / RELEASE)
    aiotq:kv:<key>            the coordinator's key-value (SET PX / GET / DEL, SCAN by prefix)
    aiotq:rate:<key>          a shared rate's next free start slot, in µs of Redis's clock
                              (RESERVE; it expires a second after that slot)

Each command and script touches one key, so on a Redis Cluster every key may live on its own
slot; a SCAN by prefix walks every primary (_redis_cluster.py). Task history shares the hash
tag `{aiotq:h}` (history_redis.py).

A waiter reads the key first: a task already finished costs one GET and no subscription
(a producer collecting many results mostly finds them there). Otherwise it subscribes, then
reads the key again once Redis has confirmed the subscription, so a store between the two
reads is not missed. One pub/sub connection per process and loop serves every waiter; on a
Cluster it goes to one node, picked at random (a cluster forwards every PUBLISH to each
node), and to another one after losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from .._backoff import Backoff
from .._loops import PerLoop
from .._redis import CONNECTION_ERRORS, REDIS_ERRORS, LoopClients, close
from ..exceptions import BackendConnectionError, Transient
from ..urls import mask_password
from .history_redis import RedisHistory

log = logging.getLogger("aiotq.backend.redis")


# A chord or group counter: INCR and EXPIRE at once (one key: one slot on a Cluster).
INCR = """
local value = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return value
"""

# Take the lease if free or ours (and renew it); 1 when we hold it after the call.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Coordinator.reserve (base.reserve_slots' arithmetic) on Redis's clock, so the hosts' clocks
# may differ. ARGV: interval µs, slots wanted, horizon µs; returns {granted, wait µs}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, want, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ahead = math.max(tonumber(redis.call('GET', KEYS[1]) or 0) - now, 0)
if ahead > horizon then return {0, ahead - horizon} end
local granted = math.max(1, math.min(want, math.floor((horizon - ahead) / interval) + 1))
local after = ahead + granted * interval
redis.call('SET', KEYS[1], string.format('%d', now + after), 'PX', math.floor(after / 1000) + 1000)
return {granted, ahead}
"""
RESERVE_SHA = hashlib.sha1(RESERVE.encode()).hexdigest()


def result_key(task_id: str) -> str:
    return f"aiotq:result:{task_id}"


KV_PREFIX = "aiotq:kv:"


def _glob_escaped(text: str) -> str:
    """`text` matched literally by SCAN's MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class _Listener:
    """The process's one pub/sub connection on a loop, fanning messages out to waiters.

    `subscribe()` returns only once Redis has confirmed the subscription: a SUBSCRIBE on this
    connection and a GET on another are not ordered, so a waiter reading the key before the
    confirmation could miss a store landing in between (announced to nobody, read by nobody).
    """

    def __init__(self, clients: LoopClients) -> None:
        self._clients = clients
        # made by the first subscribe: a plain client (on a Cluster, to one node)
        self._client: Any = None
        self._pubsub: Any = None  # subscribe confirmations are ours to see
        self._opening = asyncio.Lock()
        self._inboxes: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()  # the pub/sub has a connection to read
        self._reader: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        async with self._opening:
            if self._pubsub is None:
                self._client = await self._clients.subscriber()
                self._pubsub = self._client.pubsub()

    async def subscribe(self, channel: str, inbox: asyncio.Queue[bytes]) -> None:
        if self._pubsub is None:
            await self._open()
        self._inboxes.setdefault(channel, set()).add(inbox)
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmed[channel] = confirmed
            await self._pubsub.subscribe(channel)
            self._connected.set()
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="aiotq-result-listener")
        await asyncio.shield(confirmed)  # shared: one waiter's timeout must not cancel it

    async def unsubscribe(self, channel: str, inbox: asyncio.Queue[bytes]) -> None:
        inboxes = self._inboxes.get(channel)
        if inboxes is None:
            return
        inboxes.discard(inbox)
        if not inboxes:
            del self._inboxes[channel]
            self._confirmed.pop(channel, None)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._pubsub.unsubscribe(channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "message":
            for inbox in self._inboxes.get(name, ()):
                inbox.put_nowait(message["data"])
        elif kind == "subscribe":
            confirmed = self._confirmed.get(name)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    async def _read(self) -> None:
        while True:
            if self._pubsub.connection is None:  # nothing subscribed since a reconnect
                self._connected.clear()
                await self._connected.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except REDIS_ERRORS as exc:  # any: the reader must outlive it, or waiters hang
                log.warning("result listener lost its connection (%s); resubscribing", exc)
                await self._reconnect()
                continue
            if message is not None:
                self._dispatch(message)

    async def _reconnect(self) -> None:
        """A fresh pub/sub connection, subscribed again and confirmed, then every watched key
        re-read, so no store made while we were away is missed. Retried until it works."""
        backoff = Backoff(initial=0.1)
        while True:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # gives its connection back to the pool
            try:
                async with asyncio.timeout(5):
                    if self._clients.cluster:  # its node may be gone: another, at random
                        with contextlib.suppress(Exception):
                            await close(self._client)
                        self._client = await self._clients.subscriber()
                    self._pubsub = self._client.pubsub()
                    channels = list(self._inboxes)
                    if channels:
                        await self._pubsub.subscribe(*channels)
                    waiting = set(channels)
                    while waiting:
                        message = await self._pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._dispatch(message)
                            if message.get("type") == "subscribe":
                                waiting.discard(message["channel"].decode())
                    client = await self._clients.client()
                    for channel in channels:
                        data: Any = await client.get(channel)
                        if data is not None:
                            for inbox in self._inboxes.get(channel, ()):
                                inbox.put_nowait(data)
                return
            except REDIS_ERRORS as exc:  # TimeoutError is an OSError; a refusal passes too
                delay = backoff.delay()
                log.warning(
                    "result listener could not resubscribe (%s); retry in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._pubsub.aclose()
            await close(self._client)


class RedisBackend:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        socket_timeout_s: float | None = 10.0,
        transport_options: Mapping[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
    ) -> None:
        """`transport_options`: Celery's result_backend_transport_options (a sentinel://
        URL's master_name and sentinel_kwargs); `wait_replicas`: a result store returns once
        that many replicas have it (WAIT)."""
        self.url = url
        self._clients = LoopClients(
            url, pool_size, connect_timeout_s, socket_timeout_s,
            transport_options=transport_options, wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
        )  # fmt: skip
        self._listeners = PerLoop(lambda: _Listener(self._clients))

    def __repr__(self) -> str:
        return f"RedisBackend({mask_password(self.url)!r})"

    def task_history(self, max_tasks: int, max_age_s: float) -> RedisHistory:
        return RedisHistory(self._clients, max_tasks, max_age_s)

    async def connect(self) -> None:
        async with self._clients.guarded(BackendConnectionError):
            await (await self._clients.client()).ping()

    async def aclose(self) -> None:
        listener = self._listeners.pop()
        if listener is not None:
            await listener.aclose()
        await self._clients.aclose()

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self._clients.guarded(BackendConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            written = []
            for task_id, data in items:
                key = result_key(task_id)
                pipe.set(key, data, px=ttl_ms)
                # (not pipe.publish(): redis-py's cluster pipelines refuse that name)
                pipe.execute_command("PUBLISH", key, data)
                written.append(key)
            waits = self._clients.wait(pipe, written)  # redis_wait_replicas: behind the writes
            self._clients.replicated(await pipe.execute(), waits)

    async def get(self, task_id: str) -> bytes | None:
        async with self._clients.guarded(BackendConnectionError):
            value: Any = await (await self._clients.client()).get(result_key(task_id))
        return value

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        current = await self._get_retrying(task_id)
        if current is not None:
            yield current  # usually final: the caller stops here, never subscribed
        listener = self._listeners.get()
        channel = result_key(task_id)
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        try:
            async with self._clients.guarded(BackendConnectionError):
                await listener.subscribe(channel, inbox)
            current = await self._get_retrying(task_id)  # after the confirmation: see above
            if current is not None:
                yield current
            while True:
                yield await inbox.get()
        finally:
            await listener.unsubscribe(channel, inbox)

    async def _get_retrying(self, task_id: str) -> bytes | None:
        """A transient error never fails a wait: the caller's timeout bounds it."""
        backoff = Backoff(cap=1.0)
        while True:
            try:
                return await self.get(task_id)
            except Transient as exc:  # unreachable, loading, out of memory
                log.warning("result read failed (%s); retrying", exc)
                await backoff.sleep()

    async def forget(self, task_id: str) -> None:
        async with self._clients.guarded(BackendConnectionError):
            await (await self._clients.client()).delete(result_key(task_id))

    async def incr(self, key: str, ttl_s: float) -> int:
        async with self._clients.guarded(BackendConnectionError):
            client = await self._clients.client()
            value = await client.eval(INCR, 1, f"aiotq:counter:{key}", max(1, int(ttl_s)))
        return int(value)

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        async with self._clients.guarded(BackendConnectionError):
            taken = await (await self._clients.client()).eval(
                LEASE, 1, f"aiotq:lease:{name}", holder, max(1, int(ttl_s * 1000))
            )
        return bool(taken)

    async def release(self, name: str, holder: str) -> None:
        async with self._clients.guarded(BackendConnectionError):
            await (await self._clients.client()).eval(RELEASE, 1, f"aiotq:lease:{name}", holder)

    async def holder(self, name: str) -> str | None:
        async with self._clients.guarded(BackendConnectionError):
            value: Any = await (await self._clients.client()).get(f"aiotq:lease:{name}")
        return value.decode() if value is not None else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        async with self._clients.guarded(BackendConnectionError):
            client = await self._clients.client()
            await client.set(KV_PREFIX + key, value, px=max(1, int(ttl_s * 1000)))

    async def fetch(self, key: str) -> bytes | None:
        async with self._clients.guarded(BackendConnectionError):
            value: Any = await (await self._clients.client()).get(KV_PREFIX + key)
        return value

    async def delete(self, key: str) -> None:
        async with self._clients.guarded(BackendConnectionError):
            await (await self._clients.client()).delete(KV_PREFIX + key)

    async def scan(self, prefix: str) -> dict[str, bytes]:
        async with self._clients.guarded(BackendConnectionError):
            client = await self._clients.client()
            match = _glob_escaped(KV_PREFIX + prefix) + "*"
            # on a Cluster, SCAN walks every primary and MGET goes slot by slot
            keys = [key async for key in client.scan_iter(match=match, count=1000)]
            mget = client.mget_nonatomic if self._clients.cluster else client.mget
            values: list[Any] = await mget(keys) if keys else []
        start = len(KV_PREFIX)
        return {  # a key that expired between SCAN and MGET is left out
            key.decode()[start:]: value
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def reserve(
        self, key: str, interval_s: float, count: int, horizon_s: float
    ) -> tuple[int, float]:
        args = (max(1, round(interval_s * 1e6)), count, round(horizon_s * 1e6))
        async with self._clients.guarded(BackendConnectionError):
            client = await self._clients.client()
            try:  # the script's digest: one short round trip
                answer: Any = await client.evalsha(RESERVE_SHA, 1, f"aiotq:rate:{key}", *args)
            except NoScriptError:  # a restarted (or another) server: EVAL also caches it
                answer = await client.eval(RESERVE, 1, f"aiotq:rate:{key}", *args)
        return int(answer[0]), int(answer[1]) / 1e6
