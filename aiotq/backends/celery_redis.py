"""Redis result backend in Celery's format (`task_protocol = "celery"`): a Celery producer's
`AsyncResult.get()` reads what an aiotq worker stored, and aiotq's reads what a Celery worker
stored (celery/backends/redis.py):

    celery-task-meta-<task_id>    the result map (celery_wire.meta_from_record), in the
                                  app's result_serializer (JSON or MessagePack), with a TTL
    celery-task-meta-<task_id>    also the pub/sub channel a store announces on (as Celery)

Everything else (chord counters, leases, presence, revokes, task history) stays in aiotq's
own keys of the same Redis, exactly as backends/redis.py keeps them: this class is that
backend with the result keys and their format swapped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..celery_wire import decode_meta, meta_from_record, record_from_meta
from ..exceptions import BackendConnectionError, BackendError
from ..protocol import CODECS, decode_record
from ..urls import mask_password
from .redis import RedisBackend

KEY_PREFIX = "celery-task-meta-"


def meta_key(task_id: str) -> str:
    return KEY_PREFIX + task_id


class CeleryRedisBackend(RedisBackend):
    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        **options: Any,  # RedisBackend's: pool_size, timeouts, transport options, WAIT
    ) -> None:
        super().__init__(url, **options)
        self.codec = CODECS[serializer]  # Celery's result_serializer: how both sides read

    def __repr__(self) -> str:
        return f"CeleryRedisBackend({mask_password(self.url)!r})"

    def _celery(self, data: bytes) -> bytes:
        """An aiotq record (as the worker encoded it) as Celery's stored result."""
        return self.codec.encode(meta_from_record(decode_record(data)))

    def _aiotq(self, task_id: str, data: bytes) -> bytes:
        """A stored Celery result as an aiotq record, encoded as the result layer reads it."""
        try:
            record = record_from_meta(decode_meta(data))
        except ValueError as exc:
            raise BackendError(f"result of {task_id} is not Celery's format: {exc}") from None
        if not record.task_id:
            record.task_id = task_id
        return self.codec.encode(record)

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        encoded = [(meta_key(task_id), self._celery(data)) for task_id, data in items]
        async with self._clients.guarded(BackendConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for key, value in encoded:
                pipe.set(key, value, px=ttl_ms)
                pipe.execute_command("PUBLISH", key, value)  # a Cluster's pipeline: by name
            waits = self._clients.wait(pipe, [key for key, _ in encoded])
            self._clients.replicated(await pipe.execute(), waits)

    async def get(self, task_id: str) -> bytes | None:
        async with self._clients.guarded(BackendConnectionError):
            value: Any = await (await self._clients.client()).get(meta_key(task_id))
        return None if value is None else self._aiotq(task_id, value)

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        """As RedisBackend.watch: read, subscribe (confirmed), read again, then each store."""
        current = await self._get_retrying(task_id)
        if current is not None:
            yield current
        listener = self._listeners.get()
        channel = meta_key(task_id)
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        try:
            async with self._clients.guarded(BackendConnectionError):
                await listener.subscribe(channel, inbox)
            current = await self._get_retrying(task_id)
            if current is not None:
                yield current
            while True:
                yield self._aiotq(task_id, await inbox.get())
        finally:
            await listener.unsubscribe(channel, inbox)

    async def forget(self, task_id: str) -> None:
        async with self._clients.guarded(BackendConnectionError):
            await (await self._clients.client()).delete(meta_key(task_id))
