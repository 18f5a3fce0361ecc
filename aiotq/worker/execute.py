"""Running one delivery: decode and check it, run the task (inline, in a thread, or in a
child process) under its limits, and ask outcome.py what that means.

Nothing here settles a message or publishes: `accept()` and `run()` return outcomes, and
the worker and the result publisher act on them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from .. import django_fixup, trace
from ..backends.base import reply_routing
from ..exceptions import (
    DeliveryLimitExceeded,
    MessageRejected,
    NotRegistered,
    Reject,
    Replace,
    Retry,
    TaskRevoked,
)
from ..producer import SIGNATURE_HEADER
from ..protocol import Failure, Message, decode_message
from ..request import Request, current_request
from ..signals import task_postrun, task_prerun, task_received, task_revoked, task_success
from ..trace import ExceptionInfo
from ..tracing import Tracing
from .followups import FollowUps
from .limits import GlobalRateLimiter, RateLimiter, with_limits
from .logvalues import ValueRepr
from .outcome import Decide, Outcome, RemoteError, Settle, failure_of, original
from .presence import Counters
from .process import ProcessPool, pack_call, run_in_child, unpack_answer
from .taskevents import TaskEvents

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


@dataclass(slots=True)
class Running:
    """A task being run: what `inspect active` lists and what a terminate stops."""

    accepted: Accepted
    delivery: Delivery
    started_at_s: float  # wall clock
    began: float  # loop time (for the loop watch)
    runner: asyncio.Task[Any] | None


class Executor:
    def __init__(
        self,
        app: App,
        hostname: str,
        threads: int,
        processes: int,
        events: TaskEvents,
        sender: object = None,
    ) -> None:
        self.tasks = app.tasks
        self.replies = reply_routing(app.backend)
        self.settings = app.conf.settings
        self.hostname = hostname
        self.sender = sender  # task_received's sender (Celery's: the consumer; here the worker)
        self.accept_content = frozenset(self.settings.accept_content)
        self.signing = self.settings.task_signing_key  # None: no check at all
        publish = app.producer.publish_message
        self.decide = Decide(self.settings, FollowUps(app), publish, hostname)
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="aiotq-task")
        self.django = django_fixup.in_use()  # Celery's fixup: close stale DB connections
        self.processes = ProcessPool(
            processes,
            max_tasks_per_child=self.settings.worker_max_tasks_per_child,
            max_memory_per_child_kib=self.settings.worker_max_memory_per_child,
        )
        self._limiters: dict[str, RateLimiter | GlobalRateLimiter] = {}
        # rate_limit_scope "global" (the setting, or a task's own): starts spaced across
        # workers by the coordinator
        self.rate_coordinator = app.coordinator
        wants_global = self.settings.rate_limit_scope == "global" or any(
            t.rate_limit_scope == "global" for t in app.tasks.values()
        )
        if wants_global and self.rate_coordinator is None:
            log.warning("rate_limit_scope='global' needs a coordinator (rpc:// results have"
                        " none): rate limits apply per worker")  # fmt: skip
        self.counters = Counters()  # for this worker's presence record
        # what runs now (by task id) and what ended lately: `inspect active`, terminate, and
        # whom to name when the loop was blocked
        self.active: dict[str, Running] = {}
        self.ended: deque[tuple[str, float]] = deque(maxlen=64)
        # revoked ids (durable in the coordinator; kept here by the control listener) ->
        # terminate; a revoked task that arrives is not run
        self.revoked: dict[str, bool] = {}
        self.terminating: set[str] = set()
        # remote changes (`control rate_limit` / `time_limit`): task name -> new value
        self.rates: dict[str, float | None] = {}
        self.time_limits: dict[str, tuple[float | None, float | None]] = {}
        self.events = events
        self.tracing = app.producer.tracing
        # built once: the success line's value, bounded (None: values are not logged at all)
        self.value_repr = (
            ValueRepr(self.settings.worker_log_value_max)
            if self.settings.worker_log_values
            else None
        )

    def _unsigned(self, delivery: Delivery) -> Outcome | None:
        """task_signing_key is set: a missing or wrong signature is dead-lettered, not run."""
        assert self.signing is not None
        signature = delivery.headers.get(SIGNATURE_HEADER)
        if signature is None:
            reason = "unsigned message refused (task_signing_key is set)"
        elif self.signing.verify(delivery.body, signature):
            return None
        else:
            reason = "bad signature: refused"
        log.error("Rejected message %s: %s", delivery.headers.get("id", "?"), reason)
        return self.decide.undecodable(delivery, reason)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.processes.shutdown()

    # -- the per-delivery path -----------------------------------------------------------
    def accept(self, delivery: Delivery) -> Accepted | Outcome:
        """Decode and check: an Accepted to run, or the outcome of one that will not run."""
        decide = self.decide
        if self.signing is not None:
            refused = self._unsigned(delivery)
            if refused is not None:
                return refused
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
        events = self.events
        if events.enabled:
            events.received(message, delivery)
        if message.id in self.revoked:
            log.warning("Discarding revoked task: %s", label)
            if events.enabled:
                events.revoked(message, terminated=False, expired=False)
            revoked = Failure.of(TaskRevoked(f"task {label} was revoked"))
            outcome = decide.failed(message, revoked, delivery, Settle.ACK, state="REVOKED")
            return self._notify_revoked(outcome, task, message, delivery, expired=False)
        if message.expires_at_s is not None and time.time() > message.expires_at_s:
            log.warning("Task %s expired; not run", label)
            if events.enabled:
                events.revoked(message, terminated=False, expired=True)
            expired = Failure.of(TaskRevoked(f"task {label} expired"))
            outcome = decide.failed(message, expired, delivery, Settle.ACK, state="REVOKED")
            return self._notify_revoked(outcome, task, message, delivery, expired=True)
        return Accepted(message, task, decide.settle_for(task), label)

    def _notify_revoked(
        self,
        outcome: Outcome,
        task: Task[Any, Any],
        message: Message,
        delivery: Delivery,
        expired: bool,
    ) -> Outcome:
        """task_revoked for a task that will not run: sent by the worker before it acts."""
        if task_revoked.has_receivers():
            request = self._request(message, delivery)
            outcome.notify = partial(
                trace.revoked, task, request, terminated=False, expired=expired
            )
        return outcome

    async def run(self, accepted: Accepted, delivery: Delivery) -> list[Outcome]:
        """Run an accepted delivery under its limits; its outcomes, in order."""
        self.counters.processed += 1
        label = accepted.label
        task_id = accepted.message.id
        loop = asyncio.get_running_loop()
        runner = asyncio.current_task()
        self.active[task_id] = Running(accepted, delivery, time.time(), loop.time(), runner)
        request = self._request(accepted.message, delivery)
        token = current_request.set(request)  # self.request: in the task and its handlers
        try:
            if task_received.has_receivers():
                await task_received.asend(sender=self.sender, request=request)
            return await self._run(accepted, delivery, label, request)
        except asyncio.CancelledError:
            if task_id not in self.terminating or runner is None:
                raise
            runner.uncancel()  # our own cancellation (terminate): this task ends REVOKED
            outcome = self._terminated(accepted, delivery)
            await self._after_terminated(accepted, delivery)
            return [outcome]
        finally:
            current_request.reset(token)
            self.active.pop(task_id, None)
            self.terminating.discard(task_id)
            self.ended.append((label, loop.time()))

    def suspects(self, since: float) -> list[str]:
        """The tasks that ran at some moment since `since` (loop time): when the loop was
        blocked, the culprit is among them."""
        running = [r.accepted.label for r in self.active.values()]
        return [*running, *(label for label, at in self.ended if at >= since)]

    def terminate(self, task_id: str) -> bool:
        """Stop a running task (a revoke with terminate): an async task is cancelled at its
        current await; a process task's child is interrupted (killed if it does not yield);
        a thread cannot be interrupted, so its result is discarded when it ends. True when
        the task runs here."""
        running = self.active.get(task_id)
        if running is None or task_id in self.terminating:
            return running is not None
        self.terminating.add(task_id)
        task = running.accepted.task
        log.warning("Terminating task %s (revoked)", running.accepted.label)
        if task.is_async:
            if running.runner is not None:
                running.runner.cancel("revoked")
        elif task.executor == "process":
            self.processes.interrupt(task_id)
        return True

    def _terminated(self, accepted: Accepted, delivery: Delivery) -> Outcome:
        message = accepted.message
        if self.events.enabled:
            self.events.revoked(message, terminated=True, expired=False)
        log.warning("Task %s terminated (revoked)", accepted.label)
        revoked = Failure.of(TaskRevoked(f"task {accepted.label} was revoked and terminated"))
        # acked, not redelivered (also a task acked on receipt: nothing left to settle)
        settle = Settle.NONE if accepted.settle is Settle.NONE else Settle.ACK
        return self.decide.failed(message, revoked, delivery, settle, state="REVOKED")

    async def _run(
        self, accepted: Accepted, delivery: Delivery, label: str, request: Request
    ) -> list[Outcome]:
        message, task, settle = accepted.message, accepted.task, accepted.settle
        decide = self.decide
        events = self.events
        handlers = task.custom_handlers  # None: no handler overridden (seen at declaration)
        rate = self.rates.get(task.name, task.rate_per_s) if self.rates else task.rate_per_s
        if rate is not None:
            await self._limiter(task, rate).wait()
        started = decide.started(task, message)
        early = [started] if started is not None else []
        if events.enabled:
            events.started(message)
        if task_prerun.has_receivers():
            await trace.prerun(task, message.id, message.args, message.kwargs)
        began = time.perf_counter()
        with self.tracing.processing(message, delivery.queue) as span:
            try:
                if handlers is not None and handlers.before_start is not None:
                    await trace.invoke(
                        handlers.before_start, self._in_threads,
                        message.id, message.args, message.kwargs,
                    )  # fmt: skip
                value = await self._execute(task, message, request)
                if request.pending_update is not None:
                    await _updates_stored(request, label)
                if message.id in self.terminating:  # a thread or child that ended after all
                    await self._after_terminated(accepted, delivery)
                    return [*early, self._terminated(accepted, delivery)]
            except Exception as exc:
                if request.pending_update is not None:
                    await _updates_stored(request, label)
                if message.id in self.terminating:  # a child interrupted by the terminate
                    await self._after_terminated(accepted, delivery)
                    return [*early, self._terminated(accepted, delivery)]
                if span is not None:
                    if isinstance(exc, Retry):
                        Tracing.retried(span, str(exc), exc.countdown_s)
                    else:
                        Tracing.failed(span, exc)
                outcome, reason = self._failed(accepted, delivery, exc, began)
                await self._after_failure(task, request, outcome, reason)
                return [*early, outcome]
        elapsed = time.perf_counter() - began
        if self.value_repr is None:
            log.info("Task %s succeeded in %.6fs", label, elapsed)
        elif log.isEnabledFor(logging.INFO):  # the value's repr only when it is written
            log.info("Task %s succeeded in %.6fs: %s", label, elapsed, self.value_repr.repr(value))
        if events.enabled:
            events.succeeded(message, value, elapsed)
        outcome = decide.succeeded(task, message, value, delivery, settle)
        if handlers is not None or task_success.has_receivers() or task_postrun.has_receivers():
            if outcome.state == "SUCCESS":
                await trace.succeeded(task, handlers, self._in_threads,
                                      message.id, message.args, message.kwargs, value)  # fmt: skip
            else:  # the value could not be stored: the task failed after all
                await self._after_failure(task, request, outcome, None)
        return [*early, outcome]

    # -- handlers and signals after a run (aiotq/trace.py) --------------------------------
    async def _in_threads(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A sync handler runs in the thread pool, never on the loop (it may block)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.threads, contextvars.copy_context().run, fn, *args)

    async def _after_failure(
        self,
        task: Task[Any, Any],
        request: Request,
        outcome: Outcome,
        reason: BaseException | None,
    ) -> None:
        handlers, state = task.custom_handlers, outcome.state
        args, kwargs, task_id = request.args, request.kwargs, outcome.task_id or ""
        if state == "RETRY" and reason is not None:
            if isinstance(reason, Retry) and isinstance(reason.exc, RemoteError):
                reason.exc = reason.exc.failure.rebuild()  # a child's: its own type here
            await trace.retried(task, handlers, self._in_threads, request, reason,
                                ExceptionInfo(reason))  # fmt: skip
        elif state == "FAILURE" and outcome.failure is not None:
            exc = reason if reason is not None else outcome.failure.rebuild()
            if isinstance(exc, RemoteError):  # a child's: its own type where importable
                exc = exc.failure.rebuild()
            einfo = ExceptionInfo(exc, outcome.failure.traceback)
            await trace.failed(task, handlers, self._in_threads,
                               task_id, args, kwargs, exc, einfo)  # fmt: skip
        elif state == "REJECTED":
            await trace.postrun(task, task_id, args, kwargs, reason, "REJECTED")

    async def _after_terminated(self, accepted: Accepted, delivery: Delivery) -> None:
        message, task = accepted.message, accepted.task
        if task_revoked.has_receivers() or task_postrun.has_receivers():
            request = current_request.get() or self._request(message, delivery)
            await trace.revoked(task, request, terminated=True, expired=False,
                                signum=signal.SIGTERM)  # fmt: skip
            await trace.postrun(task, message.id, message.args, message.kwargs, None, "REVOKED")

    def _failed(
        self, accepted: Accepted, delivery: Delivery, exc: Exception, began: float
    ) -> tuple[Outcome, BaseException | None]:
        """The outcome of a task that raised: retry, reject, lost process or failure; and
        what the handlers see (the Retry, or the exception)."""
        message, task, settle = accepted.message, accepted.task, accepted.settle
        label = accepted.label
        decide = self.decide
        if isinstance(exc, Retry):
            return self._retried(message, exc, delivery, settle), exc
        if isinstance(exc, Replace):
            log.info("Task %s replaced by %r", label, exc.signature)
            return decide.replaced(message, exc.signature, delivery, settle), None
        if isinstance(exc, Reject):
            log.warning("Task %s rejected: %s", label, exc.reason)
            if self.events.enabled:
                self.events.rejected(message.id, message.task, exc.requeue, exc.reason)
            return decide.rejected(message, exc, delivery), exc
        if isinstance(exc, WorkerLost):
            log.error("Task %s lost its process (%s); returned to the queue", label, exc)
            return decide.lost(message, str(exc), delivery), None
        if task.autoretry_for and isinstance(original(exc), task.autoretry_for):
            limit = task.effective_max_retries
            if limit is None or message.retries < limit:
                again = Retry(exc, task.retry_delay_s(message.retries))
                return self._retried(message, again, delivery, settle), again
        failure = failure_of(exc)
        self.counters.failed += 1
        elapsed = time.perf_counter() - began
        local = None if isinstance(exc, RemoteError) else exc  # a child's stack is text
        log.error("Task %s raised unexpected: %s (after %.3fs)%s", label, failure, elapsed,
                  _child_stack(exc), exc_info=local)  # fmt: skip
        if self.events.enabled:
            self.events.failed(message, failure, elapsed)
        return decide.failed(message, failure, delivery, settle), exc

    def _retried(
        self, message: Message, retry: Retry, delivery: Delivery, settle: Settle
    ) -> Outcome:
        self.counters.retried += 1
        cause = str(failure_of(retry.exc)) if retry.exc is not None else "retry requested"
        log.info("Task %s[%s] retry: Retry in %gs: %s",
                 message.task, message.id, retry.countdown_s, cause)  # fmt: skip
        if self.events.enabled:
            self.events.retried(message, cause, retry.countdown_s)
        return self.decide.retried(message, retry, delivery, settle)

    def _limiter(self, task: Task[Any, Any], per_s: float) -> RateLimiter | GlobalRateLimiter:
        name = task.name
        limiter = self._limiters.get(name)
        if limiter is None or limiter.per_second != per_s:  # new, or `control rate_limit`
            scope = task.rate_limit_scope or self.settings.rate_limit_scope
            if isinstance(limiter, GlobalRateLimiter):
                limiter.retune(per_s)  # the starts queued in it take the new rate too
            elif scope == "global" and self.rate_coordinator is not None:
                limiter = GlobalRateLimiter(self.rate_coordinator, name, per_s)
                self._limiters[name] = limiter
            else:
                limiter = self._limiters[name] = RateLimiter(per_s)
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
        soft_override, hard_override = self.time_limits.get(task.name, (None, None))
        hard = (
            message.time_limit_s
            or hard_override
            or task.time_limit
            or self.settings.task_time_limit_s
        )
        soft = (
            message.soft_time_limit_s
            or soft_override
            or task.soft_time_limit
            or self.settings.task_soft_time_limit_s
        )
        if task.is_async:
            return await with_limits(task(*message.args, **message.kwargs), hard, soft)
        loop = asyncio.get_running_loop()
        if task.executor == "thread":
            call = contextvars.copy_context().run
            run = _call_with_django if self.django else _call
            future = loop.run_in_executor(self.threads, call, run, task, message)
            return await with_limits(future, hard)
        from concurrent.futures.process import BrokenProcessPool  # with the pool: 4 MB

        payload = pack_call(message.args, message.kwargs, request)
        module, qualname = task.fn.__module__, task.fn.__qualname__
        try:
            future = loop.run_in_executor(
                self.processes.executor, run_in_child, module, qualname, payload,
                self.processes.marks,
            )  # fmt: skip
            answer = unpack_answer(await with_limits(future, hard))
        except BrokenProcessPool as exc:
            self.processes.kill()
            raise WorkerLost(f"process pool broke: {exc}") from None
        except BaseException:
            if message.id not in self.terminating:  # else: only its own child was ended
                self.processes.kill()  # the hard limit (or a cold stop): end the process
            raise
        return _answer_value(answer)


async def _updates_stored(request: Request, label: str) -> None:
    """The task's last update_state() that was not awaited, stored before its outcome is
    (else a late PROGRESS could land after SUCCESS). Its error is logged, not the task's."""
    try:
        await request.pending_update
    except Exception as exc:
        log.warning("Task %s: update_state() failed: %r", label, exc)
    request.pending_update = None


def _call(task: Task[Any, Any], message: Message) -> Any:
    return task(*message.args, **message.kwargs)


def _call_with_django(task: Task[Any, Any], message: Message) -> Any:
    """Celery's Django fixup around a sync task: stale connections of this thread closed
    before and after it."""
    django_fixup.close_old_connections()
    try:
        return task(*message.args, **message.kwargs)
    finally:
        django_fixup.close_old_connections()


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
