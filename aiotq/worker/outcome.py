"""Deciding what a run means: which record to store, what to do after it, how to settle.

Data only: nothing here talks to a broker or a backend. The executor (execute.py) runs a
task and asks this module for the outcome; the result publisher acts on outcomes in one
order (store the record, run the follow-ups, settle the message). A retry is an outcome
too: its RETRY record, then the new message published as a follow-up, then the ack.

A unique job (aiotq/unique.py) gives its key up as the first follow-up of a final outcome
(success, final failure, revoked or expired, dead-lettered) and renews it on a retry; a
requeued message (rejected with requeue, a lost process) keeps it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from ..exceptions import BackendError, Reject, Retry
from ..protocol import CODECS, Failure, Message, ResultRecord, State
from ..settings import Settings
from ..unique import HEADER as UNIQUE_HEADER
from .followups import FollowUps, children_of, has_followups

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..task import Task


class Settle(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"
    NONE = "none"  # acknowledged on receipt (acks_late=False): nothing left to settle


@dataclass(slots=True)
class Outcome:
    task_id: str | None
    data: bytes | None  # encoded ResultRecord to store, if any
    delivery: Delivery | None
    settle: Settle
    reason: str | None = None
    after: Callable[[], Awaitable[None]] | None = None  # follow-ups, once the record is stored
    # a follow-up that fails for good dead-letters the message (a lost retry loses the task)
    after_must_succeed: bool = False
    # what the record says, for the handlers and signals that follow a run: SUCCESS,
    # FAILURE, RETRY, REVOKED, REJECTED, or None (nothing stored: a lost process)
    state: str | None = None
    failure: Failure | None = None  # with FAILURE / REVOKED (and a retry's cause)
    # a signal to send before the outcome is acted on (task_revoked for one never run)
    notify: Callable[[], Awaitable[Any]] | None = None


class RemoteError(Exception):
    """A failure reported by a child process of the process executor, carried as data."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def failure_of(exc: BaseException) -> Failure:
    return exc.failure if isinstance(exc, RemoteError) else Failure.of(exc)


def original(exc: BaseException) -> BaseException:
    """The exception a child process raised, rebuilt where its type is importable here (so
    `autoretry_for` matches it as it would a local one)."""
    if not isinstance(exc, RemoteError):
        return exc
    rebuilt = exc.failure.rebuild()
    return exc if type(rebuilt).__name__ == "TaskError" else rebuilt


