"""Prometheus metrics in celery-exporter's names and labels, so the Grafana dashboards
(17508/17509) and the celery-mixin alerts Celery users run work unchanged.

Two sources, both through prometheus_client:

- each worker (`aiotq worker --metrics-port 9808`): task counters and histograms from its
  own task steps (no events on the broker needed), and its own gauges;
- the dashboard's `/metrics` (`render_cluster(app)`): what the whole deployment looks like,
  read at scrape time from the presence records and the brokers' queue counts.

Scrape every worker and the dashboard; sum by label in PromQL as with celery-exporter.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .presence import live_workers

if TYPE_CHECKING:
    from .app import App
    from .history import Run, TaskRecord

LABELS = ("name", "hostname", "queue_name")
# celery-exporter's default buckets (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LE = [*(repr(float(b)) for b in BUCKETS), "+Inf"]
COUNTED = ("received", "started", "succeeded", "rejected", "revoked", "retried")
COUNTER_OF = {"SUCCESS": "succeeded", "RETRY": "retried", "REJECTED": "rejected",
              "REVOKED": "revoked"}  # fmt: skip


class _TaskStats:
    """One (task name, queue)'s counts and histograms, plain numbers on the event loop's
    thread; prometheus_client reads them at scrape time (`_TaskCollector`)."""

    __slots__ = ("failed", "received", "rejected", "retried", "revoked", "runtime",
                 "runtime_sum", "started", "succeeded", "wait", "wait_sum")  # fmt: skip

    def __init__(self) -> None:
        self.received = self.started = self.succeeded = 0
        self.rejected = self.revoked = self.retried = 0
        self.failed: dict[str, int] = {}  # by exception type
        self.runtime = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.wait = [0] * (len(BUCKETS) + 1)
        self.runtime_sum = self.wait_sum = 0.0


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    total, out = 0, []
    for le, count in zip(_LE, counts, strict=True):
        total += count
        out.append((le, float(total)))
    return out


class _TaskCollector(Collector):
    """The task metrics as prometheus_client families, built from `_TaskStats` when
    scraped. A Counter's inc() takes a lock and a Histogram's observe() a lock and a scan
    of its buckets: five of those per task were a tenth of a noop task's cost; counting
    in plain numbers and exposing them through a custom collector (prometheus_client's own
    way for values kept elsewhere) costs a few hundred nanoseconds."""

    def __init__(self, metrics: TaskMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        host = self.metrics.hostname
        stats = list(self.metrics.stats.items())  # a snapshot: the loop adds keys meanwhile
        counters = {kind: CounterMetricFamily(f"celery_task_{kind}", f"Tasks {kind}.",
                                              labels=LABELS) for kind in COUNTED}  # fmt: skip
        failed = CounterMetricFamily("celery_task_failed", "Tasks failed.",
                                     labels=[*LABELS, "exception"])  # fmt: skip
        runtime = HistogramMetricFamily("celery_task_runtime", "Task runtime (seconds).",
                                        labels=LABELS)  # fmt: skip
        wait = HistogramMetricFamily("celery_task_queue_wait_time", "From due (sent, or its"
                                     " eta) to started (seconds).", labels=LABELS)  # fmt: skip
        for (name, queue), found in stats:
            labels = [name, host, queue]
            for kind, family in counters.items():
                family.add_metric(labels, getattr(found, kind))
            for exception, count in list(found.failed.items()):
                failed.add_metric([*labels, exception], count)
            runtime.add_metric(labels, _cumulative(found.runtime), found.runtime_sum)
            wait.add_metric(labels, _cumulative(found.wait), found.wait_sum)
        yield from counters.values()
        yield failed
        yield runtime
        yield wait


class TaskMetrics:
    """One worker's metrics: a `RunSink` of the worker's task steps (taskevents.py), so
    they lag the runs by a fold (half a second) at most."""

    def __init__(self, hostname: str, registry: CollectorRegistry | None = None) -> None:
        self.hostname = hostname
        self.registry = registry or CollectorRegistry()
        self.stats: dict[tuple[str, str], _TaskStats] = {}
        r = self.registry
        r.register(_TaskCollector(self))
        self.worker_up = Gauge("celery_worker_up", "1 while the worker runs.", ["hostname"],
                               registry=r)  # fmt: skip
        self.tasks_active = Gauge("celery_worker_tasks_active", "Tasks running now.",
                                  ["hostname"], registry=r)  # fmt: skip
        self.loop_lag = Gauge("aiotq_event_loop_lag_max_seconds",
                              "The worst event-loop lag seen (a task that blocked the loop).",
                              ["hostname"], registry=r)  # fmt: skip
        blocked = "Times the event loop was blocked past worker_loop_lag_warn_s."
        self.loop_blocked = Gauge("aiotq_event_loop_blocked", blocked, ["hostname"], registry=r)
        self.prefetched = Gauge("aiotq_worker_prefetched_tasks", "Fetched, not yet running.",
                                ["hostname"], registry=r)  # fmt: skip
        self.worker_up.labels(hostname).set(1)

    def watch(
        self,
        active: Callable[[], float],
        prefetched: Callable[[], float],
        lag_max_s: Callable[[], float],
        blocked: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the worker's own state."""
        self.tasks_active.labels(self.hostname).set_function(active)
        self.prefetched.labels(self.hostname).set_function(prefetched)
        self.loop_lag.labels(self.hostname).set_function(lag_max_s)
        self.loop_blocked.labels(self.hostname).set_function(blocked)

    def _of(self, name: str | None, queue: str | None) -> _TaskStats:
        key = (name or "", queue or "")
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = _TaskStats()
        return found

    def fold(
        self, received: Sequence[Run], started: Sequence[Run], finished: Sequence[TaskRecord]
    ) -> None:
        of = self._of
        for run in received:
            of(run.name, run.queue).received += 1
        for run in started:
            found = of(run.name, run.queue)
            found.started += 1
            sent = run.sent_at_s
            if sent is not None and run.started_at_s is not None:
                wait = max(0.0, run.started_at_s - max(sent, run.eta or 0.0))
                found.wait[bisect_left(BUCKETS, wait)] += 1  # le: the first bound >= wait
                found.wait_sum += wait
        for record in finished:
            found = of(record.name, record.queue)
            state = record.state
            if state == "FAILURE":
                exception = (record.exception or "").split(":", 1)[0]
                found.failed[exception] = found.failed.get(exception, 0) + 1
            else:
                kind = COUNTER_OF.get(state)
                if kind is not None:
                    setattr(found, kind, getattr(found, kind) + 1)
            runtime = record.runtime_s
            if runtime is not None and state in ("SUCCESS", "FAILURE"):
                found.runtime[bisect_left(BUCKETS, runtime)] += 1
                found.runtime_sum += runtime

    def offline(self) -> None:
        self.worker_up.labels(self.hostname).set(0)

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """The worker's own /metrics (prometheus_client's server, on a thread of its own:
        a scrape never waits for the event loop)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


async def render_cluster(app: App, queues: Sequence[str] = ()) -> tuple[bytes, str]:
    """The deployment's metrics, read now: workers from presence, queue lengths from the
    broker. For the dashboard's /metrics."""
    registry = CollectorRegistry()
    up = Gauge("celery_worker_up", "1 for each live worker.", ["hostname"], registry=registry)
    active = Gauge("celery_worker_tasks_active", "Tasks running now.", ["hostname"],
                   registry=registry)  # fmt: skip
    length = Gauge("celery_queue_length", "Messages ready in the queue.", ["queue_name"],
                   registry=registry)  # fmt: skip
    consumers = Gauge("celery_active_worker_count", "Live workers consuming the queue.",
                      ["queue_name"], registry=registry)  # fmt: skip
    delayed = Gauge("aiotq_queue_delayed", "Delayed messages (countdown, eta, retries).",
                    ["queue_name"], registry=registry)  # fmt: skip
    dead = Gauge("aiotq_queue_dead_letters", "Dead-lettered messages.", ["queue_name"],
                 registry=registry)  # fmt: skip
    workers = await live_workers(app.coordinator) if app.coordinator is not None else []
    names = dict.fromkeys([app.conf.task_default_queue, *app.topology.queues, *queues])
    for worker in workers:
        up.labels(worker.hostname).set(1)
        active.labels(worker.hostname).set(worker.in_flight)
        names.update(dict.fromkeys(worker.queues))
    for queue in names:
        stats = await app.broker.queue_stats(queue)
        length.labels(queue).set(stats.ready or 0)
        consumers.labels(queue).set(sum(1 for w in workers if queue in w.queues))
        if stats.delayed is not None:
            delayed.labels(queue).set(stats.delayed)
        if stats.dead is not None:
            dead.labels(queue).set(stats.dead)
    scraped = Gauge("aiotq_scrape_timestamp_seconds", "When this was read.", registry=registry)
    scraped.set(time.time())
    return generate_latest(registry), CONTENT_TYPE_LATEST
