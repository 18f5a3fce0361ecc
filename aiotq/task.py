"""The Task object made by `@app.task`, and the base class for task classes of your own.

A task class is Celery's: subclass `Task` (or `app.Task`), override handlers (`on_success`,
`on_failure`, `on_retry`, `after_return`, `before_start`; sync or async) and give options as
class attributes; `@app.task(base=MyTask)` makes each task an instance of it. An option's
value is the decorator's, else the base class's attribute, else Task's default below; a
task_annotations entry overrides both (applied when the app finalizes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import random
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

import msgspec

from ._portal import in_running_loop
from .canvas import Signature
from .eager import run as run_eagerly
from .exceptions import ConfigurationError, MaxRetriesExceededError, Replace, Retry
from .mapping import chunks, xmap, xstarmap
from .producer import SEND_OPTIONS, call_pairs
from .protocol import CODECS, ResultRecord
from .request import Request, current_request, worker_loop
from .result import AsyncResult, EagerResult
from .settings import parse_rate
from .trace import HANDLER_NAMES, ExceptionInfo, Handlers
from .unique import Unique, checked, checked_ttl, key_of

if TYPE_CHECKING:
    from .producer import Producer

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Executor = Literal["inline", "thread", "process"]

# what @app.task(...), a base class's attributes and task_annotations may set
TASK_OPTIONS = frozenset(
    {
        "queue", "max_retries", "default_retry_delay", "retry_backoff", "retry_backoff_max",
        "retry_jitter", "autoretry_for", "retry_kwargs", "time_limit", "soft_time_limit",
        "acks_late", "ignore_result", "rate_limit", "expires", "executor", "priority",
        "max_deliveries", "typing", "rate_limit_scope", "unique", "unique_ttl",
    }
)  # fmt: skip

__all__ = ["TASK_OPTIONS", "ExceptionInfo", "Request", "Task"]


class Task(Generic[P, R]):
    """A registered task. Call it to run here and now; `send`/`delay`/`apply_async` to queue it."""

    # -- options: the defaults a task class of your own may override ------------------------
    queue: str | None = None
    max_retries: int | None = None  # None: the task_default_max_retries setting
    default_retry_delay: float | None = None
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    ignore_result: bool | None = None
    rate_limit: str | None = None
    # "global": every worker of the app shares the rate; None: the rate_limit_scope setting
    rate_limit_scope: Literal["worker", "global"] | None = None
    expires: float | None = None
    executor: Executor | None = None  # None: inline for async def, thread for def
    priority: int | None = None
    max_deliveries: int | None = None  # None: the task_max_deliveries setting
    typing: bool = True
    # one queued or running task per key (aiotq/unique.py): True keys on name + args +
    # kwargs, "args" on name + positional args, a callable (args, kwargs) returns the key
    unique: Unique = False
    unique_ttl: float | None = None  # None: the task_unique_ttl_s setting

    def __init__(
        self,
        producer: Producer,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        bind: bool = False,
        **options: Any,
    ) -> None:
        self.producer = producer
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.bind = bind
        self.is_async = inspect.iscoroutinefunction(fn)
        self._declared = dict(options)  # as declared: task_annotations merge into these
        self._signature = inspect.signature(fn)
        self._positional = _positional_counts(self._signature, bind)
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._configure()

    def _configure(self, **changes: Any) -> None:
        """Set the options from the declaration (plus `changes`), the class's attributes and
        the defaults, checking them: a bad one fails here, naming the task."""
        unknown = set(changes) - TASK_OPTIONS
        if unknown:
            raise TypeError(f"task {self.name}: unknown option(s) {', '.join(sorted(unknown))}")
        self._declared.update(changes)
        unknown = set(self._declared) - TASK_OPTIONS
        if unknown:
            raise TypeError(f"task {self.name}: unknown option(s) {', '.join(sorted(unknown))}")
        cls = type(self)
        value = {key: self._declared.get(key, getattr(cls, key)) for key in TASK_OPTIONS}
        executor = value["executor"]
        self.executor = executor or ("inline" if self.is_async else "thread")
        self.executor_chosen = executor is not None  # else a worker's --pool may choose it
        if self.is_async and self.executor != "inline":
            raise ConfigurationError(
                f"task {self.name}: async tasks run inline, not in a {executor}"
            )
        if not self.is_async and self.executor == "inline":
            raise ConfigurationError(
                f"task {self.name}: a sync task would block the loop inline; use thread or process"
            )
        if self.executor == "process" and "<locals>" in self.fn.__qualname__:
            raise ConfigurationError(
                f"task {self.name}: process tasks must be module-level functions"
            )
        if value["soft_time_limit"] is not None and not self.is_async:
            raise ConfigurationError(
                f"task {self.name}: soft_time_limit needs an async task (it raises"
                " SoftTimeLimitExceeded at an await); a sync task cannot be interrupted in a"
                " thread or a child process: use time_limit, or make it `async def`"
            )
        autoretry_for = tuple(value["autoretry_for"] or ())
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in autoretry_for):
            raise ConfigurationError(
                f"task {self.name}: autoretry_for takes exception classes, got {autoretry_for!r}"
            )
        if value["max_deliveries"] is not None and value["max_deliveries"] < 1:
            raise ConfigurationError(f"task {self.name}: max_deliveries must be 1 or more")
        try:
            self.rate_per_s = parse_rate(value["rate_limit"])
        except (ValueError, ConfigurationError) as exc:
            raise ConfigurationError(f"task {self.name}: {exc}") from None
        retry_kwargs = dict(value["retry_kwargs"] or {})
        self.queue = value["queue"]
        self.retry_kwargs = retry_kwargs
        self.max_retries = retry_kwargs.get("max_retries", value["max_retries"])
        self.default_retry_delay = value["default_retry_delay"]
        self.retry_backoff = value["retry_backoff"]
        self.retry_backoff_max = value["retry_backoff_max"]
        self.retry_jitter = value["retry_jitter"]
        self.autoretry_for = autoretry_for
        self.time_limit = value["time_limit"]
        self.soft_time_limit = value["soft_time_limit"]
        self.acks_late = value["acks_late"]
        self.ignore_result = value["ignore_result"]
        self.rate_limit = value["rate_limit"]
        if value["rate_limit_scope"] not in (None, "worker", "global"):
            raise ConfigurationError(
                f"task {self.name}: rate_limit_scope is 'worker' or 'global',"
                f" not {value['rate_limit_scope']!r}"
            )
        self.rate_limit_scope = value["rate_limit_scope"]
        self.expires = value["expires"]
        self.priority = value["priority"]
        self.max_deliveries = value["max_deliveries"]
        self.typing = value["typing"]
        self.unique = checked(self.name, value["unique"])
        self.unique_ttl = checked_ttl(self.name, value["unique_ttl"])
        # which handlers this class overrides: looked at once here, never per run
        self.custom_handlers = Handlers.of(self, Task)

    def annotate(self, values: Mapping[str, Any]) -> None:
        """Apply one task_annotations entry: options, or handlers (`on_failure`: a function
        taking self, bound to this task as Celery does)."""
        options = {}
        for key, value in values.items():
            if key in HANDLER_NAMES:
                if not callable(value):
                    raise ConfigurationError(
                        f"task_annotations for {self.name}: {key} must be callable"
                    )
                bound = value if inspect.ismethod(value) else types.MethodType(value, self)
                setattr(self, key, bound)
            elif key.startswith("@"):
                raise ConfigurationError(
                    f"task_annotations for {self.name}: {key!r}: method wrappers ('@name')"
                    " are not supported; use a task class (base=) that overrides it"
                )
            elif key not in TASK_OPTIONS:
                raise ConfigurationError(
                    f"task_annotations for {self.name}: unknown task option {key!r}"
                )
            else:
                options[key] = value
        self._configure(**options)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- handlers: override in a task class (sync or async; they run in the worker) -----------
    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Before the task runs; what it raises is the task's own failure (or retry)."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        """After the task returned."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> Any:
        """After the task failed for good (retries exhausted, time limit, ...)."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> Any:
        """When the task is to be retried (self.retry() or autoretry_for)."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> Any:
        """After on_success / on_failure (not after a retry, as in Celery)."""

    # -- running here and now ------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)

    @property
    def request(self) -> Request:
        return current_request.get() or Request()

    def check_call(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError in the producer for a call the function would refuse."""
        if not self.typing:
            return
        counts = self._positional  # the usual call, positional only: no Signature.bind
        if counts is not None and not kwargs and counts[0] <= len(args) <= counts[1]:
            return
        try:
            if self.bind:
                self._signature.bind(None, *args, **kwargs)
            else:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self._signature}: {exc}") from None

    def unique_key_of(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        """This call's unique-job key under `unique=` (None: not deduplicated)."""
        return key_of(self.name, self.unique, args, kwargs) if self.unique is not False else None

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Celery's apply: run the task here and now, handlers and signals included, and
        return its EagerResult (a failure is kept in it unless `throw`, default the
        task_eager_propagates setting). Retries run again at once."""
        return self.producer.call(self.aapply(args, kwargs, throw, **options))

    async def aapply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """The awaitable apply."""
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        _check_options(self.name, options)
        self.check_call(args, kwargs)
        if throw is None:
            throw = self.producer.conf.settings.task_eager_propagates
        return await run_eagerly(self, args, kwargs, options, throw)

    # -- sending ---------------------------------------------------------------------------
    async def send(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task from async code: `await send_sms.send("+1555", "hi")`."""
        if self.producer.conf.settings.task_always_eager:
            return await self.aapply(args, kwargs)
        task_id = await self.producer.send(self.name, args, kwargs, {}, task=self)
        return AsyncResult(task_id, self.producer, task_name=self.name)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task from sync code (a Django view, a script)."""
        return self.producer.call(self.send(*args, **kwargs))

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Celery's apply_async with options (countdown, eta, expires, queue, priority...)."""
        return self.producer.call(self.aapply_async(args, kwargs, **options))

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """The awaitable apply_async, for async code that needs options."""
        if options.get("soft_time_limit") is not None and not self.is_async:
            raise ConfigurationError(
                f"task {self.name}: soft_time_limit needs an async task; use time_limit"
            )
        if self.producer.conf.settings.task_always_eager:
            return await self.aapply(args, kwargs, **options)
        task_id = await self.producer.send(
            self.name, tuple(args or ()), dict(kwargs or {}), options, task=self
        )
        return AsyncResult(task_id, self.producer, task_name=self.name)

    async def send_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]], **options: Any
    ) -> list[AsyncResult[R]]:
        """Queue many calls at once: `await send_sms.send_many([((phone, text), {}), ...])`.
        Every call is checked first (an error names the index of the bad one, and nothing
        is sent); then all are published in one pipeline (one Redis round trip, one SQLite
        transaction, RabbitMQ's confirms awaited together), as safe as one send each once it
        returns. `options` (queue, countdown, priority...) apply to every call."""
        _check_options(self.name, options)
        if options.get("soft_time_limit") is not None and not self.is_async:
            raise ConfigurationError(
                f"task {self.name}: soft_time_limit needs an async task; use time_limit"
            )
        pairs = call_pairs(self.name, calls, options)
        if self.producer.conf.settings.task_always_eager:
            return [await self.aapply(args, kwargs, **options) for args, kwargs in pairs]
        ids = await self.producer.send_many(
            [(self.name, args, kwargs, options, self) for args, kwargs in pairs]
        )
        return [AsyncResult(task_id, self.producer, task_name=self.name) for task_id in ids]

    def delay_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]], **options: Any
    ) -> list[AsyncResult[R]]:
        """`send_many` from sync code (a Django view, a script)."""
        return self.producer.call(self.send_many(calls, **options))

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Celery's DjangoTask: send when the current Django transaction commits (never if
        it rolls back; at once outside one). The arguments are checked now."""
        self.check_call(args, kwargs)
        _on_commit(functools.partial(self.delay, *args, **kwargs))

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """apply_async once the current Django transaction commits (see delay_on_commit)."""
        _check_options(self.name, options)
        self.check_call(tuple(args or ()), dict(kwargs or {}))
        _on_commit(functools.partial(self.apply_async, args, kwargs, **options))

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, app=self.producer)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, app=self.producer, immutable=True)

    def signature(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        return Signature(self.name, tuple(args), kwargs or {}, options=options, app=self.producer)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        return AsyncResult(task_id, self.producer, task_name=self.name)

    # -- states of the task's own ------------------------------------------------------------
    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> Any:
        """Celery's: store a state of the running task's own (`state="PROGRESS"`, `meta=`
        any encodable value); `AsyncResult.state` / `.info` show it until the task ends.
        From sync code (a thread task) it returns once stored. On a loop (an async task) it
        is stored by a task of its own, in call order, and the worker waits for it before
        storing the outcome; `await` it (or use `aupdate_state`) to wait yourself."""
        request = current_request.get()
        if request is not None and request.is_eager:  # nothing is stored in eager mode
            return None if not in_running_loop() else _completed()
        store = self._store_state(self._state_record(task_id, state, meta, request))
        if not in_running_loop():
            loop = worker_loop.get()  # a thread task's: the worker's loop, blocking this thread
            if loop is not None and not loop.is_closed():
                return _blocking_on(loop, store)
            return self.producer.call(store)
        previous = request.pending_update if request is not None else None
        future = asyncio.ensure_future(_after(previous, store))
        if request is not None and not request.called_directly:
            request.pending_update = future
        else:  # outside a run: nothing waits for it but the caller, so keep it alive
            _detached.add(future)
            future.add_done_callback(_detached.discard)
        return future

    async def aupdate_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None:
        """The awaitable update_state."""
        request = current_request.get()
        if request is not None and request.is_eager:
            return
        record = self._state_record(task_id, state, meta, request)
        previous = request.pending_update if request is not None else None
        await _after(previous, self._store_state(record))

    async def _store_state(self, record: tuple[str, bytes]) -> None:
        await self.producer.wiring.backend.store(
            [record], self.producer.wiring.settings.result_expires_s
        )

    def _state_record(
        self, task_id: str | None, state: str | None, meta: Any, request: Request | None
    ) -> tuple[str, bytes]:
        """The record to store, checked and encoded now: bad input fails at the call."""
        running = request is not None and not request.called_directly
        task_id = task_id or (request.id if running and request is not None else None)
        if task_id is None:
            raise ValueError(f"{self.name}.update_state() outside a running task needs task_id=")
        if not isinstance(state, str) or not state:
            raise ValueError(f"{self.name}.update_state() needs a state, e.g. state='PROGRESS'")
        wiring = self.producer.wiring
        settings = wiring.settings
        record = ResultRecord(task_id=task_id, state=state, result=meta, task=self.name)
        if running and request is not None and request.id == task_id:
            record.retries, record.parent_id = request.retries, request.parent_id
            if settings.result_extended:
                record.args, record.kwargs = list(request.args), dict(request.kwargs)
                record.worker = request.hostname
                record.queue = request.delivery_info.get("queue")
        codec = CODECS[settings.result_serializer]
        try:
            data = codec.encode(record)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise TypeError(
                f"meta of {self.name}.update_state({state!r}) ({type(meta).__name__}) cannot"
                f" be stored as {codec.name}: {exc}"
            ) from None
        return task_id, data

    # -- many calls, and replacing ---------------------------------------------------------
    def map(self, it: Iterable[Any]) -> xmap:
        """Celery's: one message; the worker calls this task on each item, in order."""
        return xmap(self.name, it, app=self.producer)

    def starmap(self, it: Iterable[Sequence[Any]]) -> xstarmap:
        """Celery's: one message; the worker calls this task with each item's arguments."""
        return xstarmap(self.name, it, app=self.producer)

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> chunks:
        """Celery's: the items in chunks of `n`, one message each, run in parallel."""
        return chunks(self.name, it, n, app=self.producer)

    def replace(self, sig: Signature) -> Replace:
        """Celery's `raise self.replace(sig)`: `sig` runs instead of this task and inherits
        its callbacks, the rest of its chain, its chord and its result id."""
        if self.request.called_directly:
            raise TypeError(f"{self.name}: replace() works in a worker, not in a direct call")
        if not isinstance(sig, Signature):
            raise TypeError(f"{self.name}: replace() takes a signature, not {sig!r}")
        if self.executor == "process":
            raise TypeError(
                f"{self.name}: a process task cannot be replaced (its child has no broker)"
            )
        raise Replace(sig)

    # -- retrying --------------------------------------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
        throw: bool = True,
    ) -> Retry:
        """Raise Retry so the worker sends this task again; after the last retry, raise `exc`
        (or MaxRetriesExceededError). Use as `raise self.retry(exc=e, countdown=3)`."""
        request = self.request
        limit = max_retries if max_retries is not None else self.effective_max_retries
        if request.called_directly:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name} called directly cannot be retried")
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"can't retry {self.name}[{request.id}]: max retries ({limit}) exceeded"
            )
        if eta is not None:
            countdown = max(0.0, eta.timestamp() - datetime.now(eta.tzinfo).timestamp())
        if countdown is None:
            countdown = self.retry_delay_s(request.retries)
        retry = Retry(exc, countdown, tuple(args) if args is not None else None, kwargs)
        if throw:
            raise retry
        return retry

    @property
    def effective_max_retries(self) -> int | None:
        if self.max_retries is not None:
            return self.max_retries
        return self.producer.conf.settings.task_default_max_retries

    def retry_delay_s(self, retries: int) -> float:
        """Exponential backoff with full jitter if `retry_backoff`, else the fixed delay."""
        if self.retry_backoff:
            factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            delay = min(self.retry_backoff_max, factor * (2**retries))
            return random.uniform(0, delay) if self.retry_jitter else delay
        if self.default_retry_delay is not None:
            return float(self.default_retry_delay)
        return self.producer.conf.settings.task_default_retry_delay_s


