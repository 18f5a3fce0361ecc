"""The worker's task steps, told to each sink: the event bus, the task history, the metrics.

The bus (aiotq/events.py) gets Celery's event dicts, made only while `publish` is on (`-E`,
`worker_send_task_events`, or `app.control.enable_events()` at runtime). The history
recorder and the metrics are `RunSink`s, told in batches: a step only notes its run (an
append), and `fold()`, on the loop a few times a second, builds the finished runs'
`TaskRecord`s and hands every sink the batch. Per step that is a few hundred nanoseconds;
the records are built in one tight loop, where Python runs several times faster than in
steps spread among a noop task's other work. Every call site checks `enabled` (any sink
or the bus) first, so a worker with none pays one attribute read per step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..events import Dispatcher, capped, message_fields
from ..history import Run, RunSink, TaskRecord, conclude

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..protocol import Failure, Message

OPEN_CAP = 20_000  # runs held between receipt and outcome, at most (prefetch bounds them)
FOLD_INTERVAL_S = 0.5  # the sinks are told this often: metrics and history lag by as much


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
        self._open: dict[str, Run] = {}
        self._received: list[Run] = []
        self._started: list[Run] = []
        self._finished: list[Run] = []

    def set_publish(self, on: bool) -> None:
        """Task events on the bus on or off (enable_events / disable_events)."""
        self.publish = on
        self.enabled = on or bool(self.sinks)

    def _post(self, type_: str, fields: dict[str, Any]) -> None:
        self.dispatcher.put(self.dispatcher.stamp(type_, fields))

    # -- the sinks' batches ---------------------------------------------------------------
    async def run(self) -> None:
        """Fold every FOLD_INTERVAL_S until cancelled (the worker folds once more at its
        stop, before the history writes what is left)."""
        while True:
            await asyncio.sleep(FOLD_INTERVAL_S)
            self.fold()

    def fold(self) -> None:
        """Build the records of the runs that ended since the last fold and tell the sinks."""
        received, started, finished = self._received, self._started, self._finished
        if not (received or started or finished):
            return
        self._received, self._started, self._finished = [], [], []
        records = [self._record(run) for run in finished]
        for sink in self.sinks:
            sink.fold(received, started, records)

    def _record(self, run: Run) -> TaskRecord:
        limit = self.value_max
        if run.received_at_s is None:  # not received by this worker
            record = TaskRecord(id=run.id, state=run.state, name=run.name, worker=self.hostname,
                                root_id=run.id)  # fmt: skip
        else:
            record = TaskRecord(
                id=run.id, state=run.state, name=run.name, args=capped(run.args, limit),
                kwargs=capped(run.kwargs, limit), worker=self.hostname, queue=run.queue,
                retries=run.retries, eta=run.eta, sent_at_s=run.sent_at_s,
                received_at_s=run.received_at_s, started_at_s=run.started_at_s,
                parent_id=run.parent_id, root_id=run.root_id or run.id,
            )  # fmt: skip
        state = run.state
        return conclude(record, state, run.ended_at_s, runtime_s=run.runtime_s,
                        result=capped(run.result, limit) if state == "SUCCESS" else None,
                        exception=run.exception, traceback=run.traceback,
                        eta=run.retry_eta)  # fmt: skip

    def _finish(
        self, task_id: str, name: str | None, state: str, result: Any = None,
        exception: str | None = None, traceback: str | None = None,
        runtime_s: float | None = None, eta: float | None = None,
    ) -> None:  # fmt: skip
        run = self._open.pop(task_id, None)
        if run is None:
            run = Run(name, None, None)
        run.id, run.state, run.ended_at_s = task_id, state, time.time()
        run.result, run.exception, run.traceback = result, exception, traceback
        run.runtime_s, run.retry_eta = runtime_s, eta
        self._finished.append(run)

    # -- the steps ------------------------------------------------------------------------
    def received(self, message: Message, delivery: Delivery) -> None:
        if self.sinks:
            run = Run(message.task, delivery.queue, time.time(), message.args, message.kwargs,
                      message.retries, message.eta_at_s, message.sent_at_s, message.parent_id,
                      message.root_id)  # fmt: skip
            held = self._open
            held[message.id] = run
            if len(held) > OPEN_CAP:
                del held[next(iter(held))]
            self._received.append(run)
        if self.publish:
            fields = message_fields(message, self.value_max)
            fields["queue"] = delivery.queue
            fields["routing_key"] = message.routing_key or delivery.queue
            fields["sent_at"] = message.sent_at_s
            self._post("task-received", fields)

    def started(self, message: Message) -> None:
        if self.sinks:
            run = self._open.get(message.id)
            if run is not None:
                run.started_at_s = time.time()
                self._started.append(run)
        if self.publish:
            self._post("task-started", {"uuid": message.id, "name": message.task})

    def succeeded(self, message: Message, value: Any, runtime_s: float) -> None:
        if self.sinks:  # capped when folded
            self._finish(message.id, message.task, "SUCCESS", result=value, runtime_s=runtime_s)
        if self.publish:
            self._post("task-succeeded", {
                "uuid": message.id, "name": message.task,
                "result": capped(value, self.value_max), "runtime": runtime_s,
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
