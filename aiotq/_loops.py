"""One value per event loop, and none inherited across a fork.

The rule, stated once: asyncio clients (redis-py's connections, aio-pika's channels, our
own listeners) belong to the loop they were made on, and one broker or backend object may
serve several loops at once (a worker's loop and the sync portal's loop of the same
process). So every per-loop client or cache lives in a `PerLoop`, keyed by the running loop
and dropped with it; a process that forks starts with all of them empty, since the
parent's sockets and threads are not the child's to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

_all: weakref.WeakSet[PerLoop[object]] = weakref.WeakSet()


class PerLoop(Generic[T]):
    """`get()` returns this loop's value, made by `factory()` on first use (synchronously,
    so concurrent first callers on one loop share it). Without a factory, a value that takes
    an await to make (a connection) is `set()` by its maker and read with `peek()`."""

    __slots__ = ("__weakref__", "_factory", "_values")

    def __init__(self, factory: Callable[[], T] | None = None) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        _all.add(self)  # type: ignore[arg-type]

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            if self._factory is None:
                raise LookupError("no value made for this event loop yet (see set())")
            value = self._values[loop] = self._factory()
        return value

    def peek(self) -> T | None:
        """This loop's value if it was made, without making it."""
        return self._values.get(asyncio.get_running_loop())

    def pop(self) -> T | None:
        """Forget this loop's value and return it (to close it)."""
        return self._values.pop(asyncio.get_running_loop(), None)

    def set(self, value: T) -> None:
        self._values[asyncio.get_running_loop()] = value

    def _forget_all(self) -> None:
        # The parent's values are kept alive, never used: were they collected here, a
        # connection's finalizer would take its socket out of the parent's epoll set, which
        # a fork shares, and the parent would wait for ever for its next reply.
        _inherited.extend(self._values.items())
        self._values = weakref.WeakKeyDictionary()


class Forkable(Protocol):
    def _forked(self) -> None:
        """In a fork's child: drop what belongs to the parent (its threads, its sockets)."""


_forkables: weakref.WeakSet[Forkable] = weakref.WeakSet()
_inherited: list[Any] = []  # in a fork's child: the parent's per-loop values (see above)


def reset_after_fork(obj: Forkable) -> None:
    """Call `obj._forked()` in the child of every later fork, for as long as `obj` lives:
    one hook for the process, not one per object (each would stay registered for ever)."""
    _forkables.add(obj)


def _after_fork_in_child() -> None:
    for per_loop in list(_all):
        per_loop._forget_all()
    for obj in list(_forkables):
        obj._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def flush_every(interval_s: float, flush: Callable[[], Awaitable[None]]) -> None:
    """A batching coroutine's life (events, task history): `flush()` every interval until
    cancelled, then once more, for a second at most (a warm stop sends what is left; a store
    that is away does not hold the stop)."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            await flush()
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await flush()
