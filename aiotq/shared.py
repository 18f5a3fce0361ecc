"""`@shared_task`: a task declared without an App, for libraries and reusable (Django) apps.

Celery's model: a shared task is registered on every App, those that exist when it is
declared and those created later, and the object `@shared_task` returns stands for the
copy on the *current* app: the App created last (as Celery's `set_as_current=True`), or the
one made current with `app.set_current()` / `app.set_default()`. One current app per
process (Celery keeps one per thread); an App created with `set_as_current=False` gets the
shared tasks but does not become current.

This is the one piece of process-wide state in aiotq, and only `@shared_task` reads it:
everything else hangs off an App passed explicitly. Apps are held weakly.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import ConfigurationError, NotRegistered

if TYPE_CHECKING:
    from .task import Task


class Registry(Protocol):
    """What this module reads of an App (app.py's, which imports this module)."""

    tasks: dict[str, Task[Any, Any]]

    def task(self, *args: Any, **options: Any) -> Any: ...


_lock = threading.RLock()
_apps: weakref.WeakSet[Any] = weakref.WeakSet()
_current: weakref.ref[Any] | None = None
_declared: list[SharedTask] = []


def app_created(app: Registry, set_as_current: bool = True) -> None:
    """Called by App.__init__: the shared tasks declared so far are registered on it."""
    with _lock:
        _apps.add(app)
        if set_as_current:
            set_current(app)
        for shared in _declared:
            shared.register(app)


def set_current(app: Registry) -> None:
    global _current
    with _lock:
        _current = weakref.ref(app)


def current_app() -> Registry:
    app = _current() if _current is not None else None
    if app is None:
        raise ConfigurationError(
            "a shared task was used before any App exists: create one (aiotq.App(...)) first"
        )
    return app


class SharedTask:
    """Stands for the task of this name on the current app: every attribute and call goes
    to that app's copy (`add.delay(2, 2)`, `add.name`, `add(2, 2)`)."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.__wrapped__ = fn
        self._options = options
        self.name: str = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__

    def register(self, app: Registry) -> None:
        existing = app.tasks.get(self.name)
        if existing is None or existing.fn is not self.__wrapped__:
            app.task(**self._options)(self.__wrapped__)

    @property
    def task(self) -> Task[Any, Any]:
        """This task on the current app."""
        app = current_app()
        task = app.tasks.get(self.name)
        if task is None:  # pragma: no cover - every app registers every shared task
            raise NotRegistered(f"shared task {self.name!r} is not registered on {app!r}")
        return task

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.task, attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self.name}>"


def declare(fn: Callable[..., Any], options: dict[str, Any]) -> SharedTask:
    shared = SharedTask(fn, options)
    with _lock:
        _declared.append(shared)
        for app in list(_apps):
            shared.register(app)
    return shared
