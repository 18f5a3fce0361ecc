"""Time limits for async task bodies, and the per-worker rate limiter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

from ..exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

T = TypeVar("T")


class _Interruptible:
    """Drives a coroutine step by step so a soft time limit can raise SoftTimeLimitExceeded
    at the await where the task is suspended (asyncio can only inject CancelledError; we turn
    that one cancellation into the soft-limit exception and undo it with `uncancel()`)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], soft_s: float) -> None:
        self._coro = coro
        self._soft_s = soft_s
        self._soft_pending = False

    def fire(self, task: asyncio.Task[Any]) -> None:
        self._soft_pending = True
        task.cancel()

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coro.throw(throw) if throw is not None else coro.send(send)
            except StopIteration as stop:
                return stop.value
            send, throw = None, None
            try:
                send = yield yielded
            except asyncio.CancelledError as exc:
                if self._soft_pending:
                    self._soft_pending = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    throw = SoftTimeLimitExceeded(f"soft time limit ({self._soft_s:g}s) exceeded")
                else:
                    throw = exc
            except BaseException as exc:
                throw = exc


async def with_limits(
    awaitable: Awaitable[T] | Coroutine[Any, Any, T],
    hard_s: float | None,
    soft_s: float | None = None,
) -> T:
    """Await with an optional soft limit (async coroutines only) and hard limit."""
    handle = None
    if soft_s is not None and asyncio.iscoroutine(awaitable):
        interruptible = _Interruptible(awaitable, soft_s)
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(soft_s, interruptible.fire, task)
        awaitable = interruptible
    timeout = asyncio.timeout(hard_s)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise TimeLimitExceeded(f"time limit ({hard_s:g}s) exceeded") from None
        raise
    finally:
        if handle is not None:
            handle.cancel()


class RateLimiter:
    """Spaces starts evenly: a task over its rate waits for its turn; nothing is dropped."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._interval = 1.0 / per_second
        self._next_at = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next_at)
        self._next_at = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)
