"""Celery's --pool names, mapped onto aiotq's executors.

aiotq has no pool of its own to choose: every worker runs async tasks on its event loop,
up to --concurrency at once. The pool decides where the *sync* tasks go whose executor the
task did not choose (`@app.task(executor=...)` always wins):

    prefork  a child process each (the process executor, --processes children): Celery's
             default, for CPU-bound code; a task that is not module-level stays in threads
    threads  the thread executor (--threads), aiotq's default
    solo     the thread executor with one thread: one sync task at a time, as Celery's solo
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, get_args

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from ..app import App

Pool = Literal["prefork", "threads", "solo"]
POOLS: tuple[str, ...] = get_args(Pool)

log = logging.getLogger("aiotq.worker")


ALIASES: dict[str, Pool] = {"prefork": "prefork", "processes": "prefork", "threads": "threads",
                            "solo": "solo"}  # fmt: skip


def check_pool(name: str) -> Pool:
    """Celery's pool names; eventlet and gevent are refused with what to use instead."""
    pool = ALIASES.get(name.lower())
    if pool is not None:
        return pool
    if name.lower() in ("eventlet", "gevent"):
        raise ConfigurationError(
            f"--pool {name}: aiotq runs on asyncio; write the task as `async def` (it runs"
            " on the worker's loop, up to --concurrency at once)"
        )
    raise ConfigurationError(f"unknown pool {name!r}; use one of: {', '.join(POOLS)}")


def apply_pool(app: App, pool: str | None) -> int | None:
    """Set the executor of each sync task that did not choose one, for `pool`. Returns the
    thread pool size the pool implies (1 for solo), or None. Idempotent; call it once the
    app's task modules are imported (after `app.finalize()`)."""
    if pool is None:
        return None
    chosen = check_pool(pool)
    left_in_threads = []
    for task in app.tasks.values():
        if task.is_async or task.executor_chosen:
            continue
        movable = "<locals>" not in task.fn.__qualname__  # a child finds it by name
        task.executor = "process" if chosen == "prefork" and movable else "thread"
        if chosen == "prefork" and not movable:
            left_in_threads.append(task.name)
    if left_in_threads:
        log.warning(
            "--pool prefork: %s not module-level (a child process cannot import it), so it"
            " runs in a thread: %s",
            "this task is" if len(left_in_threads) == 1 else "these tasks are",
            ", ".join(sorted(left_in_threads)),
        )
    return 1 if chosen == "solo" else None
