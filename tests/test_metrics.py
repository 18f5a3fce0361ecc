"""Prometheus metrics in celery-exporter's names: a worker's /metrics scraped over HTTP
while it runs known numbers of successes, failures and retries, and the cluster view the
dashboard serves."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiotq.metrics import render_cluster

from .apps import build
from .workerproc import WorkerProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, metric_name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(
        value for (metric, keys), value in found.items()
        if metric == metric_name and all(dict(keys).get(k) == v for k, v in labels.items())
    )  # fmt: skip


async def test_a_workers_metrics_count_what_it_ran(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    port = free_port()
    worker = WorkerProcess(url, "-n", "metrics@here", "--metrics-port", str(port))
    worker.ready()
    app = build(url, url)
    try:
        add, fail, div = app.tasks["e2e.add"], app.tasks["e2e.fail"], app.tasks["e2e.fast_div"]
        for n in range(5):
            assert await (await add.send(n, n)).get(timeout=10) == 2 * n
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017 - any failure
                await (await fail.send("x")).get(timeout=10)
        with pytest.raises(ZeroDivisionError):  # retried 3 times, then failed
            await (await div.send(1, 0)).get(timeout=20)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 5
            while True:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                found = samples(text)
                if total(found, "celery_task_failed_total") >= 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        host = {"hostname": "metrics@here"}
        assert (
            total(
                found, "celery_task_succeeded_total", name="e2e.add", queue_name="default", **host
            )
            == 5
        )
        assert total(found, "celery_task_failed_total", name="e2e.fail", **host) == 2
        assert total(found, "celery_task_failed_total", name="e2e.fast_div",
                     exception="ZeroDivisionError") == 1  # fmt: skip
        assert total(found, "celery_task_retried_total", name="e2e.fast_div") == 3
        assert total(found, "celery_task_received_total", **host) == 5 + 2 + 4
        assert total(found, "celery_task_runtime_count", name="e2e.add") == 5
        assert total(found, "celery_worker_up", **host) == 1
        assert total(found, "celery_worker_tasks_active", **host) == 0
        assert ("aiotq_event_loop_lag_max_seconds", (("hostname", "metrics@here"),)) in found
        waits = total(found, "celery_task_queue_wait_time_count", name="e2e.add", **host)
        assert waits == 5 and total(found, "celery_task_queue_wait_time_sum", name="e2e.add") < 10

        await app.asend_task("e2e.sleep", (0,), countdown=30)  # delayed: counted as such
        body, content_type = await render_cluster(app)
        cluster = samples(body.decode())
        assert content_type.startswith("text/plain")
        assert total(cluster, "celery_worker_up", **host) == 1
        assert total(cluster, "celery_active_worker_count", queue_name="default") == 1
        assert total(cluster, "celery_queue_length", queue_name="default") == 0
        assert total(cluster, "aiotq_queue_delayed", queue_name="default") == 1
    finally:
        worker.stop()
        await app.aclose()


def test_the_shipped_grafana_dashboard_and_alerts_use_only_metrics_we_export() -> None:
    import json
    import re

    root = Path(__file__).resolve().parent.parent / "examples" / "grafana"
    exported = {
        "celery_task_received_total", "celery_task_started_total", "celery_task_succeeded_total",
        "celery_task_failed_total", "celery_task_rejected_total", "celery_task_revoked_total",
        "celery_task_retried_total", "celery_task_runtime_bucket", "celery_task_queue_wait_time_bucket", "celery_worker_up",
        "celery_worker_tasks_active", "celery_queue_length", "celery_active_worker_count",
        "aiotq_queue_delayed", "aiotq_queue_dead_letters", "aiotq_event_loop_lag_max_seconds",
        "aiotq_event_loop_blocked", "aiotq_worker_prefetched_tasks",
    }  # fmt: skip
    dashboard = json.loads((root / "aiotq-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append((root / "alerts.yaml").read_text())
    used = {m for e in exprs for m in re.findall(r"\b((?:celery|aiotq)_[a-z_]+)\b", e)}
    assert used and used <= exported, used - exported


async def test_the_sending_process_counts_sent_tasks_in_its_own_registry(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def sent() -> float:
        return (
            REGISTRY.get_sample_value(
                "celery_task_sent_total",
                {"name": "e2e.add", "hostname": socket.gethostname(), "queue_name": "default"},
            )
            or 0.0
        )

    app = build(f"sqlite:///{tmp_path}/p.db")
    app.conf.producer_metrics = True  # the web app's /metrics (its default registry) shows it
    before = sent()
    for n in range(3):
        await app.tasks["e2e.add"].send(n, n)
    assert sent() - before == 3
    await app.aclose()
