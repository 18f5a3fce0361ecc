"""The dashboard (aiotq/dashboard/) over httpx's ASGI transport, against a real in-process
worker on a SQLite broker: every page, every action, auth, read-only, CSRF, escaping."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import typer
from starlette.applications import Starlette
from starlette.routing import Mount
from typer.testing import CliRunner

from aiotq import App
from aiotq.beat import LEADER_LEASE, last_run_key
from aiotq.dashboard import asgi
from aiotq.dashboard.cli import dashboard_command
from aiotq.dashboard.data import masked, parse_time
from aiotq.history import HistoryStore, TaskRecord
from aiotq.testing import run_worker

HOST = "w1@dash"
SCRIPT = "<script>alert(1)</script>"


def build(tmp_path: Path, **settings: Any) -> App:
    app = App("dash", broker=f"sqlite:///{tmp_path}/d.db", **settings)

    @app.task(name="dash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="dash.fail")
    async def fail(*args: object) -> None:
        raise ValueError(f"failed on purpose with {list(args)}")

    @app.task(name="dash.sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="dash.echo")
    async def echo(*args: object, **kwargs: object) -> object:
        return [list(args), kwargs]

    @app.task(name="dash.parent")
    async def parent(n: int) -> int:
        for i in range(n):
            await add.send(i, i)
        return n

    @app.periodic(every=60, name="every-minute")
    async def tick() -> None:
        return None

    return app


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    app = build(tmp_path)
    async with run_worker(app, hostname=HOST, queues=["default", "extra"]):
        yield app
    await app.aclose()


def client(site: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=site), base_url="http://dash", headers=headers
    )


def history(app: App) -> HistoryStore:
    try:
        store = app.history
    except AttributeError:
        store = None
    if store is None:
        pytest.skip("history not wired yet")
    return store


async def until(condition: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll an async condition every 0.05 s until it is truthy (its value) or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def recorded(app: App, task_id: str, *states: str) -> TaskRecord:
    """The task's history record once it is in one of `states` (any state if none given)."""
    store = history(app)

    async def check() -> TaskRecord | None:
        record = await store.get(task_id)
        return record if record is not None and (not states or record.state in states) else None

    found: TaskRecord = await until(check)
    return found


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def form_post(c: httpx.AsyncClient, page: str, path: str, **fields: Any) -> httpx.Response:
    """What a browser does: load the page (session cookie and token), submit its form."""
    html = (await c.get(page)).text
    body = {"csrf": csrf_of(html), "next": page, **fields}
    return await c.post(path, data=body)


