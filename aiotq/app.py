"""App: settings, the task registry, and the producer (every send goes through `_send`)."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

import msgspec

from . import result as _result
from ._portal import Portal
from ._sqlite import default_url
from .backends import make_backend
from .beat import Entry
from .brokers import make_broker
from .canvas import Signature, chord_ref, signature_list
from .exceptions import ConfigurationError
from .protocol import CODECS, Message
from .routing import Topology, resolve_route
from .schedules import crontab, schedule_of
from .settings import Config, Settings, settings_from_object
from .task import Task, current_request

if TYPE_CHECKING:
    from .backends.base import Backend
    from .brokers.base import Broker

P = ParamSpec("P")
R = TypeVar("R")

SEND_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority",
        "task_id", "headers", "ignore_result", "link", "link_error", "time_limit",
        "soft_time_limit", "serializer", "retries", "parent_id", "root_id", "group_id",
        "chain", "chord",
    }
)  # fmt: skip


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


def _epoch(value: datetime | float | None, *, relative: bool) -> float | None:
    """eta/expires as absolute epoch seconds; numbers (and timedelta) are relative for expires."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return time.time() + value.total_seconds()
    return time.time() + float(value) if relative else float(value)


class App:
    """`App("sms", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")`."""

    def __init__(
        self,
        main: str = "aiotq",
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Config()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._periodic: dict[str, Entry] = {}
        updates = dict(settings)
        for key, value in (
            ("broker_url", broker),
            ("result_backend", backend),
            ("include", include),
        ):
            if value is not None:
                updates[key] = list(value) if key == "include" else value
        self.conf.update(updates)
        self._portal = Portal(main)
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: Backend | None = None
        self._autodiscover: list[tuple[list[str], str]] = []
        self._imported = False

    def __repr__(self) -> str:
        return f"<App {self.main}>"

    # -- configuration ---------------------------------------------------------------------
    def config_from_object(self, obj: str | object, namespace: str | None = None) -> None:
        """Celery's: a module path, `"django.conf:settings"`, an object or a dict."""
        self.conf.update(settings_from_object(obj, namespace))

    def autodiscover(self, packages: Sequence[str], related_name: str = "tasks") -> None:
        """Import `<package>.tasks` (or the module itself) for each package, when the app
        finalizes: lazily, so task modules may import the app module that calls this."""
        self._autodiscover.append((list(packages), related_name))

    autodiscover_tasks = autodiscover

    def import_task_modules(self) -> None:
        if self._imported:
            return
        self._imported = True
        settings = self.conf.settings

        def load(name: str, missing_ok: bool = False) -> bool:
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

        for module in [*settings.imports, *settings.include]:
            load(module)
        for packages, related in self._autodiscover:
            for package in packages:
                if not load(f"{package}.{related}", missing_ok=True):
                    load(package)

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
            # RabbitMQ keeps no results: its default is rpc:// (replies to the caller's queue)
            rabbit = broker_url.startswith(("amqp://", "amqps://"))
            backend_url = settings.result_backend or ("rpc://" if rabbit else broker_url)
            self.topology = Topology(
                settings.task_queues, settings.task_default_queue, settings.task_default_exchange,
                settings.task_default_exchange_type, settings.task_default_routing_key,
            )  # fmt: skip
            broker = make_broker(broker_url, settings)
            self._backend = make_backend(backend_url, settings, broker)
            self._broker = broker
        self.import_task_modules()
        return settings

    @property
    def broker(self) -> Broker:
        self.finalize()
        assert self._broker is not None
        return self._broker

    @property
    def backend(self) -> Backend:
        self.finalize()
        assert self._backend is not None
        return self._backend

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
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a task: `@app.task` or `@app.task(bind=True, max_retries=3, ...)`."""

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, fn, bind=bind, **options)
            existing = self.tasks.get(task.name)
            if existing is not None and existing.fn is not fn and existing.__module__ != "__main__":
                raise ConfigurationError(f"two tasks are named {task.name!r}; pass name= to one")
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[Any]:
        return _result.AsyncResult(task_id, self)

    def signature(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return Signature(name, args, kwargs, options=options, app=self)

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
            self._periodic[entry.name] = entry
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
        return self._portal.call(self.asend_task(name, args, kwargs, **options))

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _result.AsyncResult[Any]:
        return await self._send(name, tuple(args or ()), dict(kwargs or {}), options)

    async def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task: Task[Any, Any] | None = None,
    ) -> _result.AsyncResult[Any]:
        unknown = set(options) - SEND_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
        settings = self.finalize()
        task = task or self.tasks.get(name)
        if task is not None:
            task.check_call(args, kwargs)
        route = resolve_route(settings.task_routes, name, args, kwargs)
        opt = {**route, **{k: v for k, v in options.items() if v is not None}}
        parent = current_request.get()
        parent_id = opt.get("parent_id") or (parent.id if parent else None)
        root_id = opt.get("root_id") or (parent.root_id or parent.id if parent else None)
        task_id = opt.get("task_id") or str(uuid.uuid4())
        countdown = opt.get("countdown")
        eta_at_s = _epoch(opt.get("eta"), relative=False)
        if countdown is not None:
            eta_at_s = time.time() + float(countdown)
        expires = opt.get("expires", task.expires if task else None)
        queue = opt.get("queue") or (task.queue if task else None) or settings.task_default_queue
        targets = self.topology.targets(queue, opt.get("exchange"), opt.get("routing_key"))
        reply_to = getattr(self.backend, "reply_to", None)  # rpc://: the caller's own queue
        message = Message(
            reply_to=await reply_to() if reply_to is not None else None,
            id=task_id,
            task=name,
            args=list(args),
            kwargs=dict(kwargs),
            retries=int(opt.get("retries", 0)),
            eta_at_s=eta_at_s,
            expires_at_s=_epoch(expires, relative=True),
            time_limit_s=opt.get("time_limit"),
            soft_time_limit_s=opt.get("soft_time_limit"),
            parent_id=parent_id,
            root_id=root_id or task_id,
            group_id=opt.get("group_id"),
            link=signature_list(opt.get("link")),
            link_error=signature_list(opt.get("link_error")),
            chain=signature_list(opt.get("chain")),
            chord=chord_ref(opt.get("chord")),
            ignore_result=bool(opt.get("ignore_result", False)),
            priority=opt.get("priority", task.priority if task else settings.task_default_priority),
            queue=targets[0],
            routing_key=opt.get("routing_key"),
            headers=dict(opt.get("headers") or {}),
        )
        if message.priority is not None and not 0 <= message.priority <= 9:
            raise ValueError(f"priority of {name} must be 0-9 (9 first), got {message.priority}")
        await self.publish_message(message, serializer=opt.get("serializer"), queues=targets)
        return _result.AsyncResult(task_id, self, task_name=name)

    async def publish_message(
        self, message: Message, serializer: str | None = None, queues: Sequence[str] = ()
    ) -> None:
        """Encode and publish to `queues` (default: the message's own queue; a fanout has
        several); the one path for first sends and retries."""
        settings = self.finalize()
        codec = CODECS.get(serializer or settings.task_serializer)
        if codec is None:
            raise ConfigurationError(f"unknown serializer {serializer!r}")
        try:
            body = codec.encode(message)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise _encode_error(message, codec.name, exc) from None
        delay_s = max(0.0, message.eta_at_s - time.time()) if message.eta_at_s else 0.0
        headers = {"content-type": codec.content_type, "id": message.id, "task": message.task}
        if message.priority is not None:
            headers["priority"] = str(message.priority)
        assert message.queue is not None
        for queue in queues or [message.queue]:
            await self.broker.publish(
                queue, body, headers, delay_s=delay_s, priority=message.priority
            )

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close this loop's broker and backend connections."""
        if self._broker is not None:
            await self._broker.aclose()
        if self._backend is not None:
            await self._backend.aclose()

    def close(self) -> None:
        """Close the sync portal (and its connections)."""
        self._portal.close(self.aclose() if self._broker is not None else None)

    def worker(self, **options: Any) -> Any:
        from .worker.worker import Worker

        return Worker(self, **options)


def _encode_error(message: Message, serializer: str, exc: Exception) -> TypeError:
    """Name the argument that cannot be encoded."""
    encode = CODECS[serializer].encode
    culprits = [(f"argument {i}", v) for i, v in enumerate(message.args)]
    culprits += [(f"keyword argument {k!r}", v) for k, v in message.kwargs.items()]
    for label, value in culprits:
        try:
            encode(value)
        except Exception as inner:
            return TypeError(
                f"{label} of {message.task} ({type(value).__name__}) "
                f"cannot be sent as {serializer}: {inner}"
            )
    return TypeError(f"message for {message.task} cannot be encoded as {serializer}: {exc}")


def run(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine on a fresh loop (uvloop where available). Used by the CLI."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
