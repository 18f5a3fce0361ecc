"""Running a task here and now: `task.apply()`, and every send under `task_always_eager`.

The run is the worker's, minus the broker and the backend: the request (`is_eager=True`),
before_start, the handlers and the task signals, retries (run again at once; countdowns are
not waited for, as in Celery) and autoretry_for. Nothing is stored: the outcome is kept in
the EagerResult. A sync task runs in a thread, so it may send (eagerly) in turn. Unique
jobs (`unique=`, `unique_key=`) are not deduplicated: nothing is queued to hold a key for.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import trace
from .exceptions import Retry
from .protocol import Failure, ResultRecord
from .request import Request, current_request
from .result import EagerResult

_HOSTNAME = socket.gethostname()


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)  # the context (the request) goes along


async def run(
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    throw: bool,
) -> EagerResult[Any]:
    """Run `task` until it succeeds, fails for good, or runs out of retries."""
    task_id = options.get("task_id") or str(uuid.uuid4())
    retries = int(options.get("retries") or 0)
    handlers = task.custom_handlers
    parent = current_request.get()
    while True:
        request = Request(
            id=task_id, task=task.name, args=list(args), kwargs=dict(kwargs), retries=retries,
            parent_id=parent.id if parent else None,
            root_id=(parent.root_id or parent.id) if parent else task_id,
            delivery_info={"is_eager": True, "queue": options.get("queue") or task.queue},
            hostname=_HOSTNAME, called_directly=False, headers=dict(options.get("headers") or {}),
            is_eager=True,
        )  # fmt: skip
        token = current_request.set(request)
        try:
            await trace.prerun(task, task_id, args, kwargs)
            try:
                if handlers is not None and handlers.before_start is not None:
                    await trace.invoke(handlers.before_start, _in_thread, task_id, args, kwargs)
                value = await _body(task, args, kwargs)
            except Retry as retry:
                reason = retry
            except Exception as exc:
                limit = task.effective_max_retries
                again = task.autoretry_for and isinstance(exc, task.autoretry_for)
                if not again or (limit is not None and retries >= limit):
                    einfo = trace.ExceptionInfo(exc)
                    await trace.failed(
                        task, handlers, _in_thread, task_id, args, kwargs, exc, einfo
                    )
                    if throw:
                        raise
                    record = ResultRecord(
                        task_id=task_id, state="FAILURE", failure=Failure.of(exc),
                        date_done_s=time.time(), retries=retries, task=task.name,
                    )  # fmt: skip
                    return EagerResult(task_id, task.producer, record, exc)
                reason = Retry(exc, 0.0)
            else:
                await trace.succeeded(task, handlers, _in_thread, task_id, args, kwargs, value)
                record = ResultRecord(
                    task_id=task_id, state="SUCCESS", result=value, date_done_s=time.time(),
                    retries=retries, task=task.name,
                )  # fmt: skip
                return EagerResult(task_id, task.producer, record)
            einfo = trace.ExceptionInfo(reason)
            await trace.retried(task, handlers, _in_thread, request, reason, einfo)
        finally:
            current_request.reset(token)
        retries += 1
        if reason.new_args is not None:
            args = tuple(reason.new_args)
        if reason.new_kwargs is not None:
            kwargs = dict(reason.new_kwargs)


async def _body(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if task.is_async:
        value = task(*args, **kwargs)
        return await value if inspect.isawaitable(value) else value
    return await asyncio.to_thread(task, *args, **kwargs)
