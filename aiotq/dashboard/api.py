"""The JSON API's reads (`GET /api/...`): the same data as the pages, as JSON."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from . import data
from .web import dashboard_of

_encode = msgspec.json.Encoder(enc_hook=repr).encode


def json_response(payload: Any, status_code: int = 200) -> Response:
    """msgspec's encoder: task records and values as they are (a value JSON cannot hold
    becomes its repr rather than a 500)."""
    return Response(_encode(payload), status_code=status_code, media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


def refused(status_code: int, message: str) -> Response:
    return json_response({"ok": False, "error": message}, status_code)


async def tasks(request: Request) -> Response:
    app = dashboard_of(request).app
    history = data.history_of(app)
    if history is None:
        return refused(404, "this app keeps no task history (rpc:// or history_max_tasks = 0)")
    try:
        query = data.task_query(request.query_params)
    except data.FilterError as exc:
        return refused(400, str(exc))
    page = await history.search(query)
    return json_response({"tasks": page.records, "total": page.total, "page": page.page,
                          "per_page": page.per_page})  # fmt: skip


async def task(request: Request) -> Response:
    app = dashboard_of(request).app
    task_id = request.path_params["task_id"]
    history = data.history_of(app)
    record = await history.get(task_id) if history is not None else None
    held = await data.held_task(app, task_id) if record is None else None
    if held is not None:  # running or waiting in a worker: in the history once it ends
        payload = msgspec.to_builtins(held, enc_hook=repr)
        return json_response({**payload, "held": True, "retry_blocked": "it is not finished"})
    if record is None:
        return refused(404, f"no task {task_id!r} in the history, and no worker holds it")
    payload = msgspec.to_builtins(record, enc_hook=repr)
    payload["timeline"] = record.timeline  # read from the record's times, not a field
    payload["retry_blocked"] = data.retry_blocker(app, record)
    payload["held"] = False
    if history is not None:
        tree, _ = await data.family(history, record)
        payload["children"] = [n.record.id for n in _find(tree, task_id)]
    return json_response(payload)


def _find(nodes: list[data.Node], task_id: str) -> list[data.Node]:
    """The children of `task_id` in a family tree."""
    for node in nodes:
        if node.record.id == task_id:
            return node.children
        found = _find(node.children, task_id)
        if found:
            return found
    return []


async def workers(request: Request) -> Response:
    app = dashboard_of(request).app
    found = await data.workers_of(app)
    if found is None:
        return json_response({"presence": False, "workers": []})
    active = await data.active_tasks(app) if found else {}
    rows = data.worker_rows(found)
    for row in rows:
        row["active"] = active.get(row["hostname"], active.get(f"{row['hostname']}/{row['pid']}"))
    return json_response({"presence": True, "workers": rows})


async def queues(request: Request) -> Response:
    app = dashboard_of(request).app
    found = await data.workers_of(app)
    return json_response({"queues": await data.queue_rows(app, found)})


async def summary(request: Request) -> Response:
    return json_response(await dashboard_of(request).live.summary())
