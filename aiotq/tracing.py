"""OpenTelemetry traces (the `aiotq[otel]` extra): a PRODUCER span per send and a CONSUMER
span per run, named and attributed by the messaging semantic conventions, the trace context
carried in the message's headers (W3C `traceparent`), so a web request -> `send()` ->
worker -> the chain's next task is one trace.

    publish {queue}    SpanKind.PRODUCER, around encoding and publishing
    process {queue}    SpanKind.CONSUMER, around the task body; a failure is recorded on it
                       (exception event, status ERROR), a retry as an event

Off when opentelemetry is not installed, when no SDK tracer provider is set up when the app
first sends (or the worker starts), or with `tracing = False`. Configure the SDK (a
TracerProvider and an exporter) in the process that sends and in the worker, e.g. in the
module that defines the app (docs/monitoring.md).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any

from ._version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - the extra is not installed
    trace = None  # type: ignore[assignment]

NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()  # reused: tracing is off
KEPT_CONTEXTS = 10_000  # runs whose span context the follow-ups (chain's next step) can use
SYSTEMS = {"redis": "redis", "rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq"}


def available() -> bool:
    return trace is not None


def _configured() -> bool:
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class Tracing:
    """One per producer (and so per worker): `publishing()`, `processing()`, `resumed()`."""

    def __init__(self, enabled: bool, broker_url: str) -> None:
        # no SDK set up (yet): OpenTelemetry's spans would be no-ops; skip them altogether
        self.enabled = enabled and trace is not None and _configured()
        self.system = SYSTEMS.get(broker_url.split(":", 1)[0], "aiotq")
        self._tracer: Any = trace.get_tracer("aiotq", __version__) if self.enabled else None
        self._contexts: OrderedDict[str, Any] = OrderedDict()

    def _attributes(self, message: Any, queue: str | None, operation: str) -> dict[str, Any]:
        return {
            "messaging.system": self.system,
            "messaging.operation.name": operation,
            "messaging.operation.type": "send" if operation == "publish" else "process",
            "messaging.destination.name": queue or "",
            "messaging.message.id": message.id,
            "messaging.message.conversation_id": message.root_id or message.id,
            "aiotq.task.name": message.task,
            "aiotq.task.retries": message.retries,
        }

    def publishing(
        self, message: Any, headers: MutableMapping[str, str]
    ) -> contextlib.AbstractContextManager[None]:
        """Around a publish: the span is current while `headers` get its context. Off, it
        is one shared no-op (this is every send's path)."""
        return self._publishing(message, headers) if self.enabled else NO_SPAN

    @contextlib.contextmanager
    def _publishing(self, message: Any, headers: MutableMapping[str, str]) -> Iterator[None]:
        name = f"publish {message.queue}"
        attributes = self._attributes(message, message.queue, "publish")
        with self._tracer.start_as_current_span(name, kind=SpanKind.PRODUCER,
                                                attributes=attributes):  # fmt: skip
            propagate.inject(headers)
            yield

    def processing(self, message: Any, queue: str) -> contextlib.AbstractContextManager[Any]:
        """Around a run: a CONSUMER span whose parent is the sender's span (off: the shared
        no-op, which yields None)."""
        return self._processing(message, queue) if self.enabled else NO_SPAN

    @contextlib.contextmanager
    def _processing(self, message: Any, queue: str) -> Iterator[Any]:
        parent = propagate.extract(message.headers or {})
        attributes = self._attributes(message, queue, "process")
        with self._tracer.start_as_current_span(
            f"process {queue}", context=parent, kind=SpanKind.CONSUMER,
            attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:  # fmt: skip
            self._contexts[message.id] = otel_context.get_current()
            if len(self._contexts) > KEPT_CONTEXTS:
                self._contexts.popitem(last=False)
            yield span

    @contextlib.contextmanager
    def resumed(self, message: Any) -> Iterator[None]:
        """The follow-ups of a run (callbacks, a chain's next step), sent after its span
        ended, continue its trace."""
        if not self.enabled:
            yield
            return
        context = self._contexts.pop(message.id, None)
        if context is None:
            context = propagate.extract(message.headers or {})
        token = otel_context.attach(context)
        try:
            yield
        finally:
            otel_context.detach(token)

    @staticmethod
    def failed(span: Any, exc: BaseException) -> None:
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    @staticmethod
    def retried(span: Any, reason: str, countdown_s: float) -> None:
        if span is not None:
            span.add_event("retry", {"aiotq.retry.reason": reason, "aiotq.retry.countdown_s":
                                     countdown_s})  # fmt: skip
