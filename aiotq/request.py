"""The running task's request: `self.request` inside a bound task, and the context a send
reads its parent and root ids from. Its own module, low in the layers: the producer reads it
and the worker sets it, and neither may import task.py's upper layer."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Request:
    """`self.request` inside a bound task (Celery's names)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    called_directly: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False  # run here and now by task.apply() / task_always_eager
    # the last update_state() stored by a task of its own (called without await on a loop):
    # the next one waits for it, and the worker waits for it before the task's outcome
    pending_update: Any = field(default=None, repr=False, compare=False)


current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "aiotq_request", default=None
)

# The loop of the worker running this code (set once by the worker: its tasks and threads
# inherit it). A thread task's blocking calls (update_state) run there, on the worker's own
# connections, instead of starting the sync portal's loop and connections in the worker.
worker_loop: contextvars.ContextVar[Any] = contextvars.ContextVar("aiotq_worker_loop", default=None)
