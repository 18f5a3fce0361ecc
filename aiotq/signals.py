"""Celery's signals, by Celery's names: `@task_prerun.connect` and the receiver runs.

Receivers take `sender` and keyword arguments (always accept `**kwargs`: Celery adds
arguments over time). A receiver may be `async def`; the worker awaits it on its loop.
A receiver that raises is logged and the others still run: a broken metrics hook must never
fail a task. Receivers are held strongly (Celery holds them weakly by default, which loses
lambdas and closures; `weak=` is accepted and ignored).

Where each is sent (docs/tasks.md, "Signals"):
- `before_task_publish`, `after_task_publish`: the producer, around each send
  (sender: the task's name; body, exchange, routing_key, headers, properties).
- `task_prerun`, `task_postrun`, `task_success`, `task_failure`, `task_retry`,
  `task_revoked`: the worker, around each run.
- `worker_init`, `worker_ready`, `worker_shutdown`: the worker's life;
  `worker_process_init`: in each process-executor child as it starts.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("aiotq.signals")

Receiver = Callable[..., Any]


class Signal:
    """One named signal with its receivers, each optionally for one sender only."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._receivers: list[tuple[Any, Any, Receiver]] = []  # (uid, sender, receiver)

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Any = None,
    ) -> Any:
        """`signal.connect(fn)`, or as a decorator: `@signal.connect(sender=...)`."""
        del weak  # held strongly: see the module docstring

        def add(fn: Receiver) -> Receiver:
            uid = dispatch_uid if dispatch_uid is not None else (id(fn), _sender_key(sender))
            if not any(existing == uid for existing, _, _ in self._receivers):
                self._receivers.append((uid, sender, fn))
            return fn

        return add(receiver) if receiver is not None else add

    def disconnect(
        self, receiver: Receiver | None = None, *, sender: Any = None, dispatch_uid: Any = None
    ) -> bool:
        uid = dispatch_uid if dispatch_uid is not None else (id(receiver), _sender_key(sender))
        before = len(self._receivers)
        self._receivers = [r for r in self._receivers if r[0] != uid]
        return len(self._receivers) != before

    @property
    def receivers(self) -> list[Receiver]:
        return [fn for _, _, fn in self._receivers]

    def _matching(self, sender: Any) -> list[Receiver]:
        return [fn for _, wanted, fn in self._receivers if wanted is None or _same(wanted, sender)]

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver from sync code. An async receiver's coroutine is closed and
        logged: sync code has no loop to run it on (use `asend` where there is one)."""
        responses = []
        for fn in self._matching(sender):
            try:
                response = fn(signal=self, sender=sender, **named)
                if inspect.isawaitable(response):
                    _close(response)
                    log.error("signal %s: receiver %r is async; sent from sync code, not run",
                              self.name, fn)  # fmt: skip
                    response = None
            except Exception as exc:
                log.exception("signal %s: receiver %r raised", self.name, fn)
                response = exc
            responses.append((fn, response))
        return responses

    async def asend(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver, awaiting the async ones, in the order they connected."""
        responses = []
        for fn in self._matching(sender):
            try:
                response = fn(signal=self, sender=sender, **named)
                if inspect.isawaitable(response):
                    response = await response
            except Exception as exc:
                log.exception("signal %s: receiver %r raised", self.name, fn)
                response = exc
            responses.append((fn, response))
        return responses

    def __bool__(self) -> bool:
        return True

    def has_receivers(self) -> bool:
        """Cheap check for the per-task path: no receivers, nothing to build."""
        return bool(self._receivers)


def _sender_key(sender: Any) -> Any:
    return None if sender is None else (sender if isinstance(sender, str) else id(sender))


def _same(wanted: Any, sender: Any) -> bool:
    """A receiver for sender "tasks.add" matches the task named so, or the task object."""
    if wanted is sender or wanted == sender:
        return True
    return isinstance(wanted, str) and getattr(sender, "name", None) == wanted


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_received = Signal("task_received")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_init",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
]
