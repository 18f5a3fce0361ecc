"""App: the composition root. It holds the settings and the task registry, builds the
broker and the result backend from their URLs when first needed, and the one `Producer`
every send goes through. The layers below (producer, task, canvas, result) never see it."""

from __future__ import annotations

import asyncio
import functools
import importlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from . import eager_canvas, shared
from . import result as _result
from ._sqlite import default_url
from .backends import make_backend, make_coordinator
from .backends.base import make_history, reply_routing
from .brokers import default_backend_url, make_broker
from .canvas import Signature
from .control import Control
from .events import Events
from .exceptions import ConfigurationError
from .mapping import register_builtins
from .producer import Producer, Wiring, call_pairs
from .protocol import CODECS
from .routing import Topology
from .schedules import Entry, crontab, schedule_of
from .settings import Config, Settings, settings_from_object
from .task import TASK_OPTIONS, Task

if TYPE_CHECKING:
    from .backends.base import Coordinator, ResultStore
    from .brokers.base import Broker
    from .history import HistoryStore

P = ParamSpec("P")
R = TypeVar("R")


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class _BoundDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R]) -> Task[P, R]: ...


class App:
    """`App("sms", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")`."""

    def __init__(
        self,
        main: str = "aiotq",
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Sequence[str] | None = None,
        task_cls: type[Task[Any, Any]] | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        # the base class of this app's tasks (Celery's app.Task): `class MyTask(app.Task)`
        self.Task: type[Task[Any, Any]] = _task_class(task_cls or Task)
        self.conf = Config()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.periodic_entries: dict[str, Entry] = {}  # @app.periodic (beat_schedule: settings)
        updates = dict(settings)
        for key, value in (
            ("broker_url", broker),
            ("result_backend", backend),
            ("include", include),
        ):
            if value is not None:
                updates[key] = list(value) if key == "include" else value
        self.conf.update(updates)
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultStore | None = None
        self._wired: Wiring | None = None
        self.producer = Producer(main, self.conf, self.tasks, self._wiring)
        self.producer.eager_canvas = eager_canvas.apply
        # autodiscover's (packages: a list, a callable giving one, None: Django's apps; related)
        self._autodiscover: list[
            tuple[Sequence[str] | Callable[[], Sequence[str]] | None, str | None]
        ] = []
        self._imported = False
        self._annotations: list[Any] | None = None  # task_annotations, checked at finalize
        register_builtins(self)  # Celery's celery.map / starmap / chunks / accumulate
        shared.app_created(self, set_as_current)  # @shared_task declared so far

    def set_current(self) -> None:
        """Make this the app `@shared_task` objects send through (also the last App created)."""
        shared.set_current(self)

    set_default = set_current

    def __repr__(self) -> str:
        return f"<App {self.main}>"

    # -- configuration ---------------------------------------------------------------------
    def config_from_object(self, obj: str | object, namespace: str | None = None) -> None:
        """Celery's: a module path, `"django.conf:settings"`, an object or a dict."""
        self.conf.update(settings_from_object(obj, namespace))

    def autodiscover(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str | None = "tasks",
        force: bool = False,
    ) -> None:
        """Celery's autodiscover_tasks: import `<package>.<related_name>` (else the package
        itself; `related_name=None`: only the package) for each package when the app
        finalizes, lazily, so task modules may import the app module that calls this.

        `packages` may be a callable, called then (Celery's `lambda: settings.INSTALLED_APPS`);
        none at all means Django's installed apps, so `proj/celery.py` may call
        `app.autodiscover_tasks()` before Django is set up. `force=True` imports now."""
        source = [packages] if isinstance(packages, str) else packages
        if source is not None and not callable(source):
            source = list(source)
        self._autodiscover.append((source, related_name))
        if force or self._imported:  # after finalize, nothing would import them later
            from . import django_fixup

            django_fixup.setup_if_configured()
            self._import_discovered(source, related_name)

    autodiscover_tasks = autodiscover

    def import_task_modules(self) -> None:
        """Import `imports`, `include`, then what autodiscover names; once, at finalize.
        With DJANGO_SETTINGS_MODULE set, `django.setup()` runs first (a task module may
        import its models), as Celery's Django fixup does."""
        if self._imported:
            return
        self._imported = True
        from . import django_fixup

        django_fixup.setup_if_configured()
        settings = self.conf.settings
        for module in [*settings.imports, *settings.include]:
            self._load_task_module(module)
        for source, related in self._autodiscover:
            self._import_discovered(source, related)

    def _import_discovered(
        self, source: Sequence[str] | Callable[[], Sequence[str]] | None, related: str | None
    ) -> None:
        """One autodiscover call: its packages (an AppConfig path is its app's package),
        each `<package>.<related>` if it exists, else the package itself."""
        from . import django_fixup

        if source is None:
            packages = django_fixup.installed_app_packages()
        else:
            packages = django_fixup.app_packages(source() if callable(source) else source)
        for package in packages:
            if related is None or not self._load_task_module(f"{package}.{related}", True):
                self._load_task_module(package)

    @staticmethod
    def _load_task_module(name: str, missing_ok: bool = False) -> bool:
        """Import one task module: False if it does not exist and that is allowed. Any
        error it raises becomes one that names the module (the CLI prints one line)."""
        try:
            importlib.import_module(name)
        except Exception as exc:
            if missing_ok and isinstance(exc, ModuleNotFoundError) and exc.name == name:
                return False
            raise ConfigurationError(
                f"cannot import task module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return True

    def finalize(self) -> Settings:
        """Freeze settings, read the environment once, build broker and backend (a bad URL
        fails here, naming it), import task modules. Idempotent and thread-safe."""
        with self._lock:
            if self._broker is not None:
                return self.conf.settings
            settings = self.conf.finalize()
            for name in (settings.task_serializer, settings.result_serializer):
                if name not in CODECS:
                    raise ConfigurationError(f"unknown serializer {name!r}")
            broker_url = settings.broker_url or default_url()  # the embedded SQLite file
            # the scheme table says what a broker's default results are (RabbitMQ: rpc://)
            backend_url = settings.result_backend or default_backend_url(broker_url)
            self.topology = Topology(
                settings.task_queues, settings.task_default_queue, settings.task_default_exchange,
                settings.task_default_exchange_type, settings.task_default_routing_key,
            )  # fmt: skip
            broker = make_broker(broker_url, settings)
            self._backend = make_backend(backend_url, settings, broker)
            self._broker = broker
            self._wired = Wiring(
                settings, broker, self._backend, self.topology,
                coordinator=make_coordinator(self._backend),
                replies=reply_routing(self._backend),
            )  # fmt: skip
            self._annotations = annotations_of(settings.task_annotations)
            for task in list(self.tasks.values()):
                annotate(task, self._annotations)
        self.import_task_modules()
        return settings

    def _wiring(self) -> Wiring:
        if self._wired is None:
            self.finalize()
        assert self._wired is not None
        return self._wired

    @property
    def broker(self) -> Broker:
        self.finalize()
        assert self._broker is not None
        return self._broker

    @property
    def backend(self) -> ResultStore:
        """Where results are kept."""
        self.finalize()
        assert self._backend is not None
        return self._backend

    @property
    def coordinator(self) -> Coordinator | None:
        """Counters, leases and a small key-value (chords, beat, operations): the result
        backend where it can be one; None with rpc://, which keeps nothing."""
        return self._wiring().coordinator

    # -- operations --------------------------------------------------------------------------
    @functools.cached_property
    def control(self) -> Control:
        """Remote control and inspection of the workers, as Celery's `app.control`."""
        return Control(self.producer)

    @functools.cached_property
    def history(self) -> HistoryStore | None:
        """Task history kept in the result backend (the dashboard's task pages); None with
        rpc:// or `history_max_tasks = 0`."""
        settings = self.finalize()
        return make_history(self.backend, settings.history_max_tasks, settings.history_max_age_s)

    @functools.cached_property
    def events(self) -> Events:
        """`async for event in app.events.receive(): ...`: the workers' events."""
        return Events(lambda: self.broker)

    # -- tasks -----------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> _BoundDecorator: ...
    @overload
    def task(self, *, bind: Literal[False] = ..., **options: Any) -> _Decorator: ...

    def task(  # type: ignore[misc]  # mypy cannot pair a positional-only default with **options
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        bind: bool = False,
        base: type[Task[Any, Any]] | None = None,
        **options: Any,
    ) -> Any:
        """Register a task: `@app.task` or `@app.task(bind=True, max_retries=3, ...)`;
        `base=MyTask` makes it an instance of your Task subclass (its handlers, its class
        attributes as option defaults)."""
        cls = _task_class(base) if base is not None else self.Task

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            if isinstance(fn, Task | shared.SharedTask):
                raise ConfigurationError(f"{fn!r} is a task already; decorate the function once")
            task: Task[Any, Any] = cls(self.producer, fn, bind=bind, **options)
            existing = self.tasks.get(task.name)
            if existing is not None and existing.fn is not fn and existing.__module__ != "__main__":
                raise ConfigurationError(f"two tasks are named {task.name!r}; pass name= to one")
            if self._annotations is not None:  # finalized: annotated as the others were
                annotate(task, self._annotations)
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[Any]:
        return _result.AsyncResult(task_id, self.producer)

    def signature(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return Signature(name, args, kwargs, options=options, app=self.producer)

    def periodic(
        self,
        schedule: float | timedelta | crontab | None = None,
        *,
        every: float | timedelta | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Callable[[Any], Any]:
        """A periodic task: `@app.periodic(every=30)` or `@app.periodic(crontab(minute="*/5"))`
        on a function (registered as a task too) or on a task. Beat sends it when due."""
        if (schedule is None) == (every is None):
            raise TypeError("periodic() takes a schedule or every=, one of them")
        when = schedule_of(schedule if schedule is not None else every)

        def register(fn: Any) -> Any:
            task = fn if isinstance(fn, Task) else self.task(fn)
            entry = Entry(
                name or task.name, task.name, when, tuple(args), dict(kwargs or {}), options
            )
            self.periodic_entries[entry.name] = entry
            return task

        return register

    # -- sending ---------------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _result.AsyncResult[Any]:
        """Send by name without importing the function (sync)."""
        return self.producer.call(self.asend_task(name, args, kwargs, **options))

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _result.AsyncResult[Any]:
        task_id = await self.producer.send(name, tuple(args or ()), dict(kwargs or {}), options)
        return _result.AsyncResult(task_id, self.producer, task_name=name)

    def send_many(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
        **options: Any,
    ) -> list[_result.AsyncResult[Any]]:
        """Send many calls of one task by name in one pipeline (sync; `asend_many` awaits)."""
        return self.producer.call(self.asend_many(name, calls, **options))

    async def asend_many(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
        **options: Any,
    ) -> list[_result.AsyncResult[Any]]:
        """`Task.send_many` by name: every call checked first (an error names the index of
        the bad one), then all published at once; their handles, in order."""
        task = self.tasks.get(name)
        if task is not None:
            return await task.send_many(calls, **options)
        pairs = call_pairs(name, calls, options)
        ids = await self.producer.send_many(
            [(name, args, kwargs, options, None) for args, kwargs in pairs]
        )
        return [_result.AsyncResult(task_id, self.producer, task_name=name) for task_id in ids]

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close this loop's broker and backend connections."""
        if self._broker is not None:
            await self._broker.aclose()
        if self._backend is not None:
            await self._backend.aclose()

    def close(self) -> None:
        """Close the sync portal (and its connections)."""
        self.producer.close(self.aclose() if self._broker is not None else None)


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> _BoundDecorator: ...
@overload
def shared_task(*, bind: Literal[False] = ..., **options: Any) -> _Decorator: ...


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """A task for a library or a reusable app, declared without an App: registered on every
    App (existing and created later); sending goes through the current app (aiotq/shared.py).
    Takes @app.task's options."""

    def declare(fn: Callable[..., Any]) -> Any:
        if options.get("base") is not None:
            _task_class(options["base"])
        return shared.declare(fn, options)

    return declare(fn) if fn is not None else declare


def _task_class(cls: Any) -> type[Task[Any, Any]]:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigurationError(f"base={cls!r}: a task class must be a subclass of aiotq.Task")
    return cls


# -- task_annotations (Celery's): applied to every task when the app finalizes ---------------


class _ByName:
    """`{"tasks.add": {...}, "*": {...}}`: one dict of annotations by task name."""

    def __init__(self, entries: dict[str, Any]) -> None:
        for name, values in entries.items():
            if not isinstance(name, str) or not isinstance(values, dict):
                raise ConfigurationError(
                    f"task_annotations: {name!r} must map a task name (or '*') to a dict of"
                    f" options, got {type(values).__name__}"
                )
            for key in values:
                if key not in TASK_OPTIONS and key not in _HANDLERS and not key.startswith("@"):
                    raise ConfigurationError(
                        f"task_annotations[{name!r}]: unknown task option {key!r}"
                    )
        self.entries = entries

    def annotate(self, task: Task[Any, Any]) -> dict[str, Any] | None:
        values = self.entries.get(task.name)
        return dict(values) if values is not None else None

    def annotate_any(self) -> dict[str, Any] | None:
        values = self.entries.get("*")
        return dict(values) if values is not None else None


_HANDLERS = frozenset({"before_start", "on_success", "on_failure", "on_retry", "after_return"})


def annotations_of(setting: Any) -> list[Any]:
    """The task_annotations setting as a list of annotators: a dict by task name, an object
    with `annotate(task)` (and optionally `annotate_any()`), or a list of those."""
    if setting is None:
        return []
    items = setting if isinstance(setting, (list, tuple)) else [setting]
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            module, _, attr = item.replace(":", ".").rpartition(".")
            try:
                item = getattr(importlib.import_module(module), attr)()
            except Exception as exc:
                raise ConfigurationError(
                    f"task_annotations: cannot load {item!r}: {type(exc).__name__}: {exc}"
                ) from None
        if isinstance(item, dict):
            out.append(_ByName(item))
        elif callable(getattr(item, "annotate", None)):
            out.append(item)
        else:
            raise ConfigurationError(
                "task_annotations: expected a dict of task name -> options, an object with"
                f" annotate(task), or a list of those; got {type(item).__name__}"
            )
    return out


def annotate(task: Task[Any, Any], annotators: list[Any]) -> None:
    """The first '*' entry, then the first entry for this task (the specific one wins)."""
    if not annotators:
        return
    anything = next((v for a in annotators if (v := _any(a)) is not None), None)
    specific = next((v for a in annotators if (v := a.annotate(task)) is not None), None)
    for values in (anything, specific):
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigurationError(
                f"task_annotations for {task.name}: annotate() returned"
                f" {type(values).__name__}, not a dict"
            )
        try:
            task.annotate(values)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"task_annotations for {task.name}: {exc}") from None


def _any(annotator: Any) -> dict[str, Any] | None:
    annotate_any = getattr(annotator, "annotate_any", None)
    return annotate_any() if annotate_any is not None else None


def run(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine on a fresh loop (uvloop where available). Used by the CLI."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
