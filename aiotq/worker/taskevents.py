"""The worker's task events (aiotq/events.py carries them): Celery's names and fields.

Task events are sent only while `enabled` (`-E`, `worker_send_task_events`, or
`app.control.enable_events()` at runtime); every call site checks `enabled` first, so a
worker without -E pays one attribute read per step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..events import Dispatcher, capped

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..protocol import Failure, Message


class TaskEvents:
    def __init__(self, dispatcher: Dispatcher, enabled: bool, value_max: int) -> None:
        self.dispatcher = dispatcher
        self.enabled = enabled
        self.value_max = value_max

    def received(self, message: Message, delivery: Delivery) -> None:
        limit = self.value_max
        self.dispatcher.send("task-received", {
            "uuid": message.id, "name": message.task,
            "args": capped(message.args, limit), "kwargs": capped(message.kwargs, limit),
            "retries": message.retries, "eta": message.eta_at_s, "expires": message.expires_at_s,
            "root_id": message.root_id, "parent_id": message.parent_id,
            "queue": delivery.queue, "routing_key": message.routing_key or delivery.queue,
        })  # fmt: skip

    def started(self, message: Message) -> None:
        self.dispatcher.send("task-started", {"uuid": message.id, "name": message.task})

    def succeeded(self, message: Message, value: Any, runtime_s: float) -> None:
        self.dispatcher.send("task-succeeded", {
            "uuid": message.id, "name": message.task,
            "result": capped(value, self.value_max), "runtime": runtime_s,
        })  # fmt: skip

    def failed(self, message: Message, failure: Failure, runtime_s: float | None) -> None:
        self.dispatcher.send("task-failed", {
            "uuid": message.id, "name": message.task, "exception": str(failure),
            "traceback": failure.traceback, "runtime": runtime_s,
        })  # fmt: skip

    def retried(self, message: Message, cause: str, countdown_s: float) -> None:
        self.dispatcher.send("task-retried", {
            "uuid": message.id, "name": message.task, "exception": cause,
            "retries": message.retries + 1, "eta": time.time() + countdown_s,
        })  # fmt: skip

    def rejected(self, task_id: str, name: str | None, requeue: bool, reason: str) -> None:
        self.dispatcher.send("task-rejected", {
            "uuid": task_id, "name": name, "requeue": requeue, "reason": reason,
        })  # fmt: skip

    def revoked(self, message: Message, *, terminated: bool, expired: bool) -> None:
        self.dispatcher.send("task-revoked", {
            "uuid": message.id, "name": message.task, "terminated": terminated,
            "signum": "SIGTERM" if terminated else None, "expired": expired,
        })  # fmt: skip
