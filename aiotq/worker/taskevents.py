"""The worker's task steps, told to each sink: the event bus, the task history, the metrics.

The bus (aiotq/events.py) gets Celery's event dicts, made only while `publish` is on (`-E`,
`worker_send_task_events`, or `app.control.enable_events()` at runtime). The history
recorder and the metrics are `RunSink`s: they share one `TaskRecord` per run, made at
receipt and completed at the outcome, so a worker that only keeps history or metrics builds
no event dicts at all. Every call site checks `enabled` (any sink) first, so a worker with
none pays one attribute read per step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..events import Dispatcher, capped, message_fields
from ..history import TaskRecord, conclude

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..protocol import Failure, Message

OPEN_CAP = 20_000  # runs held between receipt and outcome, at most (prefetch bounds them)


class RunSink(Protocol):
    """What the history and the metrics are told of each run (one record, shared)."""

    def received(self, record: TaskRecord) -> None: ...

    def started(self, record: TaskRecord) -> None: ...

    def finished(self, record: TaskRecord) -> None:
        """The outcome is in the record (state, times, result or exception); it is not
        changed after this."""
        ...


class TaskEvents:
    def __init__(
        self,
        dispatcher: Dispatcher,
        publish: bool,
        value_max: int,
        sinks: Sequence[RunSink] = (),
    ) -> None:
        self.dispatcher = dispatcher
        self.hostname = dispatcher.hostname
        self.value_max = value_max
        self.sinks = list(sinks)
        self.publish = publish
        self.enabled = publish or bool(self.sinks)
        self._open: dict[str, TaskRecord] = {}

    def set_publish(self, on: bool) -> None:
        """Task events on the bus on or off (enable_events / disable_events)."""
        self.publish = on
        self.enabled = on or bool(self.sinks)

    def _post(self, type_: str, fields: dict[str, Any]) -> None:
        self.dispatcher.put(self.dispatcher.stamp(type_, fields))

    def _finish(self, task_id: str, name: str | None, state: str, **outcome: Any) -> None:
        record = self._open.pop(task_id, None)
        if record is None:  # not received by this worker (revoked or refused first)
            record = TaskRecord(id=task_id, state=state, name=name, worker=self.hostname,
                                root_id=task_id)  # fmt: skip
        conclude(record, state, time.time(), **outcome)
        for sink in self.sinks:
            sink.finished(record)

    def received(self, message: Message, delivery: Delivery) -> None:
        if self.sinks:
            now = time.time()
            record = TaskRecord(
                id=message.id, state="RECEIVED", name=message.task,
                args=capped(message.args, self.value_max),
                kwargs=capped(message.kwargs, self.value_max), worker=self.hostname,
                queue=delivery.queue, retries=message.retries, eta=message.eta_at_s,
                sent_at_s=message.sent_at_s, received_at_s=now, parent_id=message.parent_id,
                root_id=message.root_id or message.id, updated_at_s=now,
            )  # fmt: skip
            held = self._open
            held[message.id] = record
            if len(held) > OPEN_CAP:
                del held[next(iter(held))]
            for sink in self.sinks:
                sink.received(record)
        if self.publish:
            fields = message_fields(message, self.value_max)
            fields["queue"] = delivery.queue
            fields["routing_key"] = message.routing_key or delivery.queue
            fields["sent_at"] = message.sent_at_s
            self._post("task-received", fields)

    def started(self, message: Message) -> None:
        if self.sinks:
            record = self._open.get(message.id)
            if record is not None:
                record.state = "STARTED"
                record.started_at_s = record.updated_at_s = time.time()
                for sink in self.sinks:
                    sink.started(record)
        if self.publish:
            self._post("task-started", {"uuid": message.id, "name": message.task})

    def succeeded(self, message: Message, value: Any, runtime_s: float) -> None:
        result = capped(value, self.value_max)
        if self.sinks:
            self._finish(message.id, message.task, "SUCCESS", result=result, runtime_s=runtime_s)
        if self.publish:
            self._post("task-succeeded", {
                "uuid": message.id, "name": message.task, "result": result, "runtime": runtime_s,
            })  # fmt: skip

    def failed(self, message: Message, failure: Failure, runtime_s: float | None) -> None:
        exception = str(failure)
        if self.sinks:
            self._finish(message.id, message.task, "FAILURE", exception=exception,
                         traceback=failure.traceback, runtime_s=runtime_s)  # fmt: skip
        if self.publish:
            self._post("task-failed", {
                "uuid": message.id, "name": message.task, "exception": exception,
                "traceback": failure.traceback, "runtime": runtime_s,
            })  # fmt: skip

    def retried(self, message: Message, cause: str, countdown_s: float) -> None:
        eta = time.time() + countdown_s
        if self.sinks:
            self._finish(message.id, message.task, "RETRY", exception=cause, eta=eta)
        if self.publish:
            self._post("task-retried", {
                "uuid": message.id, "name": message.task, "exception": cause,
                "retries": message.retries + 1, "eta": eta,
            })  # fmt: skip

    def rejected(self, task_id: str, name: str | None, requeue: bool, reason: str) -> None:
        if self.sinks:
            self._finish(task_id, name, "REJECTED", exception=reason)
        if self.publish:
            self._post("task-rejected", {
                "uuid": task_id, "name": name, "requeue": requeue, "reason": reason,
            })  # fmt: skip

    def revoked(self, message: Message, *, terminated: bool, expired: bool) -> None:
        if self.sinks:
            self._finish(message.id, message.task, "REVOKED")
        if self.publish:
            self._post("task-revoked", {
                "uuid": message.id, "name": message.task, "terminated": terminated,
                "signum": "SIGTERM" if terminated else None, "expired": expired,
            })  # fmt: skip