async def flash_after(c: httpx.AsyncClient, response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    page = await c.get(response.headers["location"])
    match = re.search(r'<div class="flash (ok|bad)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message after the redirect"
    return f"{match.group(1)}: {match.group(2)}"


# -- pages -----------------------------------------------------------------------------------
async def test_every_page_renders_against_a_real_worker(app: App) -> None:
    history(app)
    ok = await app.tasks["dash.add"].send(2, 3)
    assert await ok.get(timeout=10) == 5
    bad = await app.tasks["dash.fail"].send(7)
    await recorded(app, ok.id, "SUCCESS")
    await recorded(app, bad.id, "FAILURE")
    async with client(asgi(app)) as c:
        overview = await c.get("/")
        assert overview.status_code == 200
        assert "Tasks per minute" in overview.text and "<svg" in overview.text
        assert 'data-queue="default"' in overview.text
        assert re.search(r's-success-text">\s*1<', overview.text)
        workers = await c.get("/workers")
        assert HOST in workers.text and "Shut down" in workers.text
        tasks = await c.get("/tasks")
        assert ok.id in tasks.text and bad.id in tasks.text
        detail = await c.get(f"/tasks/{bad.id}")
        assert "ValueError" in detail.text and "Traceback" in detail.text
        assert "task-failed" in detail.text  # the timeline
        queues = await c.get("/queues")
        assert 'id="queue-default"' in queues.text and 'id="queue-extra"' in queues.text
        beat = await c.get("/beat")
        assert "every-minute" in beat.text and "every(60s)" in beat.text
        assert "none (no beat runs)" in beat.text and "never" in beat.text
        settings = await c.get("/settings")
        assert "task_default_queue" in settings.text
        summary = (await c.get("/api/summary")).json()
        assert summary["workers_up"] == 1 and summary["states"]["FAILURE"] == 1
        health = await c.get("/healthcheck")
        assert health.text == "OK"
        metrics = await c.get("/metrics")
        assert (
            metrics.status_code == 200 and f'celery_worker_up{{hostname="{HOST}"}}' in metrics.text
        )
        unknown = await c.get("/tasks/no-such-task")  # queued, or a wrong id: PENDING (Celery's)
        assert unknown.status_code == 200 and 'id="task-unknown"' in unknown.text
        assert (await c.get("/nowhere")).status_code == 404
        api_missing = await c.get("/api/nowhere")
        assert api_missing.status_code == 404 and api_missing.json()["ok"] is False
        assert "Content-Security-Policy" in overview.headers
        assert overview.headers["x-frame-options"] == "DENY"


async def test_workers_page_lists_what_each_worker_runs(app: App) -> None:
    running = await app.tasks["dash.sleep"].send(30)
    async with client(asgi(app)) as c:

        async def shown() -> bool:
            return f'data-active="{running.id}"' in (await c.get("/workers")).text

        await until(shown)
        api = (await c.get("/api/workers")).json()
        assert api["presence"] is True
        (row,) = api["workers"]
        assert row["hostname"] == HOST and row["queue_list"] == ["default", "extra"]
        assert [t["id"] for t in row["active"]] == [running.id]
    await app.control.revoke(running.id, terminate=True)


async def test_tasks_filters_and_paging(app: App) -> None:
    history(app)
    adds = [await app.tasks["dash.add"].send(i, 100) for i in range(5)]
    fail = await app.tasks["dash.fail"].send("needle")
    for result in adds:
        await recorded(app, result.id, "SUCCESS")
    await recorded(app, fail.id, "FAILURE")
    async with client(asgi(app)) as c:

        async def ids(**params: Any) -> set[str]:
            found = (await c.get("/api/tasks", params=params)).json()
            return {t["id"] for t in found["tasks"]}

        every = {r.id for r in adds} | {fail.id}
        assert await ids() == every
        assert await ids(state="FAILURE") == {fail.id}
        assert await ids(state="success") == {r.id for r in adds}  # any case
        assert await ids(name="dash.fail") == {fail.id}
        assert await ids(q="needle") == {fail.id}
        assert await ids(worker=HOST) == every
        assert await ids(worker="nobody@else") == set()
        assert await ids(queue="default") == every
        assert await ids(since="1h") == every
        assert await ids(until="1h") == set()
        assert await ids(since=str(time.time() + 60)) == set()
        page = (await c.get("/api/tasks", params={"per_page": 2, "page": 3})).json()
        assert page["total"] == 6 and page["page"] == 3 and len(page["tasks"]) == 2
        bad = await c.get("/api/tasks", params={"since": "yesterday-ish"})
        assert bad.status_code == 400 and "cannot read the time" in bad.json()["error"]
        assert (await c.get("/api/tasks", params={"state": "NOPE"})).status_code == 400

        html = (await c.get("/tasks", params={"state": "FAILURE"})).text
        assert fail.id in html and adds[0].id not in html
        assert 'id="retry-matching"' in html and "Retry all 1 matching" in html
        html = (await c.get("/tasks", params={"per_page": 2})).text
        assert "page 1 of 3" in html and "page=2" in html
        html = (await c.get("/tasks", params={"since": "nonsense"})).text
        assert 'id="filter-error"' in html


async def test_task_detail_shows_values_timeline_and_family(app: App) -> None:
    history(app)
    parent = await app.tasks["dash.parent"].send(2)
    assert await parent.get(timeout=10) == 2
    record = await recorded(app, parent.id, "SUCCESS")
    store = history(app)

    async def children() -> list[TaskRecord]:
        page = await store.search(_query(root_id=record.root_id))
        kids = [r for r in page.records if r.parent_id == parent.id and r.state == "SUCCESS"]
        return kids if len(kids) == 2 else []

    kids = await until(children)
    echo = await app.tasks["dash.echo"].send(1, "two", key={"deep": [3]})
    await echo.get(timeout=10)
    await recorded(app, echo.id, "SUCCESS")
    async with client(asgi(app)) as c:
        html = (await c.get(f"/tasks/{parent.id}")).text
        for kid in kids:
            assert f"/tasks/{kid.id}" in html  # the tree
        assert 'class="here"' in html
        kid_html = (await c.get(f"/tasks/{kids[0].id}")).text
        assert f"/tasks/{parent.id}" in kid_html  # parent and root links
        api = (await c.get(f"/api/tasks/{parent.id}")).json()
        assert sorted(api["children"]) == sorted(k.id for k in kids)
        assert api["state"] == "SUCCESS" and api["result"] == 2 and api["retry_blocked"] is None
        html = (await c.get(f"/tasks/{echo.id}")).text
        assert "&#34;deep&#34;" in html or "&quot;deep&quot;" in html  # kwargs as JSON
        assert "task-received" in html and "task-succeeded" in html
        assert (await c.get("/api/tasks/nope")).status_code == 404


def _query(**fields: Any) -> Any:
    from aiotq.history import TaskQuery

    return TaskQuery(per_page=100, **fields)


# -- actions -----------------------------------------------------------------------------------
async def test_retry_from_the_page_and_the_api(app: App) -> None:
    history(app)
    original = await app.tasks["dash.add"].send(20, 22)
    await recorded(app, original.id, "SUCCESS")
    async with client(asgi(app)) as c:
        page = f"/tasks/{original.id}"
        response = await form_post(c, page, f"/api/tasks/{original.id}/retry")
        assert response.headers["location"] == page
        flash = await flash_after(c, response)
        match = re.search(r"sent again as ([0-9a-f-]{36})", flash)
        assert match and f'href="/tasks/{match.group(1)}"' in flash  # a link to the new task
        assert await app.AsyncResult(match.group(1)).get(timeout=10) == 42
        api = await c.post(f"/api/tasks/{original.id}/retry", json={})
        assert api.status_code == 200 and api.json()["ok"] is True
        new_id = api.json()["sent"][original.id]
        assert await app.AsyncResult(new_id).get(timeout=10) == 42
        missing = await c.post("/api/tasks/nope/retry", json={})
        assert missing.status_code == 404
        assert (await c.post(f"/api/tasks/{original.id}/explode", json={})).status_code == 404


async def test_retry_is_disabled_when_the_arguments_were_cut(app: App) -> None:
    history(app)
    big = await app.tasks["dash.echo"].send("x" * 5000)  # past event_value_max: a cut repr
    await big.get(timeout=10)
    record = await recorded(app, big.id, "SUCCESS")
    assert isinstance(record.args, str)
    async with client(asgi(app)) as c:
        html = (await c.get(f"/tasks/{big.id}")).text
        assert re.search(r'<button type="submit"[^>]*id="retry" disabled', html)
        assert "too large to keep" in html
        api = await c.post(f"/api/tasks/{big.id}/retry", json={})
        assert api.status_code == 409 and "too large" in api.json()["error"]


async def test_terminate_a_running_task_and_revoke_a_waiting_one(app: App) -> None:
    history(app)
    running = await app.tasks["dash.sleep"].send(30)
    later = await app.asend_task("dash.add", (1, 1), countdown=30)
    async with client(asgi(app)) as c:

        async def shown_running() -> bool:
            html = (await c.get(f"/tasks/{running.id}")).text
            return 'id="task-held"' in html and "Running in" in html

        await until(shown_running)  # not in the history before its run ends: the worker says
        listed = (await c.get("/tasks")).text
        assert f'data-running="{running.id}"' in listed
        api = (await c.get(f"/api/tasks/{running.id}")).json()
        assert api["held"] is True and api["state"] == "STARTED" and api["worker"] == HOST
        response = await form_post(c, f"/tasks/{running.id}", f"/api/tasks/{running.id}/terminate")
        assert "terminated" in await flash_after(c, response)
        await recorded(app, running.id, "REVOKED")
        html = (await c.get(f"/tasks/{running.id}")).text
        assert "s-revoked" in html
        revoked = await c.post(f"/api/tasks/{later.id}/revoke", json={})
        assert revoked.json() == {
            "ok": True, "message": f"revoked {later.id}", "revoked": [later.id], "terminate": False,
        }  # fmt: skip

        async def stored_revoked() -> bool:
            record = await app.AsyncResult(later.id).refresh()
            return record is not None and record.state == "REVOKED"

        await until(stored_revoked)
        html = (await c.get(f"/tasks/{later.id}")).text  # never ran: the backend knows it
        assert "s-revoked" in html and "only the result backend knows it" in html


async def test_bulk_retry_and_revoke_by_ids_and_by_filter(app: App) -> None:
    history(app)
    fails = [await app.tasks["dash.fail"].send(i) for i in range(3)]
    for result in fails:
        await recorded(app, result.id, "FAILURE")
    store = history(app)
    async with client(asgi(app)) as c:
        chosen = [fails[0].id, fails[1].id]
        response = await form_post(c, "/tasks", "/api/tasks/bulk", action="retry", ids=chosen)
        assert "sent 2 task(s) again" in await flash_after(c, response)

        async def failures(count: int) -> bool:
            page = await store.search(_query(state="FAILURE", name="dash.fail"))
            return page.total == count

        await until(lambda: failures(5))  # two more failures: the retries ran
        by_filter = await c.post(
            "/api/tasks/bulk",
            json={"action": "retry", "filter": {"state": "FAILURE", "name": "dash.fail"}},
        )
        assert by_filter.status_code == 200 and len(by_filter.json()["sent"]) == 5
        await until(lambda: failures(10))
        html = (await c.get("/tasks", params={"state": "FAILURE"})).text
        response = await form_post(
            c, "/tasks?state=FAILURE", "/api/tasks/bulk",
            action="revoke", scope="filter", state="FAILURE", name="dash.fail",
        )  # fmt: skip
        assert "revoked 10 task(s)" in await flash_after(c, response)
        assert 'id="revoke-matching"' in html
        waiting = [await app.asend_task("dash.add", (i, i), countdown=60) for i in range(2)]
        revoked = await c.post(
            "/api/tasks/bulk", json={"action": "revoke", "ids": [w.id for w in waiting]}
        )
        assert revoked.json()["revoked"] == [w.id for w in waiting]
        for waiter in waiting:
            record = await app.AsyncResult(waiter.id).refresh()
            assert record is not None and record.state == "REVOKED"
        nothing = await c.post("/api/tasks/bulk", json={"action": "retry", "ids": []})
        assert nothing.status_code == 400
        unknown = await c.post("/api/tasks/bulk", json={"action": "delete", "ids": ["x"]})
        assert unknown.status_code == 400


async def test_worker_remote_control(app: App) -> None:
    async with client(asgi(app)) as c:
        limited = await c.post(
            f"/api/workers/{HOST}/rate_limit", json={"task_name": "dash.add", "rate_limit": "10/s"}
        )
        assert limited.status_code == 200, limited.text
        assert limited.json()["replies"] == {HOST: {"ok": "new rate limit set successfully"}}
        bad_rate = await c.post(
            f"/api/workers/{HOST}/rate_limit", json={"task_name": "dash.add", "rate_limit": "fast"}
        )
        assert bad_rate.status_code == 400
        unknown_task = await c.post(
            f"/api/workers/{HOST}/rate_limit", json={"task_name": "nope", "rate_limit": "1/s"}
        )
        assert unknown_task.status_code == 409 and "unknown task" in unknown_task.json()["error"]

        response = await form_post(c, "/workers", f"/api/workers/{HOST}/add_consumer", queue="more")
        assert "add consumer more" in await flash_after(c, response)

        async def consuming(queue: str, wanted: bool) -> bool:
            rows = (await c.get("/api/workers")).json()["workers"]
            return bool(rows) and (queue in rows[0]["queue_list"]) is wanted

        await until(lambda: consuming("more", True))
        cancelled = await c.post(f"/api/workers/{HOST}/cancel_consumer", json={"queue": "more"})
        assert cancelled.status_code == 200
        await until(lambda: consuming("more", False))
        assert (await c.post(f"/api/workers/{HOST}/add_consumer", json={})).status_code == 400
        nobody = await c.post("/api/workers/nobody@nowhere/shutdown", json={})
        assert nobody.status_code == 504 and "no reply" in nobody.json()["error"]

        response = await form_post(c, "/workers", f"/api/workers/{HOST}/shutdown")
        assert "shutting down" in await flash_after(c, response)

        async def gone() -> bool:
            return (await c.get("/api/workers")).json()["workers"] == []

        await until(gone)


async def test_queue_dead_letters_requeue_and_purge(app: App) -> None:
    for _ in range(2):  # no worker knows this task: dead-lettered on arrival
        await app.asend_task("dash.unknown", ("<b>arg</b>",), queue="extra")
    async with client(asgi(app)) as c:

        async def stats() -> dict[str, Any]:
            rows = (await c.get("/api/queues")).json()["queues"]
            return {row["name"]: row for row in rows}

        async def dead() -> bool:
            return (await stats())["extra"]["dead"] == 2

        await until(dead)
        html = (await c.get("/queues")).text
        assert "unknown task" in html and "dash.unknown" in html
        assert "&lt;b&gt;arg&lt;/b&gt;" in html and "<b>arg</b>" not in html
        assert "Requeue all 2 dead letters" in html
        # stop consuming it, so what is requeued stays ready
        await c.post(f"/api/workers/{HOST}/cancel_consumer", json={"queue": "extra"})
        response = await form_post(c, "/queues", "/api/queues/extra/requeue")
        assert "requeued 2 dead letter(s) to extra" in await flash_after(c, response)
        after = (await stats())["extra"]
        assert after["dead"] == 0 and after["ready"] == 2
        purged = await c.post("/api/queues/extra/purge", json={})
        assert purged.json()["purged"] == 2
        assert (await stats())["extra"]["ready"] == 0
        unknown = await c.post("/api/queues/not-a-queue/purge", json={})
        assert unknown.status_code == 404
        assert (await c.post("/api/queues/extra/explode", json={})).status_code == 404


# -- security ----------------------------------------------------------------------------------
async def test_basic_auth_and_bearer_tokens(app: App) -> None:
    site = asgi(app, auth="admin:s3cret", tokens=["tok-1", "tok-2"])
    async with client(site) as c:
        refused = await c.get("/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Basic"
        )
        assert (await c.get("/", auth=("admin", "wrong"))).status_code == 401
        assert (await c.get("/", auth=("root", "s3cret"))).status_code == 401
        assert (
            await c.get("/api/tasks", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await c.get("/", headers={"Authorization": "Basic !!notbase64"})).status_code == 401
        assert (await c.get("/", auth=("admin", "s3cret"))).status_code == 200
        assert (
            await c.get("/", auth=("anyone", "tok-2"))
        ).status_code == 200  # a token as password
        bearer = {"Authorization": "Bearer tok-1"}
        assert (await c.get("/api/workers", headers=bearer)).status_code == 200
        assert (await c.get("/events", headers={"Authorization": "Bearer x"})).status_code == 401
        # probes and scrapers carry no credentials
        assert (await c.get("/healthcheck")).text == "OK"
        assert (await c.get("/metrics")).status_code == 200
        # a bearer POST is no forgery: no CSRF token needed, even as a form
        limited = await c.post(
            f"/api/workers/{HOST}/rate_limit", headers=bearer,
            data={"task_name": "dash.add", "rate_limit": "5/s"},
        )  # fmt: skip
        assert limited.status_code == 303
        # a Basic-authenticated form POST is: the browser sends those credentials itself
        forged = await c.post(
            f"/api/workers/{HOST}/shutdown", auth=("admin", "s3cret"), data={"next": "/"}
        )
        assert forged.status_code == 403
    with pytest.raises(ValueError, match="user:password"):
        asgi(app, auth="no-colon")


async def test_read_only_hides_buttons_and_refuses_every_post(app: App) -> None:
    history(app)
    done = await app.tasks["dash.add"].send(1, 2)
    await recorded(app, done.id, "SUCCESS")
    async with client(asgi(app, read_only=True)) as c:
        for page in ("/", "/workers", "/tasks", f"/tasks/{done.id}", "/queues", "/beat"):
            html = (await c.get(page)).text
            assert 'method="post"' not in html, page
            assert "read-only" in html
        token = (await c.get("/tasks")).cookies.get("aiotq_csrf") or c.cookies.get("aiotq_csrf")
        assert token is not None
        for path in (
            f"/api/tasks/{done.id}/retry", f"/api/tasks/{done.id}/revoke", "/api/tasks/bulk",
            f"/api/workers/{HOST}/shutdown", f"/api/workers/{HOST}/rate_limit",
            "/api/queues/default/purge", "/api/queues/default/requeue",
        ):  # fmt: skip
            assert (
                await c.post(path, json={"action": "retry", "ids": [done.id]})
            ).status_code == 403
            form = await c.post(path, data={"csrf": token, "next": "/"})
            assert form.status_code == 403, path
        assert (await c.put("/api/tasks/bulk")).status_code == 403
    assert [p.hostname for p in await app.control.workers() or []] == [HOST]  # still up


async def test_forms_without_the_session_token_are_refused(app: App) -> None:
    history(app)
    done = await app.tasks["dash.add"].send(1, 2)
    await recorded(app, done.id, "SUCCESS")
    store = history(app)
    before = (await store.search(_query())).total
    site = asgi(app)
    path = f"/api/tasks/{done.id}/retry"
    async with client(site) as c:
        page = await c.get("/tasks")
        token = csrf_of(page.text)
        assert (
            "aiotq_csrf" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
        )
        assert "samesite=strict" in page.headers["set-cookie"].lower()
        missing = await c.post(path, data={"next": "/tasks"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = await c.post(path, data={"csrf": token[:-2] + "xx", "next": "/tasks"})
        assert wrong.status_code == 403
        cross = await c.post(
            path, json={}, headers={"Sec-Fetch-Site": "cross-site"}
        )  # a JSON body is no forgery, unless the browser says another site sent it
        assert cross.status_code == 403
        wrong_type = await c.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
    async with client(asgi(app)) as other:  # another dashboard's token (another secret)
        other.cookies.set("aiotq_csrf", token)
        assert (await other.post(path, data={"csrf": token, "next": "/"})).status_code == 403
    async with client(site) as c:  # a new session: a token of its own, cookie and field
        c.cookies.set("aiotq_csrf", token)
        fresh = csrf_of((await c.get("/tasks")).text)
        assert (await c.post(path, data={"csrf": fresh})).status_code == 303
    assert (await store.search(_query())).total <= before + 1  # only the last one retried
    async with client(site) as c:
        evil = await c.post(path, data={"csrf": token, "next": "//evil.example/"})
        assert evil.status_code == 403  # no cookie in this client: refused before redirecting
        c.cookies.set("aiotq_csrf", token)
        redirected = await c.post(path, data={"csrf": token, "next": "//evil.example/"})
        assert redirected.headers["location"] == "/"


async def test_task_values_are_shown_as_text(app: App) -> None:
    history(app)
    result = await app.tasks["dash.fail"].send(SCRIPT)
    await recorded(app, result.id, "FAILURE")
    async with client(asgi(app)) as c:
        for page in ("/tasks", f"/tasks/{result.id}", f"/tasks?q={SCRIPT}"):
            html = (await c.get(page)).text
            assert SCRIPT not in html, page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page
        api = (await c.get(f"/api/tasks/{result.id}")).json()
        assert api["args"] == [SCRIPT]  # JSON keeps the value; the pages escape it


async def test_settings_never_show_secrets(tmp_path: Path) -> None:
    app = App("dash", broker="memory://", backend="memory://user:hunter2@somewhere/0")
    app.conf.update(beat_schedule={"x": {"task": "t", "schedule": 5, "options": {"api_key": "k1"}}})
    async with client(asgi(app)) as c:
        html = (await c.get("/settings")).text
        assert "hunter2" not in html and "memory://user:**@somewhere/0" in html
        assert "k1" not in html
    assert (
        masked("broker_url", "redis://:pw@h:6379/0?password=pw2")
        == "redis://:**@h:6379/0?password=**"
    )
    assert masked("redis_password", "x") == "********"
    assert masked("items", [{"token": "t"}]) == [{"token": "********"}]


async def test_beat_shows_the_last_and_next_run(app: App) -> None:
    coordinator = app.coordinator
    assert coordinator is not None
    last = time.time() - 30
    await coordinator.put(last_run_key("every-minute"), msgspec.json.encode(last), 60)
    assert await coordinator.lease(LEADER_LEASE, "beat@web-1:4242", 10)
    async with client(asgi(app)) as c:
        html = (await c.get("/beat")).text
    assert "beat@web-1:4242" in html  # who leads now
    assert "30s ago" in html or "31s ago" in html
    assert "in 29s" in html or "in 30s" in html or "in 28s" in html


async def test_beat_page_names_a_bad_schedule(tmp_path: Path) -> None:
    app = build(tmp_path, beat_schedule={"broken": {"task": "dash.add"}})
    async with client(asgi(app)) as c:
        html = (await c.get("/beat")).text
    assert 'id="beat-error"' in html and "needs &#39;task&#39; and &#39;schedule&#39;" in html
    await app.aclose()


async def test_history_off_and_metrics_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build(tmp_path, history_max_tasks=0)
    async with run_worker(app, hostname=HOST), client(asgi(app)) as c:
        assert "keeps no task history" in (await c.get("/tasks")).text
        assert "keeps no task history" in (await c.get("/")).text
        assert (await c.get("/api/tasks")).status_code == 404
        monkeypatch.setitem(sys.modules, "aiotq.metrics", None)  # as if it did not exist
        missing = await c.get("/metrics")
        assert missing.status_code == 404 and "metrics are not available" in missing.text
    await app.aclose()


async def test_mounted_under_a_prefix(app: App) -> None:
    history(app)
    done = await app.tasks["dash.add"].send(2, 2)
    await recorded(app, done.id, "SUCCESS")
    outer = Starlette(routes=[Mount("/ops", app=asgi(app))])
    async with client(outer) as c:
        first = await c.get("/ops/tasks")
        html = first.text
        assert "Path=/ops" in first.headers["set-cookie"]
        assert 'href="/ops/static/dashboard.css' in html and f'href="/ops/tasks/{done.id}"' in html
        assert (await c.get("/ops/static/dashboard.js")).status_code == 200
        page = await c.get(f"/ops/tasks/{done.id}")
        response = await c.post(
            f"/ops/api/tasks/{done.id}/retry",
            data={"csrf": csrf_of(page.text), "next": f"/tasks/{done.id}"},
        )
        assert response.headers["location"] == f"/ops/tasks/{done.id}"
        assert "sent again as" in await flash_after(c, response)


# -- live updates -------------------------------------------------------------------------------
async def read_stream(site: Any, wanted: Callable[[str], bool], timeout: float = 10.0) -> str:
    """GET /events as a browser would, until `wanted(text so far)`, then hang up."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": "/events", "raw_path": b"/events",
        "root_path": "", "query_string": b"", "headers": [(b"host", b"dash")],
        "client": ("127.0.0.1", 5000), "server": ("dash", 80),
    }  # fmt: skip
    hang_up = asyncio.Event()
    received: list[str] = []
    started: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            received.append(message.get("body", b"").decode())
            if wanted("".join(received)):
                hang_up.set()

    await asyncio.wait_for(site(scope, receive, send), timeout)
    assert started["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in started["headers"]
    return "".join(received)


def frames(text: str, kind: str) -> list[Any]:
    return [
        json.loads(block.split("data: ", 1)[1])
        for block in text.split("\n\n")
        if block.startswith(f"event: {kind}\n")
    ]


async def test_live_stream_pushes_summaries_and_events(tmp_path: Path) -> None:
    app = build(tmp_path)
    async with run_worker(app, hostname=HOST, send_events=True):
        site = asgi(app)
        text = await read_stream(site, lambda t: "event: summary" in t)
        (summary,) = frames(text, "summary")
        assert summary["workers_up"] == 1 and summary["presence"] is True
        assert text.startswith("retry: ")

        async def later() -> None:
            await asyncio.sleep(0.3)
            await app.tasks["dash.add"].send(1, 1)

        sending = asyncio.create_task(later())
        text = await read_stream(site, lambda t: "task-succeeded" in t)
        await sending
        events = [e for batch in frames(text, "events") for e in batch]
        assert {"task-received", "task-succeeded"} <= {e["type"] for e in events}
        assert all("args" not in e for e in events)  # pages reload values from the server
        text = await read_stream(site, lambda t: t.count("event: summary") >= 2)
        assert frames(text, "summary")[-1]["states"].get("SUCCESS") == 1
    await app.aclose()


# -- pieces ----------------------------------------------------------------------------------------
def test_time_filters() -> None:
    assert parse_time("15m", now_s=1000.0) == 100.0
    assert parse_time("2h ago", now_s=10_000.0) == 2800.0
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2024-05-01T10:00") == 1714557600.0  # naive is UTC
    assert parse_time("2024-05-01T12:00+02:00") == 1714557600.0
    assert parse_time("") is None


def test_cli_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("aiotq.dashboard.serve", lambda app, **kw: calls.append({"app": app, **kw}))
    cli = typer.Typer()
    cli.command("dashboard")(dashboard_command)
    cli.command("other")(lambda: None)
    runner = CliRunner()
    help_text = runner.invoke(cli, ["dashboard", "--help"]).output
    for option in ("--app", "--host", "--port", "--auth", "--token", "--read-only"):
        assert option in help_text
    result = runner.invoke(
        cli,
        ["dashboard", "-A", "tests.apps:tq", "--port", "5600", "--auth", "a:b", "--token", "t1",
         "--token", "t2", "--read-only"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["port"] == 5600 and call["host"] == "127.0.0.1" and call["auth"] == "a:b"
    assert call["tokens"] == ("t1", "t2") and call["read_only"] is True
    bad = runner.invoke(cli, ["dashboard", "-A", "tests.apps:tq", "--auth", "nocolon"])
    assert bad.exit_code == 2
