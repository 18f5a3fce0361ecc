"""Celery's `task.map`, `task.starmap` and `task.chunks`: many calls of one task as few messages.

- `add.map([1, 2, 3])` is one message to the built-in task `celery.map`, which calls `add`
  on each item in the worker, in order, and returns the list of results.
- `add.starmap([(1, 2), (3, 4)])` is the same with each item spread as arguments.
- `add.chunks(pairs, 10)` cuts the items into chunks of 10: one `celery.starmap` message per
  chunk, sent as a group, so the chunks run in parallel; `.group()` gives that group.

The built-ins call the task's function directly (an async one awaited on the loop, a sync one
in a thread), so one item's failure fails the whole message, as in Celery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .canvas import AppLike, Signature, group

Task = Any  # aiotq.task.Task, one layer above: read here only for .is_async and calling

BUILTIN = "celery."  # the prefix of the built-ins' names (left out of listings, as in Celery)
MAP, STARMAP, CHUNKS, ACCUMULATE = (
    "celery.map",
    "celery.starmap",
    "celery.chunks",
    "celery.accumulate",
)


class xmap(Signature):
    """`task.map(items)`: one message; the worker calls the task on each item."""

    def __init__(self, task: str, it: Iterable[Any], app: AppLike | None = None) -> None:
        super().__init__(MAP, (), {"task": task, "it": list(it)}, app=app)


class xstarmap(Signature):
    """`task.starmap(items)`: one message; the worker calls the task with each item spread."""

    def __init__(self, task: str, it: Iterable[Any], app: AppLike | None = None) -> None:
        super().__init__(STARMAP, (), {"task": task, "it": [list(i) for i in it]}, app=app)


class chunks(Signature):
    """`task.chunks(items, n)`: the items cut into chunks of `n`, one message each, in
    parallel; the result is a GroupResult whose value is a list of lists."""

    def __init__(self, task: str, it: Iterable[Any], n: int, app: AppLike | None = None) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks of {n!r}: the chunk size must be a whole number, 1 or more")
        super().__init__(CHUNKS, (), {"task": task, "it": [list(i) for i in it], "n": n}, app=app)

    def group(self) -> group:
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [xstarmap(task, part, app=self.producer) for part in _cut(items, n)]
        return group(parts, app=self.producer, options=dict(self.options))

    async def aapply_async(
        self, args: Any = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        return await self.group().aapply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


def _cut(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


async def _call(task: Task, args: list[Any]) -> Any:
    if task.is_async:
        return await task(*args)
    return await asyncio.to_thread(task, *args)


def register_builtins(app: Any) -> None:
    """The built-in tasks every app has, under Celery's names."""
    tasks = app.tasks

    def task_named(name: str) -> Task:
        if name not in tasks:
            raise LookupError(f"{name!r} is not a task of this app")
        found: Task = tasks[name]
        return found

    @app.task(name=MAP, typing=False)
    async def celery_map(task: str, it: list[Any]) -> list[Any]:
        target = task_named(task)
        return [await _call(target, [item]) for item in it]

    @app.task(name=STARMAP, typing=False)
    async def celery_starmap(task: str, it: list[list[Any]]) -> list[Any]:
        target = task_named(task)
        return [await _call(target, list(item)) for item in it]

    @app.task(name=CHUNKS, typing=False)
    async def celery_chunks(task: str, it: list[list[Any]], n: int) -> list[list[Any]]:
        """A chunks signature sent as one message (inside a chain): run here, chunk by chunk."""
        target = task_named(task)
        return [[await _call(target, list(i)) for i in part] for part in _cut(it, n)]

    @app.task(name=ACCUMULATE, typing=False)
    async def celery_accumulate(*args: Any, index: int | None = None) -> Any:
        """Celery's: its arguments back (one of them with index=); a group's replacement ends
        in it so the group's list is the replaced task's result."""
        return args[index] if index is not None else args
