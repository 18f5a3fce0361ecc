"""AsyncResult: the handle a send returns.

In async code its methods are awaited (`await r.get(timeout=5)`); from sync code (no loop
running in this thread) the same calls block and return values, as Celery's do. Properties
(`state`, `result`, `traceback`...) fetch from sync code; in async code they show what the
last awaited call fetched, so call `await r.refresh()` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterator
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
    if TYPE_CHECKING:
        # Celery's signature, kept on purpose
        async def get(self, timeout: float | None = None, propagate: bool = True) -> R: ...  # noqa: ASYNC109

    else:

        def get(self, timeout=None, propagate=True):
            return self._run(self._get(timeout, propagate))

    def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Blocking get, typed for sync code. Not for use inside a running loop."""
        if in_running_loop():
            raise RuntimeError("AsyncResult.wait() blocks; in async code use `await r.get()`")
        result: R = self.producer.call(self._get(timeout, propagate))
        return result

    async def _get(self, limit_s: float | None, propagate: bool) -> R:
        record = await self._wait_ready(limit_s)
        if record.state == SUCCESS:
            value: R = record.result
            return value
        exc = record.exception()
        if propagate:
            raise exc
        return exc  # type: ignore[return-value]

    async def _wait_ready(self, limit_s: float | None) -> ResultRecord:
        backend = self.producer.wiring.backend
        try:
            async with asyncio.timeout(limit_s):
                async for data in backend.watch(self.id):
                    record = decode_record(data)
                    self._record = record
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
        """The value on success, the exception on failure, None before."""
        record = self._current()
        if record is None or record.state not in READY_STATES:
            return None
        return record.result if record.state == SUCCESS else record.exception()

    info = result

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

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Every member's result, in call order; the first failure raises (propagate)."""
        return self._run(self._get(timeout, propagate))

    join = get

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> Any:
        ids = [result.id for result in self.results]
        return self._run(Control(self.producer).arevoke(ids, terminate=terminate, signal=signal))

    async def _get(self, limit_s: float | None, propagate: bool) -> list[Any]:
        deadline = None if limit_s is None else asyncio.get_running_loop().time() + limit_s
        values = []
        for result in self.results:
            left = (
                None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            )
            values.append(await result._get(left, propagate))
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
