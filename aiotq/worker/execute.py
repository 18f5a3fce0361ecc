"""Running one delivery: decode and check it, run the task (inline, in a thread, or in a
child process) under its limits, and ask outcome.py what that means.

Nothing here settles a message or publishes: `accept()` and `run()` return outcomes, and
the worker and the result publisher act on them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ..backends.base import reply_routing
from ..exceptions import (
    DeliveryLimitExceeded,
    MessageRejected,
    NotRegistered,
    Reject,
    Retry,
    TaskRevoked,
)
from ..protocol import Failure, Message, decode_message
from ..request import Request, current_request
from .followups import FollowUps
from .limits import RateLimiter, with_limits
from .logvalues import ValueRepr
from .outcome import Decide, Outcome, RemoteError, Settle, failure_of, original
from .presence import Counters
from .process import ProcessPool, pack_call, run_in_child, unpack_answer

if TYPE_CHECKING:
    from ..app import App
    from ..brokers.base import Delivery
    from ..task import Task

log = logging.getLogger("aiotq.worker")


class WorkerLost(Exception):
    """The process running the task died (or was ended for another task's time limit)."""


@dataclass(slots=True)
class Accepted:
    """A delivery that will run; `settle` is NONE when it is to be acked on receipt."""

    message: Message
    task: Task[Any, Any]
    settle: Settle
    label: str  # `name[id]`, as the log lines show it (made once per delivery)


class Executor:
    def __init__(self, app: App, hostname: str, threads: int, processes: int) -> None:
        self.tasks = app.tasks
        self.replies = reply_routing(app.backend)
        self.settings = app.conf.settings
        self.hostname = hostname
        self.accept_content = frozenset(self.settings.accept_content)
        self.decide = Decide(self.settings, FollowUps(app), app.producer.publish_message)
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="aiotq-task")
        self.processes = ProcessPool(processes)
        self._limiters: dict[str, RateLimiter] = {}
        self.counters = Counters()  # for this worker's presence record
        # what runs now and what ended lately: whom to name when the loop was blocked
        self.running: dict[str, float] = {}  # label -> loop time it started
        self.ended: deque[tuple[str, float]] = deque(maxlen=64)
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
    def accept(self, delivery: Delivery) -> Accepted | Outcome:
        """Decode and check: an Accepted to run, or the outcome of one that will not run."""
        decide = self.decide
        try:
            message = decode_message(
                delivery.body, delivery.headers.get("content-type"), self.accept_content
            )
        except MessageRejected as exc:
            log.error("Rejected message %s: %s", delivery.headers.get("id", "?"), exc.reason)
            return decide.undecodable(delivery, exc.reason)
        task = self.tasks.get(message.task)
        if task is None:
            reason = f"unknown task {message.task!r} (not registered in this worker)"
            log.error("Rejected message %s: %s", message.id, reason)
            return decide.refused(message, NotRegistered(reason), delivery)
        limit = task.max_deliveries or self.settings.task_max_deliveries
        if limit is not None and delivery.delivery_count > limit:
            reason = (
                f"delivered {delivery.delivery_count} times without finishing (limit {limit}:"
                " max_deliveries / task_max_deliveries); it may kill its worker"
            )
            log.error("Rejected message %s (%s): %s", message.id, message.task, reason)
            return decide.refused(message, DeliveryLimitExceeded(reason), delivery)
        if message.reply_to is not None and self.replies is not None:
            self.replies.expect_reply(message.id, message.reply_to)  # rpc://: the caller's queue
        label = f"{message.task}[{message.id}]"
        log.info("Task %s received", label)
        if message.expires_at_s is not None and time.time() > message.expires_at_s:
            log.warning("Task %s expired; not run", label)
            expired = Failure.of(TaskRevoked(f"task {label} expired"))
            return decide.failed(message, expired, delivery, Settle.ACK, state="REVOKED")
        return Accepted(message, task, decide.settle_for(task), label)

    async def run(self, accepted: Accepted, delivery: Delivery) -> list[Outcome]:
        """Run an accepted delivery under its limits; its outcomes, in order."""
        self.counters.processed += 1
        label = accepted.label
        loop = asyncio.get_running_loop()
        self.running[label] = loop.time()
        try:
            return await self._run(accepted, delivery, label)
        finally:
            self.running.pop(label, None)
            self.ended.append((label, loop.time()))

    def suspects(self, since: float) -> list[str]:
        """The tasks that ran at some moment since `since` (loop time): when the loop was
        blocked, the culprit is among them."""
        return [*self.running, *(label for label, at in self.ended if at >= since)]

    async def _run(self, accepted: Accepted, delivery: Delivery, label: str) -> list[Outcome]:
        message, task, settle = accepted.message, accepted.task, accepted.settle
        decide = self.decide
        if task.rate_per_s is not None:
            await self._limiter(task).wait()
        started = decide.started(task, message)
        early = [started] if started is not None else []
        began = time.perf_counter()
        try:
            value = await self._execute(task, message, self._request(message, delivery))
        except Retry as retry:
            return [*early, self._retried(message, retry, delivery, settle)]
        except Reject as reject:
            log.warning("Task %s rejected: %s", label, reject.reason)
            return [*early, decide.rejected(message, reject, delivery)]
        except WorkerLost as lost:
            log.error("Task %s lost its process (%s); returned to the queue", label, lost)
            return [*early, decide.lost(message, str(lost), delivery)]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if task.autoretry_for and isinstance(original(exc), task.autoretry_for):
                limit = task.effective_max_retries
                if limit is None or message.retries < limit:
                    again = Retry(exc, task.retry_delay_s(message.retries))
                    return [*early, self._retried(message, again, delivery, settle)]
            failure = failure_of(exc)
            self.counters.failed += 1
            elapsed = time.perf_counter() - began
            local = None if isinstance(exc, RemoteError) else exc  # a child's stack is text
            log.error("Task %s raised unexpected: %s (after %.3fs)%s", label, failure, elapsed,
                      _child_stack(exc), exc_info=local)  # fmt: skip
            return [*early, decide.failed(message, failure, delivery, settle)]
        elapsed = time.perf_counter() - began
        if self.value_repr is None:
            log.info("Task %s succeeded in %.6fs", label, elapsed)
        elif log.isEnabledFor(logging.INFO):  # the value's repr only when it is written
            log.info("Task %s succeeded in %.6fs: %s", label, elapsed, self.value_repr.repr(value))
        return [*early, decide.succeeded(task, message, value, delivery, settle)]

    def _retried(
        self, message: Message, retry: Retry, delivery: Delivery, settle: Settle
    ) -> Outcome:
        self.counters.retried += 1
        cause = str(failure_of(retry.exc)) if retry.exc is not None else "retry requested"
        log.info("Task %s[%s] retry: Retry in %gs: %s",
                 message.task, message.id, retry.countdown_s, cause)  # fmt: skip
        return self.decide.retried(message, retry, delivery, settle)

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


def _call(task: Task[Any, Any], message: Message) -> Any:
    return task(*message.args, **message.kwargs)


def _answer_value(answer: dict[str, Any]) -> Any:
    """A child's answer (process.py): its value, or its Retry / failure raised here."""
    if "ok" in answer:
        return answer["ok"]
    if "retry" in answer:
        cause = answer.get("exc")
        exc = RemoteError(msgspec.convert(cause, Failure)) if cause else None
        raise Retry(exc, float(answer["retry"]))
    raise RemoteError(msgspec.convert(answer["error"], Failure))


def _child_stack(exc: BaseException) -> str:
    """A child process's traceback, as text after the failure line: its frames are not here."""
    if not isinstance(exc, RemoteError) or not exc.failure.traceback:
        return ""
    return "\n" + exc.failure.traceback.rstrip()
