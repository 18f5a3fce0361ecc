"""Every POST: retry / revoke / terminate tasks (one, selected, or all matching a filter),
remote control of a worker, requeue and purge of a queue.

One handler per action serves both callers: a JSON body gets a JSON answer; an HTML form
(urlencoded, CSRF-checked) gets a 303 back to the page it came from with a flash message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response

from ..exceptions import AiotqError
from ..settings import parse_rate
from . import data
from .api import json_response
from .security import CSRF_FIELD, local, media_type, post_refusal
from .web import Dashboard, base_of, dashboard_of, error_page, flash_to

log = logging.getLogger("aiotq.dashboard")

BODY_MAX = 1 << 20
REQUEUE_BATCH = 500
REQUEUE_MAX = 100_000
TASK_ACTIONS = ("retry", "revoke", "terminate")
WORKER_ACTIONS = ("shutdown", "add_consumer", "cancel_consumer", "rate_limit")
QUEUE_ACTIONS = ("requeue", "purge")


class BodyError(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Body:
    """A POST's fields: from an urlencoded form (`form` True) or a JSON object."""

    values: dict[str, Any]
    form: bool

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        return None if value is None else str(value)

    def getlist(self, name: str) -> list[str]:
        value = self.values.get(name)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@dataclass
class Outcome:
    ok: bool
    message: str
    status_code: int = 200
    data: dict[str, Any] = field(default_factory=dict)
    link: str | None = None  # a dashboard page to offer in the flash (the retried task)


async def read_body(request: Request) -> Body:
    kind = media_type(request)
    if kind not in ("application/json", "application/x-www-form-urlencoded", ""):
        raise BodyError(415, "send JSON or an urlencoded form")
    raw = b""
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_MAX:
                raise BodyError(413, "request body too large")
    except ClientDisconnect:
        raise BodyError(400, "the client went away") from None
    if kind == "application/json":
        try:
            values = json.loads(raw or b"{}")
        except ValueError:
            raise BodyError(400, "the body is not JSON") from None
        if not isinstance(values, dict):
            raise BodyError(400, "the body must be a JSON object")
        return Body(values, form=False)
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20_000)
    except (UnicodeDecodeError, ValueError):
        raise BodyError(400, "the form cannot be read") from None
    return Body(dict(fields), form=True)


Handler = Callable[[Request, Dashboard, Body], Awaitable[Outcome]]


