"""Running one delivery: decode, check, execute under limits, decide the outcome.

The outcome (a result record to store and what to do with the delivery afterwards) goes to
the result publisher, which stores first and acknowledges second: acks late by default.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import enum
import logging
import reprlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any

import msgspec

from ..exceptions import (
    BackendError,
    DeliveryLimitExceeded,
    MessageRejected,
    NotRegistered,
    Reject,
    Retry,
    TaskRevoked,
)
from ..protocol import CODECS, Message, ResultRecord, decode_message
from ..task import Request, Task, current_request
from .followups import FollowUps, children_of, has_followups
from .limits import RateLimiter, with_limits
from .process import ProcessPool, error_info, pack_call, run_in_child, unpack_answer

if TYPE_CHECKING:
    from ..app import App
    from ..brokers.base import Delivery

log = logging.getLogger("aiotq.worker")


class AckPolicy(enum.Enum):
    """When a message is acknowledged. The default is the safe one."""

    AFTER_RESULT_STORED = "after_result_stored"  # acks late: a crash means redelivery
    ON_RECEIPT = "on_receipt"  # acks early: a crash loses the task (at-most-once)


class Settle(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"
    NONE = "none"  # already acknowledged on receipt


@dataclass(slots=True)
class Outcome:
    task_id: str | None
    data: bytes | None  # encoded ResultRecord to store, if any
    delivery: Delivery | None
    settle: Settle
    reason: str | None = None
    after: Callable[[], Awaitable[None]] | None = None  # follow-ups, once the result is stored


class WorkerLost(Exception):
    """The process running the task died (or was ended for another task's time limit)."""


class RemoteError(Exception):
    """A failure reported by a child process, carried as data."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info["message"])
        self.info = info


def failure_fields(exc: BaseException) -> dict[str, Any]:
    info = exc.info if isinstance(exc, RemoteError) else error_info(exc)
    return {
        "exc_type": info["type"],
        "exc_module": info["module"],
        "exc_message": info["message"],
        "traceback": info["traceback"],
        "result": info["args"],
    }


class Executor:
    def __init__(self, app: App, hostname: str, threads: int, processes: int) -> None:
        self.app = app
        self.settings = app.conf.settings
        self.hostname = hostname
        self.accept = frozenset(self.settings.accept_content)
        self.result_codec = CODECS[self.settings.result_serializer]
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="aiotq-task")
        self.processes = ProcessPool(processes)
        self._limiters: dict[str, RateLimiter] = {}
        self.followups = FollowUps(app)
        # built once: the success line's value, bounded (None: values are not logged at all)
        self.value_repr = (
            ValueRepr(self.settings.worker_log_value_max)
            if self.settings.worker_log_values
            else None
        )

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.processes.shutdown()

    # -- the per-delivery path -----------------------------------------------------------
    async def handle(self, delivery: Delivery) -> list[Outcome]:
        try:
            message = decode_message(
                delivery.body, delivery.headers.get("content-type"), self.accept
            )
        except MessageRejected as exc:
            log.error("Rejected message %s: %s", delivery.headers.get("id", "?"), exc.reason)
            return [Outcome(None, None, delivery, Settle.DEAD_LETTER, exc.reason)]
        task = self.app.tasks.get(message.task)
        if task is None:
            reason = f"unknown task {message.task!r} (not registered in this worker)"
            log.error("Rejected message %s: %s", message.id, reason)
            data = self._failure(message, NotRegistered(reason))
            return [Outcome(message.id, data, delivery, Settle.DEAD_LETTER, reason)]
        limit = task.max_deliveries or self.settings.task_max_deliveries
        if limit is not None and delivery.delivery_count > limit:
            reason = (
                f"delivered {delivery.delivery_count} times without finishing (limit {limit}:"
                " max_deliveries / task_max_deliveries); it may kill its worker"
            )
            log.error("Rejected message %s (%s): %s", message.id, message.task, reason)
            data = self._failure(message, DeliveryLimitExceeded(reason))
            return [Outcome(message.id, data, delivery, Settle.DEAD_LETTER, reason)]
        if message.reply_to is not None:  # rpc://: results go back to the caller's queue
            expect_reply = getattr(self.app.backend, "expect_reply", None)
            if expect_reply is not None:
                expect_reply(message.id, message.reply_to)
        label = f"{message.task}[{message.id}]"
        log.info("Task %s received", label)
        if message.expires_at_s is not None and time.time() > message.expires_at_s:
            log.warning("Task %s expired; not run", label)
            expired = TaskRevoked(f"task {label} expired")
            record = self._failure_record(message, expired, state="REVOKED")
            return [self._failed(message, record, delivery, Settle.ACK)]

        policy = self._policy(task)
        settle = Settle.ACK
        if policy is AckPolicy.ON_RECEIPT:
            await delivery.ack()
            settle = Settle.NONE
        if task.rate_per_s is not None:
            await self._limiter(task).wait()
        early: list[Outcome] = []
        if self.settings.task_track_started and not self._ignore(task, message):
            started = ResultRecord(task_id=message.id, state="STARTED", task=message.task)
            early.append(Outcome(message.id, self.result_codec.encode(started), None, Settle.NONE))

        request = self._request(message, delivery)
        began = time.perf_counter()
        try:
            value = await self._execute(task, message, request)
        except Retry as retry:
            return [*early, await self._retry(task, message, retry, delivery, settle)]
        except Reject as reject:
            log.warning("Task %s rejected: %s", label, reject.reason)
            how = Settle.REQUEUE if reject.requeue else Settle.DEAD_LETTER
            return [*early, Outcome(message.id, None, delivery, how, reject.reason)]
        except WorkerLost as lost:
            log.error("Task %s lost its process (%s); returned to the queue", label, lost)
            return [*early, Outcome(message.id, None, delivery, Settle.REQUEUE, str(lost))]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if task.autoretry_for and isinstance(_original(exc), task.autoretry_for):
                limit = task.effective_max_retries
                if limit is None or message.retries < limit:
                    again = Retry(exc, task.retry_delay_s(message.retries))
                    return [*early, await self._retry(task, message, again, delivery, settle)]
            elapsed = time.perf_counter() - began
            log.error("Task %s raised unexpected: %s: %s (after %.3fs)%s",
                      label, _type_name(exc), exc, elapsed, _child_stack(exc),
                      exc_info=None if isinstance(exc, RemoteError) else exc)  # fmt: skip
            record = self._failure_record(message, exc)
            return [*early, self._failed(message, record, delivery, settle)]
        elapsed = time.perf_counter() - began
        if self.value_repr is None:
            log.info("Task %s succeeded in %.6fs", label, elapsed)
        elif log.isEnabledFor(logging.INFO):  # the value's repr only when it is written
            log.info("Task %s succeeded in %.6fs: %s", label, elapsed, self.value_repr.repr(value))
        return [*early, self._succeeded(task, message, value, delivery, settle)]

    def _policy(self, task: Task[Any, Any]) -> AckPolicy:
        late = task.acks_late if task.acks_late is not None else self.settings.task_acks_late
        return AckPolicy.AFTER_RESULT_STORED if late else AckPolicy.ON_RECEIPT

    def _limiter(self, task: Task[Any, Any]) -> RateLimiter:
        limiter = self._limiters.get(task.name)
        if limiter is None:
            assert task.rate_per_s is not None
            limiter = self._limiters[task.name] = RateLimiter(task.rate_per_s)
        return limiter

    def _request(self, message: Message, delivery: Delivery) -> Request:
        return Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            eta=message.eta_at_s,
            expires=message.expires_at_s,
            parent_id=message.parent_id,
            root_id=message.root_id,
            group_id=message.group_id,
            delivery_info={
                "queue": delivery.queue,
                "routing_key": message.routing_key or delivery.queue,
                "redelivered": delivery.redelivered,
                "priority": message.priority,
            },
            hostname=self.hostname,
            called_directly=False,
            time_limit=message.time_limit_s,
            soft_time_limit=message.soft_time_limit_s,
            headers=message.headers,
        )

    async def _execute(self, task: Task[Any, Any], message: Message, request: Request) -> Any:
        hard = message.time_limit_s or task.time_limit or self.settings.task_time_limit_s
        soft = (
            message.soft_time_limit_s
            or task.soft_time_limit
            or self.settings.task_soft_time_limit_s
        )
        token = current_request.set(request)
        try:
            if task.is_async:
                return await with_limits(task(*message.args, **message.kwargs), hard, soft)
            loop = asyncio.get_running_loop()
            if task.executor == "thread":
                call = contextvars.copy_context().run
                future = loop.run_in_executor(self.threads, call, _call, task, message)
                return await with_limits(future, hard)
            from concurrent.futures.process import BrokenProcessPool  # with the pool: 4 MB

            payload = pack_call(message.args, message.kwargs, request)
            module, qualname = task.fn.__module__, task.fn.__qualname__
            try:
                future = loop.run_in_executor(
                    self.processes.executor, run_in_child, module, qualname, payload
                )
                answer = unpack_answer(await with_limits(future, hard))
            except BrokenProcessPool as exc:
                self.processes.kill()
                raise WorkerLost(f"process pool broke: {exc}") from None
            except BaseException:
                self.processes.kill()  # the hard limit (or a cold stop): end the process
                raise
            return _answer_value(answer)
        finally:
            current_request.reset(token)

    async def _retry(
        self,
        task: Task[Any, Any],
        message: Message,
        retry: Retry,
        delivery: Delivery,
        settle: Settle,
    ) -> Outcome:
        """Send the task again as a delayed message (the worker does not sleep on it)."""
        again = msgspec.structs.replace(
            message,
            retries=message.retries + 1,
            eta_at_s=time.time() + retry.countdown_s,
            args=list(retry.new_args) if retry.new_args is not None else message.args,
            kwargs=retry.new_kwargs if retry.new_kwargs is not None else message.kwargs,
        )
        await self.app.producer.publish_message(again)
        reason = f"{_type_name(retry.exc)}: {retry.exc}" if retry.exc else "retry requested"
        log.info(
            "Task %s[%s] retry: Retry in %gs: %s",
            message.task,
            message.id,
            retry.countdown_s,
            reason,
        )
        record = ResultRecord(
            task_id=message.id, state="RETRY", retries=message.retries + 1, task=message.task
        )
        if retry.exc is not None:
            for key, value in failure_fields(retry.exc).items():
                setattr(record, key, value)
        return Outcome(message.id, self.result_codec.encode(record), delivery, settle)

    def _ignore(self, task: Task[Any, Any], message: Message) -> bool:
        if message.chord is not None:
            return False  # the chord's body needs every member's result
        if message.ignore_result:
            return True
        return bool(
            task.ignore_result
            if task.ignore_result is not None
            else self.settings.task_ignore_result
        )

    def _succeeded(
        self, task: Task[Any, Any], message: Message, value: Any, delivery: Delivery, settle: Settle
    ) -> Outcome:
        """Store the value (unless ignored), then the follow-ups: links, chain, chord."""
        data = None
        if not self._ignore(task, message):
            record = ResultRecord(
                task_id=message.id, state="SUCCESS", result=value, date_done_s=time.time(),
                retries=message.retries, task=message.task, parent_id=message.parent_id,
                children=children_of(message),
            )  # fmt: skip
            try:
                data = self.result_codec.encode(record)
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
                error = TypeError(
                    f"result of {message.task} ({type(value).__name__}) cannot be stored as "
                    f"{self.result_codec.name}: {exc}"
                )
                log.error("Task %s[%s] failed: %s", message.task, message.id, error)
                return self._failed(message, self._failure_record(message, error), delivery, settle)
            limit = self.settings.result_max_bytes
            if len(data) > limit:  # past a backend's limit a store never passes: say so now
                too_big = BackendError(
                    f"the result of {message.task} is {len(data):,} bytes encoded, more than"
                    f" result_max_bytes ({limit:,}); store it elsewhere and return a reference"
                )
                log.error("Task %s[%s] failed: %s", message.task, message.id, too_big)
                return self._failed(
                    message, self._failure_record(message, too_big), delivery, settle
                )
        after = None
        if has_followups(message):
            after = partial(self.followups.after_success, message, value)
        return Outcome(message.id, data, delivery, settle, after=after)

    def _failure(self, message: Message, exc: BaseException, state: str = "FAILURE") -> bytes:
        return self.result_codec.encode(self._failure_record(message, exc, state))

    def _failure_record(
        self, message: Message, exc: BaseException, state: str = "FAILURE"
    ) -> ResultRecord:
        return ResultRecord(
            task_id=message.id, state=state,  # type: ignore[arg-type]
            date_done_s=time.time(), retries=message.retries, task=message.task,
            parent_id=message.parent_id, **failure_fields(exc),
        )  # fmt: skip

    def _failed(
        self, message: Message, record: ResultRecord, delivery: Delivery | None, settle: Settle
    ) -> Outcome:
        """The outcome of a task that failed (or expired): store it, then its error follow-ups."""
        after = None
        if has_followups(message):
            after = partial(self.followups.after_failure, message, record)
        return Outcome(message.id, self.result_codec.encode(record), delivery, settle, after=after)


def _call(task: Task[Any, Any], message: Message) -> Any:
    return task(*message.args, **message.kwargs)


def _answer_value(answer: dict[str, Any]) -> Any:
    if "ok" in answer:
        return answer["ok"]
    if "retry" in answer:
        exc = RemoteError(answer["exc"]) if answer.get("exc") else None
        raise Retry(exc, float(answer["retry"]))
    raise RemoteError(answer["error"])


def _original(exc: BaseException) -> BaseException:
    """The exception a child process raised, rebuilt where its type is importable."""
    if not isinstance(exc, RemoteError):
        return exc
    from ..protocol import ResultRecord as _Record
    from ..result import rebuild_exception

    info = exc.info
    record = _Record(
        task_id="", state="FAILURE", exc_type=info["type"], exc_module=info["module"],
        exc_message=info["message"], result=info["args"], traceback=info["traceback"],
    )  # fmt: skip
    rebuilt = rebuild_exception(record)
    return exc if type(rebuilt).__name__ == "TaskError" else rebuilt


def _type_name(exc: BaseException | None) -> str:
    if isinstance(exc, RemoteError):
        return str(exc.info["type"])
    return type(exc).__name__


def _child_stack(exc: BaseException) -> str:
    """A child process's traceback, as text after the failure line: its frames are not here."""
    if not isinstance(exc, RemoteError) or not exc.info.get("traceback"):
        return ""
    return "\n" + str(exc.info["traceback"]).rstrip()


class ValueRepr(reprlib.Repr):
    """A result as a log shows it: at most `limit` characters, and never repr'd whole (a
    100,000-character result or a million-item list costs what the limit shows)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        # leaves a little over the limit, so any cut shows as the tail "..." below
        self.maxstring = self.maxlong = self.maxother = limit + 3
        # work is bounded by items ** levels: 10 ** 4 leaves at most
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 10
        self.maxdeque = self.maxarray = self.maxdict = 10

    def repr(self, x: Any) -> str:
        try:
            text = super().repr(x)
        except Exception:  # a log line never fails the task (an int of 5,000 digits raises)
            text = f"<{type(x).__name__} that cannot be shown>"
        return text if len(text) <= self.limit else text[: max(self.limit - 3, 0)] + "..."

    def repr_bytes(self, x: bytes, level: int) -> str:  # reprlib would repr all of it
        return builtins.repr(x[: self.maxstring])

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        """In the dict's own order (reprlib sorts it: all of it, and not as a user wrote it)."""
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}"
            for key, value in islice(x.items(), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"
