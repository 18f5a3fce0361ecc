"""AsyncResult: the handle a send returns.

In async code its methods are awaited (`await r.get(timeout=5)`); from sync code (no loop
running in this thread) the same calls block and return values, as Celery's do. Properties
(`state`, `result`, `traceback`...) fetch from sync code; in async code they show what the
last awaited call fetched, so call `await r.refresh()` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from ._portal import in_running_loop
from .control import Control
from .producer import HasProducer, Producer, producer_of
from .protocol import (
    READY_STATES,
    ResultRecord,
    decode_record,
    group_meta_key,
)

R = TypeVar("R")
T = TypeVar("T")

# The Celery state names, importable as `aiotq.states.SUCCESS` etc.
PENDING, RECEIVED, STARTED, RETRY = "PENDING", "RECEIVED", "STARTED", "RETRY"
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED})
# a task may store states of its own (`self.update_state(state="PROGRESS", meta=...)`)
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})  # their result is an exception
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})  # get() raises on these (propagate=True)
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
_EXCEPTION, _PROPAGATE = EXCEPTION_STATES, PROPAGATE_STATES  # get()'s parameters shadow them

OnMessage = Callable[[dict[str, Any]], Any]


class Waiting:
    """The optional parts of a get(): Celery's callback, on_message and on_interval."""

    __slots__ = ("callback", "interval_s", "on_interval", "on_message", "propagate_states")

    def __init__(
        self,
        callback: Callable[[str, Any], Any] | None,
        on_message: OnMessage | None,
        on_interval: Callable[[], Any] | None,
        interval_s: float,
        propagate_states: Collection[str],
    ) -> None:
        self.callback = callback
        self.on_message = on_message
        self.on_interval = on_interval
        self.interval_s = interval_s
        self.propagate_states = propagate_states

    async def wait(self, result: AsyncResult[Any], limit_s: float | None) -> ResultRecord:
        if self.on_interval is None:
            return await result._wait_ready(limit_s, self.on_message)
        async with self._ticking():
            return await result._wait_ready(limit_s, self.on_message)

    @contextlib.asynccontextmanager
    async def _ticking(self) -> AsyncIterator[None]:
        """on_interval every `interval` seconds while waiting."""
        assert self.on_interval is not None
        tick = self.on_interval

        async def ticker() -> None:
            while True:
                await asyncio.sleep(self.interval_s)
                await _maybe_await(tick())

        ticking = asyncio.ensure_future(ticker())
        try:
            yield
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking


