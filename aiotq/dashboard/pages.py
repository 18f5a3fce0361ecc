"""The HTML pages (GET). Each reads what it shows through `data`, then renders one template;
the page's script re-fetches the same URL to refresh its `data-live` parts."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..exceptions import AiotqError
from . import charts, data
from .security import route_path
from .web import dashboard_of, error_page, render

HOUR_S = 3600.0


async def overview(request: Request) -> Response:
    dashboard = dashboard_of(request)
    app = dashboard.app
    workers = await data.workers_of(app)
    history = data.history_of(app)
    throughput = runtimes = None
    if history is not None:
        hour = charts.hour_of(await history.minutes(time.time() - HOUR_S))
        throughput, runtimes = charts.throughput(hour), charts.runtimes(hour)
    return await render(request, "overview.html", {
        "workers": workers, "queues": await data.queue_rows(app, workers),
        "throughput": throughput, "runtimes": runtimes, "has_history": history is not None,
    })  # fmt: skip


async def workers_page(request: Request) -> Response:
    app = dashboard_of(request).app
    workers = await data.workers_of(app)
    active = await data.active_tasks(app) if workers else {}
    history = data.history_of(app)
    names = set(app.tasks)
    if history is not None:
        names.update(await history.names())
    return await render(request, "workers.html", {
        "workers": data.worker_rows(workers) if workers is not None else None,
        "active": active, "task_names": sorted(names),
        "queue_names": data.queue_names(app, workers),
    })  # fmt: skip


def page_link(filters: dict[str, str], page: int) -> str:
    return "?" + urlencode({**filters, "page": page})


async def tasks_page(request: Request) -> Response:
    app = dashboard_of(request).app
    history = data.history_of(app)
    params = request.query_params
    filters = data.filters_of(params)
    context: dict[str, Any] = {"filters": filters, "error": None, "page": None, "names": [],
                               "pages": {}, "blockers": {}, "running": []}  # fmt: skip
    workers = await data.workers_of(app)
    context["worker_names"] = sorted({w.hostname for w in workers or ()})
    context["queue_names"] = data.queue_names(app, workers)
    if history is None:
        return await render(request, "tasks.html", {**context, "has_history": False})
    try:
        query = data.task_query(params)
    except data.FilterError as exc:
        context["error"] = str(exc)
        query = None
    if query is not None:
        page = await history.search(query)
        last = max(1, -(-page.total // page.per_page))
        context["page"] = page
        context["last_page"] = last
        context["pages"] = {
            "first": page_link(filters, 1), "previous": page_link(filters, max(1, page.page - 1)),
            "next": page_link(filters, min(last, page.page + 1)), "last": page_link(filters, last),
        }  # fmt: skip
        context["blockers"] = {r.id: data.retry_blocker(app, r) for r in page.records}
        if page.page == 1 and query.state in (None, "STARTED") and workers:
            active = await data.active_tasks(app)
            context["running"] = data.running_records(app, active, query)
    context["names"] = await history.names()
    return await render(request, "tasks.html", {**context, "has_history": True,
                                                "bulk_max": data.BULK_MAX})  # fmt: skip


async def task_page(request: Request) -> Response:
    app = dashboard_of(request).app
    task_id = request.path_params["task_id"]
    history = data.history_of(app)
    record = await history.get(task_id) if history is not None else None
    held = None
    if record is None:  # running or waiting in a worker: in the history once it ends
        held = record = await data.held_task(app, task_id)
    stored = await app.AsyncResult(task_id).refresh()
    tree: list[data.Node] = []
    cut = False
    if record is not None and held is None and history is not None:
        tree, cut = await data.family(history, record)
    blocker = data.retry_blocker(app, record) if record is not None else "it is not known yet"
    if held is not None:
        blocker = f"it is {'running' if held.state == 'STARTED' else 'waiting'} in {held.worker}"
    return await render(request, "task.html", {
        "task_id": task_id, "record": record, "stored": stored, "tree": tree, "cut": cut,
        "blocker": blocker, "held": held,
        "capped": data.capped_values(record) if record is not None else False,
        "has_history": history is not None,
    })  # fmt: skip


async def queues_page(request: Request) -> Response:
    app = dashboard_of(request).app
    workers = await data.workers_of(app)
    rows = await data.queue_rows(app, workers)
    letters = {
        row["name"]: await data.dead_letters(app, row["name"]) for row in rows if row["dead"]
    }
    return await render(request, "queues.html", {"queues": rows, "letters": letters})


async def beat_page(request: Request) -> Response:
    app = dashboard_of(request).app
    rows, error = await data.beat_rows(app)
    return await render(request, "beat.html", {
        "entries": rows, "error": error, "has_coordinator": app.coordinator is not None,
        "leader": await data.beat_leader(app),
    })  # fmt: skip


async def settings_page(request: Request) -> Response:
    app = dashboard_of(request).app
    return await render(request, "settings.html", {"settings": data.settings_rows(app)})


async def metrics(request: Request) -> Response:
    """Prometheus: the whole deployment (aiotq.metrics.render_cluster), read at scrape time."""
    app = dashboard_of(request).app
    try:
        from ..metrics import render_cluster
    except ImportError as exc:
        return PlainTextResponse(f"metrics are not available: {exc}\n", status_code=404)
    try:
        body, content_type = await render_cluster(app)
    except AiotqError as exc:  # the broker or the coordinator is away: say so, scrape again
        return PlainTextResponse(f"cannot read the metrics now: {exc}\n", status_code=503)
    return Response(body, media_type=content_type)


async def healthcheck(request: Request) -> Response:
    return PlainTextResponse("OK")


async def not_found(request: Request, exc: Exception) -> Response:
    if route_path(request.scope).startswith("/api/"):
        return JSONResponse({"ok": False, "error": "not found"}, status_code=404)
    return await error_page(request, 404, "Not found", f"Nothing at {request.url.path}.")