class Decide:
    """The outcomes of one worker: settings and the result codec are read once."""

    def __init__(
        self,
        settings: Settings,
        followups: FollowUps,
        publish: Callable[[Message], Awaitable[None]],
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.codec = CODECS[settings.result_serializer]
        self.followups = followups
        self._publish = publish
        self.hostname = hostname
        self.extended = settings.result_extended  # read once: off costs one test per record

    def settle_for(self, task: Task[Any, Any]) -> Settle:
        """ACK after the record is stored (acks late: the safe default, a crash means
        redelivery), or NONE: the worker acks on receipt (a crash loses the task)."""
        late = task.acks_late if task.acks_late is not None else self.settings.task_acks_late
        return Settle.ACK if late else Settle.NONE

    def ignored(self, task: Task[Any, Any], message: Message) -> bool:
        if message.chord is not None:
            return False  # the chord's body needs every member's result
        if message.ignore_result:
            return True
        if task.ignore_result is not None:
            return task.ignore_result
        return self.settings.task_ignore_result

    # -- before running ------------------------------------------------------------------------
    def undecodable(self, delivery: Delivery, reason: str) -> Outcome:
        return Outcome(None, None, delivery, Settle.DEAD_LETTER, reason)

    def refused(self, message: Message, exc: BaseException, delivery: Delivery) -> Outcome:
        """Never run (unknown task, past its delivery limit): dead-lettered, and the failure
        stored so a waiting get() raises it at once instead of timing out; its error
        follow-ups run too (a chain stops, a chord counts it), so nothing waits for ever."""
        failure = Failure.of(exc)
        record = self._failure_record(message, failure, "FAILURE", delivery)
        after = None
        if has_followups(message):
            after = partial(self.followups.after_failure, message, record)
        outcome = Outcome(message.id, self._encode(record), delivery, Settle.DEAD_LETTER,
                          str(exc), after=after, state="FAILURE", failure=failure)  # fmt: skip
        return self._final(message, outcome)

    def started(self, task: Task[Any, Any], message: Message) -> Outcome | None:
        if not self.settings.task_track_started or self.ignored(task, message):
            return None
        record = ResultRecord(task_id=message.id, state="STARTED", task=message.task)
        if self.extended:
            record = self._extend(record, message, None)
        return Outcome(message.id, self._encode(record), None, Settle.NONE)

    # -- after running -------------------------------------------------------------------------
    def succeeded(
        self, task: Task[Any, Any], message: Message, value: Any, delivery: Delivery, settle: Settle
    ) -> Outcome:
        """Store the value (unless ignored), then the follow-ups: links, chain, chord."""
        data = None
        if not self.ignored(task, message):
            record = ResultRecord(
                task_id=message.id, state="SUCCESS", result=value, date_done_s=time.time(),
                retries=message.retries, task=message.task, parent_id=message.parent_id,
                children=children_of(message),
            )  # fmt: skip
            if self.extended:
                record = self._extend(record, message, delivery)
            try:
                data = self.codec.encode(record)
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
                error = TypeError(
                    f"result of {message.task} ({type(value).__name__}) cannot be stored as "
                    f"{self.codec.name}: {exc}"
                )
                return self.failed(message, Failure.of(error), delivery, settle)
            limit = self.settings.result_max_bytes
            if len(data) > limit:  # past a backend's limit a store never passes: say so now
                too_big = BackendError(
                    f"the result of {message.task} is {len(data):,} bytes encoded, more than"
                    f" result_max_bytes ({limit:,}); store it elsewhere and return a reference"
                )
                return self.failed(message, Failure.of(too_big), delivery, settle)
        after = None
        if has_followups(message):
            after = partial(self.followups.after_success, message, value)
        outcome = Outcome(message.id, data, delivery, settle, after=after, state="SUCCESS")
        return self._final(message, outcome)

    def failed(
        self,
        message: Message,
        failure: Failure,
        delivery: Delivery | None,
        settle: Settle,
        state: State = "FAILURE",
    ) -> Outcome:
        """Store the failure (or the expiry), then its error follow-ups (link_error, the
        rest of a chain, a chord's count)."""
        record = self._failure_record(message, failure, state, delivery)
        after = None
        if has_followups(message):
            after = partial(self.followups.after_failure, message, record)
        outcome = Outcome(message.id, self._encode(record), delivery, settle, after=after,
                          state=state, failure=failure)  # fmt: skip
        return self._final(message, outcome)

    def retried(
        self, message: Message, retry: Retry, delivery: Delivery, settle: Settle
    ) -> Outcome:
        """The task again as a delayed message (the worker does not sleep on it), published
        after the RETRY record is stored and before this message is acknowledged."""
        again = msgspec.structs.replace(
            message,
            retries=message.retries + 1,
            eta_at_s=time.time() + retry.countdown_s,
            args=list(retry.new_args) if retry.new_args is not None else message.args,
            kwargs=retry.new_kwargs if retry.new_kwargs is not None else message.kwargs,
        )
        record = ResultRecord(
            task_id=message.id, state="RETRY", retries=message.retries + 1, task=message.task,
            failure=failure_of(retry.exc) if retry.exc is not None else None,
        )  # fmt: skip
        if self.extended:
            record = self._extend(record, message, delivery)
        after: Callable[[], Awaitable[None]] = partial(self._publish, again)
        if UNIQUE_HEADER in message.headers:  # still queued: its key held past the countdown
            after = partial(self.followups.keep_unique, message, retry.countdown_s, after)
        return Outcome(
            message.id, self._encode(record), delivery, settle,
            after=after, after_must_succeed=True, state="RETRY", failure=record.failure,
        )  # fmt: skip

    def replaced(
        self, message: Message, replacement: Any, delivery: Delivery, settle: Settle
    ) -> Outcome:
        """`raise self.replace(sig)`: nothing stored (the replacement's last task stores this
        id); the replacement is sent before this message is acknowledged."""
        after = partial(self.followups.replace, message, replacement)
        return Outcome(message.id, None, delivery, settle, after=after, after_must_succeed=True)

    def rejected(self, message: Message, reject: Reject, delivery: Delivery) -> Outcome:
        if reject.requeue:  # back in its queue: still the job that holds its key
            return Outcome(message.id, None, delivery, Settle.REQUEUE, reject.reason,
                           state="REJECTED")  # fmt: skip
        outcome = Outcome(message.id, None, delivery, Settle.DEAD_LETTER, reject.reason,
                          state="REJECTED")  # fmt: skip
        return self._final(message, outcome)

    def lost(self, message: Message, reason: str, delivery: Delivery) -> Outcome:
        """Its process died (or was ended for another task's time limit): run it again."""
        return Outcome(message.id, None, delivery, Settle.REQUEUE, reason)

    def _final(self, message: Message, outcome: Outcome) -> Outcome:
        """A unique job's last outcome gives its key up, before the other follow-ups: the
        publisher runs them all again after an error that may pass, and a release is
        idempotent where a link sent twice is not."""
        if UNIQUE_HEADER in message.headers:
            outcome.after = partial(self.followups.release_unique, message, outcome.after)
        return outcome

    def _failure_record(
        self, message: Message, failure: Failure, state: State, delivery: Delivery | None
    ) -> ResultRecord:
        record = ResultRecord(
            task_id=message.id, state=state, failure=failure, date_done_s=time.time(),
            retries=message.retries, task=message.task, parent_id=message.parent_id,
        )  # fmt: skip
        return self._extend(record, message, delivery) if self.extended else record

    def _extend(
        self, record: ResultRecord, message: Message, delivery: Delivery | None
    ) -> ResultRecord:
        """result_extended (Celery's): the call and where it ran, stored with the result."""
        return msgspec.structs.replace(
            record, args=message.args, kwargs=message.kwargs, worker=self.hostname,
            queue=delivery.queue if delivery is not None else message.queue,
        )  # fmt: skip

    def _encode(self, record: ResultRecord) -> bytes:
        return self.codec.encode(record)