def meta_of(record: ResultRecord) -> dict[str, Any]:
    """A record as Celery's on_message sees it."""
    done = record.date_done_s
    return {
        "task_id": record.task_id,
        "status": record.state,
        "result": record.result if record.failure is None else str(record.failure),
        "traceback": record.traceback,
        "children": list(record.children),
        "date_done": datetime.fromtimestamp(done, UTC).isoformat() if done else None,
        "name": record.task,
        "retries": record.retries,
    }


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AsyncResult(Generic[R]):
    def __init__(
        self,
        id: str,
        app: Producer | HasProducer | None = None,
        *,
        task_name: str | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        producer = producer_of(app)
        if producer is None:
            raise TypeError("AsyncResult needs app=: aiotq keeps no global current app")
        self.id = id
        self.task_id = id
        self.producer = producer
        self.task_name = task_name
        self.parent = parent
        self._record: ResultRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _run(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Awaitable in a running loop; otherwise run on the app's portal and return the value."""
        if in_running_loop():
            return coro
        return self.producer.call(coro)

    # -- waiting -------------------------------------------------------------------------
    # Celery's signature. `interval`, `no_ack` and `disable_sync_subtasks` are accepted and
    # change nothing: results are not polled (every backend wakes its waiters), and a get()
    # inside a task is allowed (an async task's await frees the loop). `follow_parents`:
    # a chain's failure is already stored under its later results, so get() raises it.
    if TYPE_CHECKING:

        async def get(
            self,
            timeout: float | None = None,  # noqa: ASYNC109  # Celery's name
            propagate: bool = True,
            interval: float = 0.5,
            no_ack: bool = True,
            follow_parents: bool = True,
            callback: Callable[[str, Any], Any] | None = None,
            on_message: OnMessage | None = None,
            on_interval: Callable[[], Any] | None = None,
            disable_sync_subtasks: bool = True,
            EXCEPTION_STATES: Collection[str] = _EXCEPTION,
            PROPAGATE_STATES: Collection[str] = _PROPAGATE,
        ) -> R: ...

    else:

        def get(
            self,
            timeout=None,
            propagate=True,
            interval=0.5,
            no_ack=True,
            follow_parents=True,
            callback=None,
            on_message=None,
            on_interval=None,
            disable_sync_subtasks=True,
            EXCEPTION_STATES=_EXCEPTION,
            PROPAGATE_STATES=_PROPAGATE,
        ):
            plain = callback is None and on_message is None and on_interval is None
            if plain and PROPAGATE_STATES is _PROPAGATE:
                return self._run(self._get(timeout, propagate))
            waiting = Waiting(callback, on_message, on_interval, interval, PROPAGATE_STATES)
            return self._run(self._get(timeout, propagate, waiting))

    def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Blocking get, typed for sync code. Not for use inside a running loop."""
        if in_running_loop():
            raise RuntimeError("AsyncResult.wait() blocks; in async code use `await r.get()`")
        result: R = self.producer.call(self._get(timeout, propagate))
        return result

    async def _get(
        self, limit_s: float | None, propagate: bool, waiting: Waiting | None = None
    ) -> R:
        propagating: Collection[str]
        if waiting is None:
            record = await self._wait_ready(limit_s)
            propagating = PROPAGATE_STATES
        else:
            record = await waiting.wait(self, limit_s)
            propagating = waiting.propagate_states
        value: Any
        if record.state == SUCCESS:
            value = record.result
        else:
            value = self._exception_of(record)
            if propagate and record.state in propagating:
                raise value
        if waiting is not None and waiting.callback is not None:
            await _maybe_await(waiting.callback(self.id, value))
        return value

    def _exception_of(self, record: ResultRecord) -> BaseException:
        return record.exception()

    async def _wait_ready(
        self, limit_s: float | None, on_message: OnMessage | None = None
    ) -> ResultRecord:
        backend = self.producer.wiring.backend
        try:
            async with asyncio.timeout(limit_s):
                async for data in backend.watch(self.id):
                    record = decode_record(data)
                    self._record = record
                    if on_message is not None:
                        await _maybe_await(on_message(meta_of(record)))
                    if record.state in READY_STATES:
                        return record
        except TimeoutError:
            raise TimeoutError(
                f"result of task {self.id} not ready after {limit_s:g}s "
                f"(state {self._record.state if self._record else PENDING})"
            ) from None
        raise AssertionError("watch() ended")  # pragma: no cover

    # -- state ---------------------------------------------------------------------------
    async def _refresh(self) -> ResultRecord | None:
        backend = self.producer.wiring.backend
        data = await backend.get(self.id)
        self._record = decode_record(data) if data is not None else None
        return self._record

    def refresh(self) -> Awaitable[ResultRecord | None]:
        return self._run(self._refresh())  # type: ignore[no-any-return,unused-ignore]

    async def _state_now(self) -> str:
        record = await self._refresh()
        return record.state if record else PENDING

    def ready(self) -> Any:
        return self._run(self._is(lambda state: state in READY_STATES))

    def successful(self) -> Any:
        return self._run(self._is(lambda state: state == SUCCESS))

    def failed(self) -> Any:
        return self._run(self._is(lambda state: state == FAILURE))

    async def _is(self, test: Any) -> bool:
        return bool(test(await self._state_now()))

    def forget(self) -> Any:
        async def forget() -> None:
            backend = self.producer.wiring.backend
            await backend.forget(self.id)
            self._record = None

        return self._run(forget())

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> Any:
        """Never run this task (a worker that starts later refuses it too), and with
        `terminate` stop it where it runs; its result turns REVOKED at once."""
        return self._run(
            Control(self.producer).arevoke([self.id], terminate=terminate, signal=signal)
        )

    def _current(self) -> ResultRecord | None:
        if not in_running_loop():
            return self.producer.call(self._refresh())
        return self._record

    @property
    def state(self) -> str:
        record = self._current()
        return record.state if record else PENDING

    status = state

    @property
    def result(self) -> Any:
        """The value on success, the exception on failure (and the cause of a retry), the
        meta of a state of the task's own (`update_state`), None before."""
        record = self._current()
        if record is None:
            return None
        if record.state == SUCCESS or (record.failure is None and record.state not in READY_STATES):
            return record.result
        return self._exception_of(record)

    info = result

    @property
    def name(self) -> str | None:
        """The task's name (stored with every result; known before it runs when sent here)."""
        record = self._current()
        return record.task if record is not None and record.task else self.task_name

    # stored with `result_extended = True` (Celery's names); None otherwise
    @property
    def args(self) -> list[Any] | None:
        record = self._current()
        return record.args if record else None

    @property
    def kwargs(self) -> dict[str, Any] | None:
        record = self._current()
        return record.kwargs if record else None

    @property
    def worker(self) -> str | None:
        record = self._current()
        return record.worker if record else None

    @property
    def queue(self) -> str | None:
        record = self._current()
        return record.queue if record else None

    @property
    def traceback(self) -> str | None:
        record = self._current()
        return record.traceback if record else None

    @property
    def date_done(self) -> datetime | None:
        record = self._current()
        if record is None or record.date_done_s is None:
            return None
        return datetime.fromtimestamp(record.date_done_s, UTC)

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """Results of what this task's success sent: its links, a chain's next step."""
        record = self._current()
        return [
            AsyncResult(i, self.producer, parent=self) for i in (record.children if record else [])
        ]

    @property
    def retries(self) -> int:
        record = self._current()
        return record.retries if record else 0


class GroupResult:
    """The results of a group's members, in the order they were given.

    Like AsyncResult: awaited in async code, blocking in sync code."""

    def __init__(
        self, id: str, results: list[AsyncResult[Any]], app: Producer | HasProducer
    ) -> None:
        producer = producer_of(app)
        assert producer is not None
        self.id = id
        self.results = results
        self.children = results
        self.producer = producer
        self.parent: AsyncResult[Any] | GroupResult | None = None

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def _run(self, coro: Coroutine[Any, Any, T]) -> Any:
        if in_running_loop():
            return coro
        return self.producer.call(coro)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], Any] | None = None,
        no_ack: bool = True,
        on_message: OnMessage | None = None,
        disable_sync_subtasks: bool = True,
        on_interval: Callable[[], Any] | None = None,
    ) -> Any:
        """Every member's result, in call order; the first failure raises (propagate).
        Celery's arguments: `callback(task_id, value)` is called for each member instead
        of collecting its value (the list is then empty); `on_message` sees each member's
        state changes; `interval`, `no_ack`, `disable_sync_subtasks` change nothing (see
        AsyncResult.get)."""
        waiting = None
        if on_message is not None or on_interval is not None:
            waiting = Waiting(None, on_message, on_interval, interval, _PROPAGATE)
        return self._run(self._get(timeout, propagate, waiting, callback))

    join = get
    join_native = get  # Celery's faster join for Redis: the same wait here (nothing polls)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> Any:
        ids = [result.id for result in self.results]
        return self._run(Control(self.producer).arevoke(ids, terminate=terminate, signal=signal))

    async def _get(
        self,
        limit_s: float | None,
        propagate: bool,
        waiting: Waiting | None = None,
        callback: Callable[[str, Any], Any] | None = None,
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = None if limit_s is None else loop.time() + limit_s
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            value = await result._get(left, propagate, waiting)
            if callback is None:
                values.append(value)
            else:
                await _maybe_await(callback(result.id, value))
        return values

    async def _states(self) -> list[str]:
        return [await result._state_now() for result in self.results]

    def ready(self) -> Any:
        """True when every member finished (successfully or not)."""
        return self._run(self._count(lambda state: state in READY_STATES, all_=True))

    def successful(self) -> Any:
        return self._run(self._count(lambda state: state == SUCCESS, all_=True))

    def failed(self) -> Any:
        """True when any member failed."""
        return self._run(self._count(lambda state: state == FAILURE, any_=True))

    def waiting(self) -> Any:
        return self._run(self._count(lambda state: state not in READY_STATES, any_=True))

    def completed_count(self) -> Any:
        """How many members finished successfully (Celery's meaning)."""
        return self._run(self._count(lambda state: state == SUCCESS))

    async def _count(self, test: Any, all_: bool = False, any_: bool = False) -> Any:
        hits = sum(1 for state in await self._states() if test(state))
        if all_:
            return hits == len(self.results)
        if any_:
            return hits > 0
        return hits

    def forget(self) -> Any:
        async def forget() -> None:
            for result in self.results:
                await result.producer.wiring.backend.forget(result.id)

        return self._run(forget())

    @classmethod
    def restore(cls, group_id: str, app: Producer | HasProducer) -> Any:
        """The GroupResult of a chord's header by its id (the backend keeps the member ids)."""
        producer = producer_of(app)
        assert producer is not None

        async def restore() -> GroupResult | None:
            data = await producer.wiring.backend.get(group_meta_key(group_id))
            if data is None:
                return None
            ids = msgspec.json.decode(data, type=list[str])
            return cls(group_id, [AsyncResult(i, producer) for i in ids], producer)

        if in_running_loop():
            return restore()
        return producer.call(restore())


class EagerResult(AsyncResult[R]):
    """The result of a task run here and now (`task.apply()`, `task_always_eager`): ready
    at once, kept in this object, never in the backend. Awaited in async code and plain in
    sync code, like AsyncResult."""

    def __init__(
        self,
        id: str,
        app: Producer | HasProducer,
        record: ResultRecord,
        exception: BaseException | None = None,
    ) -> None:
        super().__init__(id, app, task_name=record.task)
        self._record = record
        self._exception = exception

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    def _run(self, coro: Coroutine[Any, Any, T]) -> Any:
        if in_running_loop():
            return coro
        return _drive(coro)  # nothing here waits: run it through without a loop

    def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        result: R = _drive(self._get(timeout, propagate))
        return result

    def _exception_of(self, record: ResultRecord) -> BaseException:
        return self._exception if self._exception is not None else record.exception()

    async def _wait_ready(
        self, limit_s: float | None, on_message: OnMessage | None = None
    ) -> ResultRecord:
        assert self._record is not None
        if on_message is not None:
            await _maybe_await(on_message(meta_of(self._record)))
        return self._record

    async def _refresh(self) -> ResultRecord | None:
        return self._record

    def _current(self) -> ResultRecord | None:
        return self._record

    def forget(self) -> Any:
        return self._run(_nothing())

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> Any:
        return self._run(_nothing())  # it has run already


async def _nothing() -> None:
    return None


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (an EagerResult's) to its value, without a loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    coro.close()
    raise RuntimeError("an EagerResult call waited on something")  # pragma: no cover
