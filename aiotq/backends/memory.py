"""In-process result backend and coordinator: TTLs, watchers woken on their own loop, atomic
counters, leases, a key-value and rate-limit slots, each in a dict of its own. One lock, since
the sync portal's loop and a worker's may share the object."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

from .base import reserve_slots
from .history_memory import MemoryHistory


class MemoryBackend:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._data: dict[str, tuple[bytes, float]] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._values: dict[str, tuple[bytes, float]] = {}  # the coordinator's key-value
        self._rates: dict[str, float] = {}  # rate key -> next free slot (monotonic)
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[bytes]]]] = {}
        self._history: MemoryHistory | None = None  # one per backend: it is the store itself

    def task_history(self, max_tasks: int, max_age_s: float) -> MemoryHistory:
        if self._history is None:
            self._history = MemoryHistory(max_tasks, max_age_s)
        return self._history

    async def connect(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        expires = time.monotonic() + ttl_s
        with self._lock:
            for task_id, data in items:
                self._data[task_id] = (data, expires)
                for loop, inbox in self._watchers.get(task_id, ()):
                    loop.call_soon_threadsafe(inbox.put_nowait, data)

    async def get(self, task_id: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(task_id)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._data[task_id]
                return None
            return entry[0]

    async def watch(self, task_id: str) -> AsyncIterator[bytes]:
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        key = (asyncio.get_running_loop(), inbox)
        with self._lock:
            self._watchers.setdefault(task_id, set()).add(key)
        try:
            current = await self.get(task_id)
            if current is not None:
                yield current
            while True:
                yield await inbox.get()
        finally:
            with self._lock:
                watchers = self._watchers.get(task_id)
                if watchers is not None:
                    watchers.discard(key)
                    if not watchers:
                        del self._watchers[task_id]

    async def forget(self, task_id: str) -> None:
        with self._lock:
            self._data.pop(task_id, None)

    async def incr(self, key: str, ttl_s: float) -> int:
        now = time.monotonic()
        with self._lock:
            value, expires = self._counters.get(key, (0, 0.0))
            if expires < now:
                value = 0
            self._counters[key] = (value + 1, now + ttl_s)
            return value + 1

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            current, until = self._leases.get(name, (holder, 0.0))
            if current != holder and until > now:
                return False
            self._leases[name] = (holder, now + ttl_s)
            return True

    async def release(self, name: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(name, ("", 0.0))[0] == holder:
                del self._leases[name]

    async def holder(self, name: str) -> str | None:
        with self._lock:
            current, until = self._leases.get(name, ("", 0.0))
        return current if until > time.monotonic() else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        with self._lock:
            self._values[key] = (value, time.monotonic() + ttl_s)

    async def fetch(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._values.get(key)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._values[key]
                return None
            return entry[0]

    async def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)

    async def scan(self, prefix: str) -> dict[str, bytes]:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (_, expires) in self._values.items() if expires < now]:
                del self._values[key]  # expired ones go here, so presence churn cannot grow it
            return {k: v for k, (v, _) in self._values.items() if k.startswith(prefix)}

    async def reserve(
        self, key: str, interval_s: float, count: int, horizon_s: float
    ) -> tuple[int, float]:
        now = time.monotonic()
        with self._lock:
            next_s, granted, wait_s = reserve_slots(
                self._rates.get(key, 0.0), now, interval_s, count, horizon_s
            )
            self._rates[key] = next_s  # one entry per rate-limited task name: no sweep
        return granted, wait_s
