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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .presence import live_workers

if TYPE_CHECKING:
    from .app import App

LABELS = ("name", "hostname", "queue_name")
# celery-exporter's default buckets (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COUNTED = {
    "task-received": "received", "task-started": "started", "task-succeeded": "succeeded",
    "task-failed": "failed", "task-rejected": "rejected", "task-revoked": "revoked",
    "task-retried": "retried",
}  # fmt: skip
KNOWN_CAP = 10_000  # tasks whose name and queue are remembered between their events


class TaskMetrics:
    """One worker's metrics: `feed(event)` is the worker's task-event sink (taskevents.py)."""

    def __init__(self, hostname: str, registry: CollectorRegistry | None = None) -> None:
        self.hostname = hostname
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.counters = {
            kind: Counter(
                f"celery_task_{kind}",
                f"Tasks {kind}.",
                [*LABELS, "exception"] if kind == "failed" else list(LABELS),
                registry=r,
            )
            for kind in COUNTED.values()
        }
        self.runtime = Histogram("celery_task_runtime", "Task runtime (seconds).",
                                 list(LABELS), buckets=BUCKETS, registry=r)  # fmt: skip
        self.queue_wait = Histogram("celery_task_queue_wait_time", "From due (sent, or its eta)"
                                    " to started (seconds).", list(LABELS), buckets=BUCKETS,
                                    registry=r)  # fmt: skip
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
        # uuid -> name, queue, due (epoch s: sent, or its eta when later)
        self._known: OrderedDict[str, tuple[str, str, float | None]] = OrderedDict()
        self._children: dict[tuple[str, str, str], Any] = {}

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

    def feed(self, event: dict[str, Any]) -> None:
        kind = COUNTED.get(event["type"])
        if kind is None:
            return
        task_id = event["uuid"]
        if kind == "received":
            name, queue = event.get("name") or "", event.get("queue") or ""
            sent, eta = event.get("sent_at"), event.get("eta")
            due = max(sent, eta or 0.0) if sent is not None else None
            self._known[task_id] = (name, queue, due)
            if len(self._known) > KNOWN_CAP:
                self._known.popitem(last=False)
        else:
            name, queue, due = self._known.get(task_id, (event.get("name") or "", "", None))
            if kind in ("succeeded", "failed", "rejected", "revoked", "retried"):
                self._known.pop(task_id, None)
            elif kind == "started" and due is not None:
                wait = max(0.0, float(event["timestamp"]) - due)
                self._child("wait", name, queue).observe(wait)
        if kind == "failed":
            exception = str(event.get("exception") or "").split(":", 1)[0]
            self.counters["failed"].labels(name, self.hostname, queue, exception).inc()
        else:
            self._child(kind, name, queue).inc()
        runtime = event.get("runtime")
        if runtime is not None and kind in ("succeeded", "failed"):
            self._child("runtime", name, queue).observe(float(runtime))

    def _child(self, kind: str, name: str, queue: str) -> Any:
        """A metric's child for these labels, looked up once (`labels()` takes a lock and
        builds its key on every call: a cost on the per-task path)."""
        key = (kind, name, queue)
        child = self._children.get(key)
        if child is None:
            metric = {"wait": self.queue_wait, "runtime": self.runtime}.get(kind)
            parent = metric if metric is not None else self.counters[kind]
            child = self._children[key] = parent.labels(name, self.hostname, queue)
        return child

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
