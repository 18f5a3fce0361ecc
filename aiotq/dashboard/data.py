"""What the pages and the JSON API show, read from the app: one function per view, so the
HTML pages and `/api/` never disagree. Everything here is plain data (dicts, lists,
msgspec structs): the templates format it, the API encodes it."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ..beat import LEADER_LEASE, entries_of, last_run_key
from ..events import capped
from ..exceptions import AiotqError
from ..history import TaskQuery, TaskRecord, search_text
from ..presence import Presence, describe, live_workers
from ..urls import mask_password

if TYPE_CHECKING:
    from ..app import App
    from ..history import HistoryStore

log = logging.getLogger("aiotq.dashboard")

STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REJECTED", "REVOKED")
# what the history holds: a worker writes a task's record when its run ends
OUTCOMES = ("SUCCESS", "FAILURE", "RETRY", "REJECTED", "REVOKED")
FILTERS = ("q", "state", "name", "worker", "queue", "since", "until")
PER_PAGE_MAX = 500
BULK_MAX = 1000  # tasks one "all matching" action handles (the message says when cut)
FAMILY_MAX = 500  # tasks of one canvas shown on a task's page
SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key|private|signature|signing", re.I)
SECRET_QUERY = re.compile(r"((?:password|passwd|secret|token|api_?key)[^=&]*=)[^&]*", re.I)
MASK = "********"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*(?:ago)?\s*$", re.I)


class FilterError(ValueError):
    """A filter value that cannot be read (shown next to the form, 400 from the API)."""


def history_of(app: App) -> HistoryStore | None:
    """`app.history`, or None while it is not there (rpc://, or an app that predates it)."""
    try:
        return app.history
    except AttributeError:
        return None


# -- tasks ---------------------------------------------------------------------------------
def parse_time(text: str | None, now_s: float | None = None) -> float | None:
    """`15m` / `2h` / `1d` (ago), epoch seconds, or an ISO time (naive means UTC)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    now = time.time() if now_s is None else now_s
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2).lower()]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"cannot read the time {text!r} (try 15m, 2h, 1d or 2024-05-01T10:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def task_query(params: Mapping[str, Any], *, per_page: int = 50) -> TaskQuery:
    """The filters of `/tasks` and `/api/tasks` (and of a bulk action) as a TaskQuery."""

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    state = text("state")
    if state is not None:
        state = state.upper()
        if state not in STATES:
            raise FilterError(f"unknown state {state!r} (one of {', '.join(STATES)})")
    try:
        page = max(1, int(text("page") or 1))
        size = min(PER_PAGE_MAX, max(1, int(text("per_page") or per_page)))
    except ValueError:
        raise FilterError("page and per_page are whole numbers") from None
    return TaskQuery(
        q=text("q"), state=state, name=text("name"), worker=text("worker"),
        queue=text("queue"), since_s=parse_time(text("since")), until_s=parse_time(text("until")),
        page=page, per_page=size,
    )  # fmt: skip


def filters_of(params: Mapping[str, Any]) -> dict[str, str]:
    """The filter fields as given (to fill the form in again and build page links)."""
    return {name: str(params[name]) for name in FILTERS if params.get(name)}


def capped_values(record: TaskRecord) -> bool:
    """Args or kwargs kept as a cut repr (too large for the history), not as values."""
    return isinstance(record.args, str) or isinstance(record.kwargs, str)


def retry_blocker(app: App, record: TaskRecord) -> str | None:
    """Why this task cannot be sent again as it was, or None when it can."""
    if not record.name:
        return "the task's name is not known yet"
    if capped_values(record):
        return "its arguments were too large to keep (the history holds a cut repr only)"
    if record.args is not None and not isinstance(record.args, list | tuple):
        return "its arguments are not a list"
    if record.kwargs is not None and not isinstance(record.kwargs, dict):
        return "its keyword arguments are not a mapping"
    task = app.tasks.get(record.name)
    if task is not None:
        try:
            task.check_call(tuple(record.args or ()), dict(record.kwargs or {}))
        except TypeError as exc:
            return f"its arguments no longer fit the task: {exc}"
    return None


@dataclass
class Node:
    record: TaskRecord
    children: list[Node] = field(default_factory=list)


async def family(history: HistoryStore, record: TaskRecord) -> tuple[list[Node], bool]:
    """The canvas a task belongs to, as a tree by parent id (roots first, oldest first),
    and whether it was cut at FAMILY_MAX tasks."""
    root_id = record.root_id or record.id
    page = await history.search(TaskQuery(root_id=root_id, per_page=FAMILY_MAX))
    records = {r.id: r for r in page.records}
    records.setdefault(record.id, record)
    nodes = {task_id: Node(r) for task_id, r in records.items()}
    roots: list[Node] = []
    for node in sorted(
        nodes.values(), key=lambda n: n.record.received_at_s or n.record.updated_at_s
    ):
        parent = nodes.get(node.record.parent_id or "")
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)
    return roots, page.total > FAMILY_MAX


# -- workers and queues -----------------------------------------------------------------------
async def workers_of(app: App) -> list[Presence] | None:
    """The live workers, or None when the app has no coordinator (rpc://: no presence)."""
    coordinator = app.coordinator
    if coordinator is None:
        return None
    try:
        return await live_workers(coordinator)
    except AiotqError as exc:
        log.warning("cannot read worker presence: %s", exc)
        return []


def worker_rows(workers: list[Presence]) -> list[dict[str, Any]]:
    rows = describe(workers)
    for row, presence in zip(rows, workers, strict=True):
        row["queue_list"] = list(presence.queues)
        row["started_at_s"] = presence.started_at_s
    return rows


async def active_tasks(app: App, timeout_s: float = 1.0) -> dict[str, list[dict[str, Any]]]:
    """What each worker runs now ({hostname: [task, ...]}); {} when nobody answers."""
    try:
        answers = await app.control.inspect(timeout=timeout_s).active()
    except AiotqError as exc:
        log.warning("cannot ask the workers what they run: %s", exc)
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    for hostname, tasks in (answers or {}).items():
        if isinstance(tasks, list):
            found[hostname] = [
                {**t, "args": capped(t.get("args"), 200), "kwargs": capped(t.get("kwargs"), 200)}
                for t in tasks
                if isinstance(t, dict)
            ]
    return found


def _as_record(info: dict[str, Any], state: str, value_max: int) -> TaskRecord:
    delivery = info.get("delivery_info") or {}
    return TaskRecord(
        id=str(info.get("id")), state=state, name=info.get("name"),
        args=capped(info.get("args"), value_max), kwargs=capped(info.get("kwargs"), value_max),
        worker=info.get("hostname"), queue=delivery.get("queue"),
        retries=int(info.get("retries") or 0), started_at_s=info.get("time_start"),
        runtime_s=info.get("runtime_s"),
    )  # fmt: skip


async def held_task(app: App, task_id: str) -> TaskRecord | None:
    """A task a worker holds now (running, or prefetched and waiting), as a record: the
    history has it only once its run ends."""
    try:
        answers = await app.control.inspect(timeout=1.0).query_task(task_id)
    except AiotqError:
        return None
    value_max = app.conf.settings.event_value_max
    for found in (answers or {}).values():
        if isinstance(found, dict) and isinstance(found.get(task_id), list):
            where, info = found[task_id]
            return _as_record(info, "STARTED" if where == "active" else "RECEIVED", value_max)
    return None


def running_records(
    app: App, active: dict[str, list[dict[str, Any]]], query: TaskQuery
) -> list[TaskRecord]:
    """The tasks running now that a query's filters (but its times) let through."""
    value_max = app.conf.settings.event_value_max
    found = []
    for tasks in active.values():
        for info in tasks:
            record = _as_record(info, "STARTED", value_max)
            if query.name and record.name != query.name:
                continue
            if query.worker and record.worker != query.worker:
                continue
            if query.queue and record.queue != query.queue:
                continue
            if query.q and query.q.lower() not in search_text(record):
                continue
            found.append(record)
    return sorted(found, key=lambda r: -(r.runtime_s or 0.0))


def queue_names(app: App, workers: list[Presence] | None) -> list[str]:
    """The default queue, the declared ones and every queue a live worker consumes."""
    app.finalize()
    names = dict.fromkeys([app.conf.settings.task_default_queue, *app.topology.queues])
    for worker in workers or ():
        names.update(dict.fromkeys(worker.queues))
    return list(names)


async def queue_rows(app: App, workers: list[Presence] | None) -> list[dict[str, Any]]:
    rows = []
    for name in queue_names(app, workers):
        row: dict[str, Any] = {"name": name, "ready": None, "delayed": None, "unacked": None,
                               "dead": None, "error": None}  # fmt: skip
        try:
            stats = await app.broker.queue_stats(name)
            row.update(ready=stats.ready, delayed=stats.delayed, unacked=stats.unacked,
                       dead=stats.dead)  # fmt: skip
        except (AiotqError, NotImplementedError) as exc:
            row["error"] = str(exc) or type(exc).__name__
        row["consumers"] = [w.hostname for w in workers or () if name in w.queues]
        rows.append(row)
    return rows


_json_message = msgspec.json.Decoder(dict[str, Any])
_msgpack_message = msgspec.msgpack.Decoder(dict[str, Any])


def describe_body(body: bytes) -> dict[str, Any]:
    """A dead letter's id, task and arguments, when the body is one of our messages (JSON
    or msgpack; never unpickled), else its first bytes."""
    for decoder in (_json_message, _msgpack_message):
        try:
            message = decoder.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        return {
            "id": message.get("id"), "task": message.get("task"),
            "args": capped(message.get("args"), 300), "kwargs": capped(message.get("kwargs"), 300),
            "retries": message.get("retries", 0), "size": len(body), "raw": None, "error": None,
        }  # fmt: skip
    return {"id": None, "task": None, "args": None, "kwargs": None, "retries": None,
            "size": len(body), "raw": repr(body[:300]), "error": None}  # fmt: skip


async def dead_letters(app: App, queue: str, limit: int = 20) -> list[dict[str, Any]]:
    try:
        found = await app.broker.dead_letters(queue, limit)
    except (AiotqError, NotImplementedError) as exc:
        return [{"error": str(exc) or type(exc).__name__, "reason": None}]
    return [{**describe_body(body), "reason": reason} for body, reason in found]


# -- beat ----------------------------------------------------------------------------------------
async def beat_leader(app: App) -> str | None:
    """The process leading beat now (its holder name), or None."""
    coordinator = app.coordinator
    if coordinator is None:
        return None
    try:
        return await coordinator.holder(LEADER_LEASE)
    except AiotqError as exc:
        log.warning("cannot read beat's leader: %s", exc)
        return None


async def beat_rows(app: App) -> tuple[list[dict[str, Any]], str | None]:
    """Each periodic entry with its schedule, last and next run; an error instead when the
    schedule cannot be read."""
    try:
        entries = entries_of(app)
    except AiotqError as exc:
        return [], str(exc)
    coordinator = app.coordinator
    now = dt.datetime.now(dt.UTC)
    rows = []
    for entry in entries:
        last: dt.datetime | None = None
        if coordinator is not None:
            try:
                data = await coordinator.fetch(last_run_key(entry.name))
                if data is not None:
                    stamp = msgspec.json.decode(data, type=float)
                    last = dt.datetime.fromtimestamp(stamp, dt.UTC)
            except (AiotqError, msgspec.DecodeError) as exc:
                log.warning("cannot read the last run of %s: %s", entry.name, exc)
        upcoming = entry.schedule.next_after(last or now)
        rows.append({
            "name": entry.name, "task": entry.task, "schedule": str(entry.schedule),
            "args": list(entry.args), "kwargs": entry.kwargs, "options": masked("", entry.options),
            "last_run_s": last.timestamp() if last else None, "next_run_s": upcoming.timestamp(),
            "overdue": upcoming < now - dt.timedelta(seconds=5),
        })  # fmt: skip
    return rows, None


# -- settings ----------------------------------------------------------------------------------
def masked(key: str, value: Any) -> Any:
    """A setting as it may be shown: secrets by name hidden, passwords in URLs masked."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if key and SECRET_NAME.search(key):
        return MASK
    if isinstance(value, str):
        if "://" in value:
            return SECRET_QUERY.sub(r"\1**", mask_password(value))
        return value
    if isinstance(value, Mapping):
        return {str(k): masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [masked(key, v) for v in value]
    return masked(key, repr(value))


def settings_rows(app: App) -> list[tuple[str, Any]]:
    settings = app.conf.settings
    return [
        (f.name, masked(f.name, getattr(settings, f.name)))
        for f in msgspec.structs.fields(settings)
    ]


def broker_label(app: App) -> str:
    url = app.conf.settings.broker_url or "sqlite (the embedded default)"
    return str(masked("broker_url", url))


# -- the live summary ----------------------------------------------------------------------------
async def summary(app: App) -> dict[str, Any]:
    """What every page shows in its header and what the SSE stream pushes every ~2 s."""
    workers = await workers_of(app)
    found: dict[str, Any] = {
        "time_s": time.time(),
        "presence": workers is not None,
        "workers_up": len(workers or ()),
        "in_flight": sum(w.in_flight for w in workers or ()),
        "processed": sum(w.processed for w in workers or ()),
        "history": False,
        "states": {},
        "capped": [],  # states counted only up to the history's count limit
        "total": 0,
        "latest": None,
    }
    history = history_of(app)
    if history is None:
        return found
    try:
        newest = await history.search(TaskQuery(per_page=1))
        found["history"] = True
        found["total"] = newest.total
        if newest.records:
            record = newest.records[0]
            found["latest"] = f"{record.id}:{record.state}:{record.updated_at_s}"
        for state in OUTCOMES:
            found["states"][state] = (
                await history.search(TaskQuery(state=state, per_page=1))
            ).total
    except AiotqError as exc:
        log.warning("cannot read the task history: %s", exc)
    return found
