"""tests.apps' tasks in a worker whose spans go to a file (TRACE_FILE), one JSON per line:
the OpenTelemetry SDK set up as a user would, in the module that defines the app."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from .apps import build

if os.environ.get("TRACE_FILE"):
    provider = TracerProvider()
    out = open(os.environ["TRACE_FILE"], "a", buffering=1)  # noqa: SIM115 - the process's life
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

tq = build()
