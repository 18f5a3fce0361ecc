"""The worker's task events: Celery's names and fields, made once and handed to each sink.

Sinks: the bus (aiotq/events.py; only while `publish`: `-E`, `worker_send_task_events`, or
`app.control.enable_events()` at runtime), the task history recorder, the metrics. Every
call site checks `enabled` (any sink) first, so a worker with none pays one attribute read
per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..events import Dispatcher, capped, message_fields

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..protocol import Failure, Message


Sink = Callable[[dict[str, Any]], None]


class TaskEvents:
    def __init__(
        self,
        dispatcher: Dispatcher,
        publish: bool,
        value_max: int,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.dispatcher = dispatcher
        self.value_max = value_max
        self.sinks = list(sinks)
        self.publish = publish
        self.enabled = publish or bool(self.sinks)

    def set_publish(self, on: bool) -> None:
        """Task events on the bus on or off (enable_events / disable_events)."""
        self.publish = on
        self.enabled = on or bool(self.sinks)

    def _emit(self, type_: str, fields: dict[str, Any]) -> None:
        event = self.dispatcher.stamp(type_, fields)
        if self.publish:
            self.dispatcher.put(event)
        for sink in self.sinks:
            sink(event)

    def received(self, message: Message, delivery: Delivery) -> None:
        fields = message_fields(message, self.value_max)
        fields["queue"] = delivery.queue
        fields["routing_key"] = message.routing_key or delivery.queue
        fields["sent_at"] = message.sent_at_s
        self._emit("task-received", fields)

    def started(self, message: Message) -> None:
        self._emit("task-started", {"uuid": message.id, "name": message.task})

    def succeeded(self, message: Message, value: Any, runtime_s: float) -> None:
        self._emit("task-succeeded", {
            "uuid": message.id, "name": message.task,
            "result": capped(value, self.value_max), "runtime": runtime_s,
        })  # fmt: skip

    def failed(self, message: Message, failure: Failure, runtime_s: float | None) -> None:
        self._emit("task-failed", {
            "uuid": message.id, "name": message.task, "exception": str(failure),
            "traceback": failure.traceback, "runtime": runtime_s,
        })  # fmt: skip

    def retried(self, message: Message, cause: str, countdown_s: float) -> None:
        self._emit("task-retried", {
            "uuid": message.id, "name": message.task, "exception": cause,
            "retries": message.retries + 1, "eta": time.time() + countdown_s,
        })  # fmt: skip

    def rejected(self, task_id: str, name: str | None, requeue: bool, reason: str) -> None:
        self._emit("task-rejected", {
            "uuid": task_id, "name": name, "requeue": requeue, "reason": reason,
        })  # fmt: skip

    def revoked(self, message: Message, *, terminated: bool, expired: bool) -> None:
        self._emit("task-revoked", {
            "uuid": message.id, "name": message.task, "terminated": terminated,
            "signum": "SIGTERM" if terminated else None, "expired": expired,
        })  # fmt: skip
