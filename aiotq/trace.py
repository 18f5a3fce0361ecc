"""A task's handlers and the task signals around one run (Celery's `app/trace.py`), shared by
the worker and by eager mode (`task.apply()`, `task_always_eager`).

What to call is decided once per task (`Handlers.of`: which of Task's handlers a class
overrides) and once per step (`signal.has_receivers()`), so a task with neither pays a few
attribute reads per run and builds nothing. A handler that raises is logged and changes
nothing (the outcome is decided before the handlers run); `before_start` is the exception:
it runs as part of the task, so its error is the task's.
"""

from __future__ import annotations

import inspect
import logging
import traceback as _traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
)

log = logging.getLogger("aiotq.worker")

HANDLER_NAMES = ("before_start", "on_success", "on_failure", "on_retry", "after_return")

# How a sync handler is run: the worker passes its thread pool (so a handler doing blocking
# IO never stalls the loop); eager mode runs it in a thread of its own.
RunSync = Callable[..., Awaitable[Any]]


class ExceptionInfo:
    """Celery's `einfo`: the exception, its type and its traceback as text. For a task of the
    process executor the exception is rebuilt from the child's failure (`.traceback` is the
    child's stack) and `.tb` is None."""

    __slots__ = ("_text", "exception", "tb", "type")

    def __init__(self, exception: BaseException, traceback: str | None = None) -> None:
        self.exception = exception
        self.type = type(exception)
        self.tb: TracebackType | None = exception.__traceback__
        self._text = traceback

    @property
    def traceback(self) -> str:
        if self._text is None:  # formatted on first read: most handlers never look
            self._text = "".join(_traceback.format_exception(self.exception))
        return self._text

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


@dataclass(frozen=True, slots=True)
class Handler:
    fn: Callable[..., Any]
    is_async: bool


@dataclass(frozen=True, slots=True)
class Handlers:
    """The handlers a task's class (or its annotations) override; None where it does not."""

    before_start: Handler | None
    on_success: Handler | None
    on_failure: Handler | None
    on_retry: Handler | None
    after_return: Handler | None

    @classmethod
    def of(cls, task: Any, base: type) -> Handlers | None:
        """None when `task` overrides none of `base`'s handlers (checked once, at declaration)."""
        found: dict[str, Handler | None] = {}
        for name in HANDLER_NAMES:
            bound = getattr(task, name)
            if getattr(bound, "__func__", bound) is getattr(base, name):
                found[name] = None
            else:
                found[name] = Handler(bound, inspect.iscoroutinefunction(bound))
        if not any(found.values()):
            return None
        return cls(**found)


async def call(handler: Handler, name: str, task: Any, run_sync: RunSync, *args: Any) -> None:
    """Run one handler; an error is logged, never raised (the outcome is already decided)."""
    try:
        await invoke(handler, run_sync, *args)
    except Exception:
        log.exception("%s handler of task %s raised (the task's outcome stands)", name, task.name)


async def invoke(handler: Handler, run_sync: RunSync, *args: Any) -> None:
    """Run one handler, raising what it raises (`before_start`: its error is the task's)."""
    if handler.is_async:
        await handler.fn(*args)
        return
    returned = await run_sync(handler.fn, *args)
    if inspect.isawaitable(returned):  # a sync callable that returned a coroutine
        await returned


# -- the steps of a run: each is called only when there is something to do ------------------


async def prerun(task: Any, task_id: str, args: Any, kwargs: Any) -> None:
    if task_prerun.has_receivers():
        await task_prerun.asend(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)


async def succeeded(
    task: Any, handlers: Handlers | None, run_sync: RunSync,
    task_id: str, args: Any, kwargs: Any, retval: Any,
) -> None:  # fmt: skip
    """on_success, task_success, after_return, task_postrun (Celery's order)."""
    if handlers is not None and handlers.on_success is not None:
        await call(handlers.on_success, "on_success", task, run_sync, retval, task_id, args, kwargs)
    if task_success.has_receivers():
        await task_success.asend(sender=task, result=retval)
    if handlers is not None and handlers.after_return is not None:
        await call(handlers.after_return, "after_return", task, run_sync,
                   "SUCCESS", retval, task_id, args, kwargs, None)  # fmt: skip
    await postrun(task, task_id, args, kwargs, retval, "SUCCESS")


async def failed(
    task: Any, handlers: Handlers | None, run_sync: RunSync,
    task_id: str, args: Any, kwargs: Any, exc: BaseException, einfo: ExceptionInfo,
    state: str = "FAILURE",
) -> None:  # fmt: skip
    """on_failure, task_failure, after_return, task_postrun."""
    if handlers is not None and handlers.on_failure is not None:
        await call(handlers.on_failure, "on_failure", task, run_sync,
                   exc, task_id, args, kwargs, einfo)  # fmt: skip
    if task_failure.has_receivers():
        await task_failure.asend(
            sender=task, task_id=task_id, exception=exc, args=args, kwargs=kwargs,
            traceback=einfo.tb, einfo=einfo,
        )  # fmt: skip
    if handlers is not None and handlers.after_return is not None:
        await call(handlers.after_return, "after_return", task, run_sync,
                   state, exc, task_id, args, kwargs, einfo)  # fmt: skip
    await postrun(task, task_id, args, kwargs, exc, state)


async def retried(
    task: Any, handlers: Handlers | None, run_sync: RunSync,
    request: Any, reason: BaseException, einfo: ExceptionInfo,
) -> None:  # fmt: skip
    """on_retry, task_retry, task_postrun (Celery calls no after_return for a retry)."""
    cause = getattr(reason, "exc", None) or reason
    if handlers is not None and handlers.on_retry is not None:
        await call(handlers.on_retry, "on_retry", task, run_sync,
                   cause, request.id, request.args, request.kwargs, einfo)  # fmt: skip
    if task_retry.has_receivers():
        await task_retry.asend(sender=task, request=request, reason=reason, einfo=einfo)
    await postrun(task, request.id, request.args, request.kwargs, reason, "RETRY")


async def revoked(
    task: Any, request: Any, *, terminated: bool, expired: bool, signum: Any = None
) -> None:
    if task_revoked.has_receivers():
        await task_revoked.asend(
            sender=task, request=request, terminated=terminated, signum=signum, expired=expired
        )


async def postrun(task: Any, task_id: str, args: Any, kwargs: Any, retval: Any, state: str) -> None:
    if task_postrun.has_receivers():
        await task_postrun.asend(
            sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs,
            retval=retval, state=state,
        )  # fmt: skip