_detached: set[asyncio.Future[Any]] = set()


async def _after(previous: asyncio.Future[Any] | None, store: Coroutine[Any, Any, T]) -> T:
    """Store after the previous update_state of the same run (its error was the caller's)."""
    if previous is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(previous)
    return await store


def _blocking_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on another thread's loop and wait; give up if that loop stops meanwhile (a
    cold stop), instead of waiting for ever on a call it will never run."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    while True:
        try:
            return future.result(timeout=1.0)
        except TimeoutError:
            if not loop.is_running():
                future.cancel()
                raise RuntimeError("the worker stopped before update_state() was stored") from None


def _completed() -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    unknown = set(options) - SEND_OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")


def _on_commit(send: Callable[[], Any]) -> None:
    try:
        from django.db import transaction  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "delay_on_commit / apply_async_on_commit send after a Django transaction commits:"
            " Django is not installed (pip install django)"
        ) from None
    transaction.on_commit(send)


def _positional_counts(signature: inspect.Signature, bind: bool) -> tuple[int, int] | None:
    """(required, accepted) positional arguments of a function taking plain positional
    parameters only (a call within both, without keywords, binds); None for any other."""
    kinds = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
    parameters = list(signature.parameters.values())
    if any(p.kind not in kinds for p in parameters) or (bind and not parameters):
        return None
    taken = parameters[1:] if bind else parameters  # a bound task's first is the task
    required = sum(1 for p in taken if p.default is inspect.Parameter.empty)
    return required, len(taken)
