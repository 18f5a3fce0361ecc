"""Child processes for the process executor, each replaced after `max_tasks` tasks or once
its resident memory passes `max_memory_kib` (Celery's --max-tasks-per-child and
--max-memory-per-child).

Each child is a ProcessPoolExecutor of one process, given one task at a time; tasks wait
here for a free child. So a child that retires takes no more tasks, finishes the one it
runs, and exits: a retirement never breaks a running task nor raises BrokenProcessPool.
(The standard library's own `max_tasks_per_child` can leave a 3.11 pool with no process
and its queued tasks waiting forever, cpython gh-115634.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from functools import partial
from typing import TYPE_CHECKING, Any

from .presence import rss_bytes

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("aiotq.worker")


def call_and_measure(limit_kib: int | None, fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """In the child: the call's value, and the child's resident KiB when over the limit
    (0 when under it or when there is no limit)."""
    value = fn(*args)
    if limit_kib is None:
        return value, 0
    used_kib = rss_bytes() // 1024
    return value, used_kib if used_kib > limit_kib else 0


class _Child:
    __slots__ = ("executor", "tasks")

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self.executor = executor
        self.tasks = 0  # given to it so far

    def pids(self) -> list[int]:
        return list(getattr(self.executor, "_processes", None) or {})

    def kill(self) -> None:
        for proc in list((getattr(self.executor, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError):
                proc.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class ChildProcesses(Executor):
    """Up to `size` children; `submit` queues, a free child runs. Thread-safe: results come
    back on each child's manager thread."""

    def __init__(
        self,
        size: int,
        start_child: Callable[[], ProcessPoolExecutor],
        *,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
    ) -> None:
        self._size = size
        self._start_child = start_child
        self._max_tasks = max_tasks
        self._max_memory_kib = max_memory_kib
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._waiting: deque[_Call] = deque()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("the process executor passes positional arguments only")
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._waiting.append((future, fn, args))
            started = self._dispatch()
        self._watch(started)
        return future

    def _dispatch(self) -> list[tuple[_Child, Future[Any], Future[Any]]]:
        """Hand waiting calls to free children, starting new ones up to `size`. Called with
        the lock held; the caller watches what started once it let the lock go (a call that
        is done already runs its callback at once)."""
        started = []
        while self._waiting and (self._idle or len(self._busy) < self._size):
            future, fn, args = self._waiting.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited (a cold stop): never run
            child = self._idle.pop() if self._idle else _Child(self._start_child())
            try:
                running = child.executor.submit(call_and_measure, self._max_memory_kib, fn, *args)
            except Exception as exc:  # a child broken before it took the call
                child.executor.shutdown(wait=False)
                future.set_exception(exc)
                continue
            self._busy.add(child)
            child.tasks += 1
            started.append((child, future, running))
        return started

    def _watch(self, started: list[tuple[_Child, Future[Any], Future[Any]]]) -> None:
        for child, future, running in started:
            running.add_done_callback(partial(self._finished, child, future))

    def _finished(self, child: _Child, future: Future[Any], done: Future[Any]) -> None:
        error = done.exception() if not done.cancelled() else None
        value, over_kib = (None, 0) if done.cancelled() or error is not None else done.result()
        with self._lock:
            if child in self._busy:  # else kill() or shutdown() took it away already
                self._busy.discard(child)
                reason = self._retire_reason(child, over_kib, broken=error is not None)
                if reason is None and not self._closed:
                    self._idle.append(child)
                else:
                    self._retire(child, reason)
            started = self._dispatch()
        self._watch(started)
        if done.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _retire_reason(self, child: _Child, over_kib: int, *, broken: bool) -> str | None:
        if broken:
            return "its process died"
        if over_kib:
            return f"{over_kib} KiB resident (--max-memory-per-child {self._max_memory_kib})"
        if self._max_tasks is not None and child.tasks >= self._max_tasks:
            return f"{child.tasks} tasks (--max-tasks-per-child)"
        return None

    def _retire(self, child: _Child, reason: str | None) -> None:
        if reason is not None:
            pids = ", ".join(map(str, child.pids())) or "?"
            log.info("Process child %s replaced after %s", pids, reason)
        child.executor.shutdown(wait=False)  # it runs nothing now: its process just exits

    def kill(self) -> None:
        """End every child now; their running calls fail with BrokenProcessPool, the waiting
        ones stay queued for the children started next."""
        with self._lock:
            children, self._idle, self._busy = [*self._idle, *self._busy], [], set()
        for child in children:
            child.kill()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._waiting) if cancel_futures else []
            if cancel_futures:
                self._waiting.clear()
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for future, _, _ in waiting:
            future.cancel()
        for child in idle:
            child.executor.shutdown(wait=wait)
        for child in busy:  # each returns to _finished, which shuts it down (closed)
            if wait:
                child.executor.shutdown(wait=True, cancel_futures=cancel_futures)
