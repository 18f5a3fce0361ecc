"""Time limits for async task bodies, and the rate limiters: per worker, or shared by every
worker of the app through the coordinator (`rate_limit_scope="global"`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import AiotqError, SoftTimeLimitExceeded, TimeLimitExceeded

if TYPE_CHECKING:
    from ..backends.base import Coordinator

log = logging.getLogger("aiotq.worker")

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

    def slot(self, now: float) -> float:
        """The next start (loop time), taken: the global limiter's fallback."""
        at = max(now, self._next_at)
        self._next_at = at + self._interval
        return at


HORIZON_S = 10.0  # no slot is reserved further ahead (many workers, a low rate)
BATCH_S = 0.1  # one round trip reserves at most this much of the rate
ASK_TIMEOUT_S = 2.0  # an ask of the coordinator unanswered this long: the per-worker limit
LOCAL_FOR_S = 10.0  # after a failed ask, the per-worker limit this long before asking again
LATE_S = 0.01  # a slot is used up to this late (the loop's timer granularity), else dropped


class GlobalRateLimiter:
    """One task's starts across every worker of the app: slots `1/rate` apart are reserved
    in the coordinator (`Coordinator.reserve`), so all workers together start at most the
    rate; a start over it waits for its slot, nothing is dropped.

    A worker holds one batch of slots at a time: starts take its slots in turn, each holding
    the lock until its own slot comes, and the start that finds none left asks for the next
    batch. So a round trip serves a batch, there is no polling and no herd of workers asking
    for the same slot, and a killed worker leaves at most one batch unused. A batch is the
    starts waiting here, or twice the last one when it was used up, at most BATCH_S of the
    rate (back to one when a slot went unused). Slots are spaced even within a batch, so
    batching never lets the combined rate exceed the limit; its cost is that a batch's
    slots are this worker's, and those it does not use (at most BATCH_S of the rate, when
    its starts stop) go unused. With the coordinator away, the per-worker limit applies for
    LOCAL_FOR_S (logged once per outage)."""

    def __init__(
        self,
        coordinator: Coordinator,
        name: str,
        per_second: float,
        local_for_s: float = LOCAL_FOR_S,
    ) -> None:
        self._coordinator = coordinator
        self._name = name
        self._lock = asyncio.Lock()
        self._slots: deque[float] = deque()  # reserved here, not handed out yet (loop time)
        self._waiting = 0  # starts waiting here: what one ask may reserve
        self._local_until: float | None = None  # loop time: per worker until then
        self._local_for_s = local_for_s
        self.retune(per_second)

    def retune(self, per_second: float) -> None:
        """A new rate (`control rate_limit`), for the starts already waiting here too; the
        slots reserved at the old spacing are dropped (unused, never over the new rate)."""
        self.per_second = per_second
        self._interval = 1.0 / per_second
        self._batch = max(1, int(per_second * BATCH_S))
        self._size = 1  # the next batch
        self._slots.clear()
        self._local = RateLimiter(per_second)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            async with self._lock:  # held to this start's slot: the next one takes the next
                delay = await self._slot(loop) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            self._waiting -= 1

    async def _slot(self, loop: asyncio.AbstractEventLoop) -> float:
        while True:
            now = loop.time()
            while self._slots:
                at = self._slots.popleft()
                if at >= now - LATE_S:  # one left too long is dropped, not bunched up
                    return at
                self._size = 1  # fewer starts than slots: smaller batches
            if self._local_until is not None and now < self._local_until:
                return self._local.slot(now)
            try:
                async with asyncio.timeout(ASK_TIMEOUT_S):
                    want = min(self._batch, max(self._size, self._waiting))
                    granted, wait_s = await self._coordinator.reserve(
                        self._name, self._interval, want, HORIZON_S
                    )
            except (AiotqError, OSError) as exc:  # unreachable, refusing, or too slow
                if self._local_until is None:
                    log.warning(
                        "rate limit of %s: the coordinator is unreachable (%r); limiting"
                        " per worker until it answers", self._name, exc,
                    )  # fmt: skip
                self._local_until = loop.time() + self._local_for_s
                continue
            if self._local_until is not None:
                self._local_until = None
                log.warning("rate limit of %s: shared by the workers again", self._name)
            if not granted:  # taken up to the horizon: ask again when one can be had
                await asyncio.sleep(wait_s)
                continue
            self._size = min(self._batch, 2 * granted)
            first = loop.time() + wait_s
            self._slots.extend(first + i * self._interval for i in range(granted))
