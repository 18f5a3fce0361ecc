"""The Task object made by `@app.task`."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from .canvas import Signature
from .exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from .request import Request, current_request
from .result import AsyncResult
from .settings import parse_rate

if TYPE_CHECKING:
    from .producer import Producer

P = ParamSpec("P")
R = TypeVar("R")
Executor = Literal["inline", "thread", "process"]


class Task(Generic[P, R]):
    """A registered task. Call it to run here and now; `send`/`delay`/`apply_async` to queue it."""

    def __init__(
        self,
        producer: Producer,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        bind: bool = False,
        queue: str | None = None,
        max_retries: int | None = None,
        default_retry_delay: float | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Sequence[type[BaseException]] = (),
        retry_kwargs: dict[str, Any] | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        acks_late: bool | None = None,
        ignore_result: bool | None = None,
        rate_limit: str | None = None,
        expires: float | None = None,
        executor: Executor | None = None,
        priority: int | None = None,
        max_deliveries: int | None = None,
        typing: bool = True,
    ) -> None:
        self.producer = producer
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.bind = bind
        self.is_async = inspect.iscoroutinefunction(fn)
        self.executor: Executor = executor or ("inline" if self.is_async else "thread")
        self.executor_chosen = executor is not None  # else a worker's --pool may choose it
        if self.is_async and self.executor != "inline":
            raise ConfigurationError(
                f"task {self.name}: async tasks run inline, not in a {executor}"
            )
        if not self.is_async and self.executor == "inline":
            raise ConfigurationError(
                f"task {self.name}: a sync task would block the loop inline; use thread or process"
            )
        if self.executor == "process" and "<locals>" in fn.__qualname__:
            raise ConfigurationError(
                f"task {self.name}: process tasks must be module-level functions"
            )
        self.queue = queue
        retry_kwargs = retry_kwargs or {}
        self.max_retries = retry_kwargs.get("max_retries", max_retries)
        self.default_retry_delay = default_retry_delay
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.autoretry_for = tuple(autoretry_for)
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.acks_late = acks_late
        self.ignore_result = ignore_result
        self.rate_limit = rate_limit
        self.rate_per_s = parse_rate(rate_limit)
        self.expires = expires
        self.priority = priority
        if max_deliveries is not None and max_deliveries < 1:
            raise ConfigurationError(f"task {self.name}: max_deliveries must be 1 or more")
        self.max_deliveries = max_deliveries  # None: the task_max_deliveries setting
        self.typing = typing
        self._signature = inspect.signature(fn)
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

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
        try:
            if self.bind:
                self._signature.bind(None, *args, **kwargs)
            else:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self._signature}: {exc}") from None

    # -- sending ---------------------------------------------------------------------------
    async def send(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task from async code: `await send_sms.send("+1555", "hi")`."""
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
        task_id = await self.producer.send(
            self.name, tuple(args or ()), dict(kwargs or {}), options, task=self
        )
        return AsyncResult(task_id, self.producer, task_name=self.name)

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