def action(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A POST endpoint: refuse in read-only mode and forged forms, then answer as asked."""

    async def endpoint(request: Request) -> Response:
        dashboard = dashboard_of(request)
        wants_json = media_type(request) == "application/json"
        if dashboard.read_only:  # the middleware refused already; kept for a second guard
            return await _refuse(request, wants_json, 403, "this dashboard is read-only")
        try:
            body = await read_body(request)
        except BodyError as exc:
            return await _refuse(request, wants_json, exc.status_code, str(exc))
        refusal = post_refusal(dashboard.guard, request, body.get(CSRF_FIELD))
        if refusal is not None:
            return await _refuse(request, not body.form, 403, refusal)
        try:
            outcome = await handler(request, dashboard, body)
        except AiotqError as exc:
            log.warning("dashboard action %s failed: %s", request.url.path, exc)
            outcome = Outcome(False, f"failed: {exc}", 502)
        if not body.form:
            payload = {"ok": outcome.ok, "message": outcome.message, **outcome.data}
            if not outcome.ok:
                payload["error"] = outcome.message
            return json_response(payload, outcome.status_code)
        target = body.get("next") or "/"
        if not local(target):
            target = "/"
        response = RedirectResponse(base_of(request.scope) + target, status_code=303)
        flash_to(response, request, "ok" if outcome.ok else "bad", outcome.message, outcome.link)
        return response

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _refuse(request: Request, wants_json: bool, status_code: int, message: str) -> Response:
    if wants_json:
        return json_response({"ok": False, "error": message}, status_code)
    return await error_page(request, status_code, "Refused", message)


# -- tasks ------------------------------------------------------------------------------------
async def _retry(dashboard: Dashboard, task_ids: list[str]) -> tuple[dict[str, str], list[str]]:
    """Send each task again with its own arguments: ({old id: new id}, why others were not)."""
    app = dashboard.app
    history = data.history_of(app)
    sent: dict[str, str] = {}
    skipped: list[str] = []
    for task_id in task_ids:
        record = await history.get(task_id) if history is not None else None
        if record is None:
            skipped.append(f"{task_id}: not in the history")
            continue
        blocker = data.retry_blocker(app, record)
        if blocker is not None or record.name is None:
            skipped.append(f"{task_id}: {blocker}")
            continue
        options = {"queue": record.queue} if record.queue else {}
        try:
            result = await app.asend_task(record.name, record.args, record.kwargs, **options)
        except (TypeError, ValueError) as exc:
            skipped.append(f"{task_id}: {exc}")
            continue
        sent[task_id] = result.id
    return sent, skipped


def _retry_outcome(sent: dict[str, str], skipped: list[str], extra: str = "") -> Outcome:
    parts = []
    if sent:
        parts.append(f"sent {len(sent)} task(s) again" if len(sent) > 1 else
                     f"sent again as {next(iter(sent.values()))}")  # fmt: skip
    if skipped:
        parts.append(f"not retried: {'; '.join(skipped[:5])}" +
                     (f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""))  # fmt: skip
    link = f"/tasks/{next(iter(sent.values()))}" if len(sent) == 1 else None
    status_code = 200 if sent or not skipped else 409
    return Outcome(bool(sent) or not skipped, ("; ".join(parts) or "nothing to retry") + extra,
                   status_code, {"sent": sent, "skipped": skipped}, link)  # fmt: skip


async def _revoke(dashboard: Dashboard, task_ids: list[str], terminate: bool) -> Outcome:
    if not task_ids:
        return Outcome(False, "no task selected", 400)
    await dashboard.app.control.revoke(task_ids, terminate=terminate)
    verb = "terminated" if terminate else "revoked"
    what = task_ids[0] if len(task_ids) == 1 else f"{len(task_ids)} task(s)"
    return Outcome(True, f"{verb} {what}", data={"revoked": task_ids, "terminate": terminate})


@action
async def task_action(request: Request, dashboard: Dashboard, body: Body) -> Outcome:
    """POST /api/tasks/{id}/retry|revoke|terminate"""
    verb = request.path_params["action"]
    task_id = request.path_params["task_id"]
    if verb not in TASK_ACTIONS:
        return Outcome(False, f"unknown action {verb!r}", 404)
    if verb == "retry":
        sent, skipped = await _retry(dashboard, [task_id])
        outcome = _retry_outcome(sent, skipped)
        if not sent and skipped and "not in the history" in skipped[0]:
            outcome.status_code = 404
        return outcome
    return await _revoke(dashboard, [task_id], terminate=verb == "terminate")


async def _matching(dashboard: Dashboard, filters: dict[str, Any]) -> tuple[list[str], int]:
    """The ids of the tasks a filter matches now (at most data.BULK_MAX), and how many match:
    read before acting, so the tasks a retry sends cannot join the set being retried."""
    history = data.history_of(dashboard.app)
    if history is None:
        return [], 0
    query = data.task_query(filters, per_page=200)
    if query.until_s is None:
        query.until_s = time.time()
    ids: list[str] = []
    total = 0
    page = 1
    while len(ids) < data.BULK_MAX:
        query.page = page
        found = await history.search(query)
        total = found.total
        ids.extend(r.id for r in found.records)
        if not found.records or page * query.per_page >= found.total:
            break
        page += 1
    return list(dict.fromkeys(ids))[: data.BULK_MAX], total


@action
async def bulk(request: Request, dashboard: Dashboard, body: Body) -> Outcome:
    """POST /api/tasks/bulk: {action, ids: [...]} or {action, filter: {state, name, ...}}."""
    verb = body.get("action") or ""
    if verb not in TASK_ACTIONS:
        return Outcome(
            False, f"unknown bulk action {verb!r} (one of {', '.join(TASK_ACTIONS)})", 400
        )
    extra = ""
    by_filter = body.get("scope") == "filter" or (not body.form and "filter" in body.values)
    if by_filter:
        raw = body.values.get("filter") if not body.form else body.values
        filters = raw if isinstance(raw, dict) else {}
        flat = {k: (v[0] if isinstance(v, list) and v else v) for k, v in filters.items()}
        try:
            ids, total = await _matching(dashboard, {k: flat.get(k) for k in data.FILTERS})
        except data.FilterError as exc:
            return Outcome(False, str(exc), 400)
        if total > len(ids):
            extra = f" (the first {len(ids)} of {total} matching; run it again for more)"
    else:
        ids = list(dict.fromkeys(body.getlist("ids")))
        if len(ids) > data.BULK_MAX:
            return Outcome(False, f"at most {data.BULK_MAX} tasks at once", 400)
    if not ids:
        return Outcome(
            False, "no task matches the filter" if by_filter else "no task selected", 400
        )
    if verb == "retry":
        sent, skipped = await _retry(dashboard, ids)
        return _retry_outcome(sent, skipped, extra)
    outcome = await _revoke(dashboard, ids, terminate=verb == "terminate")
    outcome.message += extra
    return outcome


# -- workers ---------------------------------------------------------------------------------
def _reply_outcome(hostname: str, replies: list[dict[str, Any]], what: str) -> Outcome:
    answers = {name: answer for item in replies for name, answer in item.items()}
    if not answers:
        return Outcome(False, f"{what}: no reply from {hostname}", 504, {"replies": {}})
    errors = [f"{n}: {a['error']}" for n, a in answers.items()
              if isinstance(a, dict) and a.get("error")]  # fmt: skip
    if errors:
        return Outcome(False, f"{what}: {'; '.join(errors)}", 409, {"replies": answers})
    said = "; ".join(
        f"{n}: {a.get('ok', a) if isinstance(a, dict) else a}" for n, a in answers.items()
    )
    return Outcome(True, f"{what}: {said}", data={"replies": answers})


@action
async def worker_action(request: Request, dashboard: Dashboard, body: Body) -> Outcome:
    """POST /api/workers/{hostname}/shutdown|add_consumer|cancel_consumer|rate_limit"""
    control = dashboard.app.control
    hostname = request.path_params["hostname"]
    verb = request.path_params["action"]
    destination = [hostname]
    if verb == "shutdown":
        replies = await control.shutdown(destination=destination, reply=True)
        return _reply_outcome(hostname, replies, f"shutdown of {hostname}")
    if verb in ("add_consumer", "cancel_consumer"):
        queue = (body.get("queue") or "").strip()
        if not queue:
            return Outcome(False, "which queue? (field 'queue')", 400)
        call = control.add_consumer if verb == "add_consumer" else control.cancel_consumer
        replies = await call(queue, destination=destination, reply=True)
        return _reply_outcome(hostname, replies, f"{verb.replace('_', ' ')} {queue}")
    if verb == "rate_limit":
        task_name = (body.get("task_name") or "").strip()
        rate = (body.get("rate_limit") or "").strip() or None
        if not task_name:
            return Outcome(False, "which task? (field 'task_name')", 400)
        if rate not in (None, "0"):
            try:
                parse_rate(rate)
            except (ValueError, AiotqError) as exc:
                return Outcome(False, f"bad rate {rate!r}: {exc}", 400)
        replies = await control.rate_limit(task_name, rate, destination=destination, reply=True)
        return _reply_outcome(hostname, replies, f"rate limit of {task_name}")
    return Outcome(False, f"unknown action {verb!r}", 404)


# -- queues ------------------------------------------------------------------------------------
@action
async def queue_action(request: Request, dashboard: Dashboard, body: Body) -> Outcome:
    """POST /api/queues/{name}/requeue|purge (known queues only: a typo purges nothing)."""
    app = dashboard.app
    name = request.path_params["name"]
    verb = request.path_params["action"]
    if verb not in QUEUE_ACTIONS:
        return Outcome(False, f"unknown action {verb!r}", 404)
    if name not in data.queue_names(app, await data.workers_of(app)):
        return Outcome(False, f"unknown queue {name!r}", 404)
    if verb == "purge":
        count = await app.broker.purge(name)
        return Outcome(True, f"purged {count} message(s) from {name}", data={"purged": count})
    moved = 0
    while moved < REQUEUE_MAX:
        batch = await app.broker.requeue_dead(name, REQUEUE_BATCH)
        moved += batch
        if batch < REQUEUE_BATCH:
            break
    return Outcome(True, f"requeued {moved} dead letter(s) to {name}", data={"requeued": moved})
