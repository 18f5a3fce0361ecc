"""OpenTelemetry: a request's span -> send (PRODUCER) -> a real worker process (CONSUMER) ->
the chain's next step, all one trace; failures recorded on the span."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aiotq import chain

from .apps import build
from .workerproc import WorkerProcess

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


def worker_spans(path: Path, count: int, within_s: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        spans = [json.loads(line) for line in lines if line.strip()]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


async def test_a_request_a_task_and_its_chain_are_one_trace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    trace_file = tmp_path / "worker-spans.jsonl"
    worker = WorkerProcess(url, "-n", "traced@here", env={"TRACE_FILE": str(trace_file)},
                           app="tests.traced:tq")  # fmt: skip
    worker.ready()
    app = build(url, url)
    add, fail = app.tasks["e2e.add"], app.tasks["e2e.fail"]
    try:
        EXPORTER.clear()
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("GET /checkout") as request_span:
            last = await chain(add.s(1, 1), add.s(10)).send()
            failing = await fail.send("boom")
        assert await last.get(timeout=10) == 12
        with pytest.raises(ValueError):
            await failing.get(timeout=10)
        spans = worker_spans(trace_file, 4)  # two runs, the chain's publish, the failure
    finally:
        worker.stop()
        await app.aclose()
    trace_id = request_span.get_span_context().trace_id
    published = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert {s.name for s in published} == {"publish default"}
    first_publish = next(s for s in published if s.attributes["aiotq.task.name"] == "e2e.add")
    assert first_publish.context.trace_id == trace_id
    assert first_publish.parent.span_id == request_span.get_span_context().span_id
    assert first_publish.attributes["messaging.destination.name"] == "default"
    assert first_publish.attributes["messaging.operation.type"] == "send"
    assert first_publish.attributes["messaging.system"] == "aiotq"

    def hexid(value: int, width: int) -> str:
        return f"0x{value:0{width}x}"

    runs = [s for s in spans if s["kind"] == "SpanKind.CONSUMER"]
    assert {s["name"] for s in runs} == {"process default"}
    assert all(s["context"]["trace_id"] == hexid(trace_id, 32) for s in spans)
    first_run = next(
        s
        for s in runs
        if s["attributes"]["messaging.message.id"]
        == first_publish.attributes["messaging.message.id"]
    )
    assert first_run["parent_id"] == hexid(first_publish.context.span_id, 16)
    next_publish = next(s for s in spans if s["kind"] == "SpanKind.PRODUCER")
    assert next_publish["parent_id"] == first_run["context"]["span_id"]  # the chain goes on
    second_run = next(s for s in runs if s["attributes"]["messaging.message.id"] == last.id)
    assert second_run["parent_id"] == next_publish["context"]["span_id"]
    failed = next(s for s in runs if s["attributes"]["messaging.message.id"] == failing.id)
    assert failed["status"]["status_code"] == StatusCode.ERROR.name
    assert any(e["name"] == "exception" for e in failed["events"])
