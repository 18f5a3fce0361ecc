"""The dashboard's Starlette app: its routes, its guard, and serving it (see __init__)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Lifespan

from . import actions, api, pages
from .security import Guard, GuardMiddleware
from .sse import Live, events_endpoint
from .web import STATIC, Dashboard, environment

if TYPE_CHECKING:
    from ..app import App

__all__ = ["asgi", "serve"]


def asgi(
    app: App,
    *,
    auth: str | None = None,
    tokens: Sequence[str] = (),
    read_only: bool = False,
    secret: str | None = None,
) -> Starlette:
    """The dashboard of `app` as an ASGI app, to serve or to mount in FastAPI / Starlette.

    `auth`: "user:password" for HTTP Basic; `tokens`: accepted as `Authorization: Bearer`
    (or as a Basic password); neither: no login (bind to localhost then). `read_only` hides
    every button and refuses every POST. `secret` signs the CSRF and flash cookies: give the
    same one to every process behind one address (default: random per process)."""
    guard = Guard(auth=auth, tokens=tuple(tokens), read_only=read_only,
                  **({"secret": secret.encode()} if secret else {}))  # fmt: skip
    return _build(app, guard)


def _build(app: App, guard: Guard, lifespan: Lifespan[Starlette] | None = None) -> Starlette:
    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/workers", pages.workers_page, name="workers"),
        Route("/tasks", pages.tasks_page, name="tasks"),
        Route("/tasks/{task_id}", pages.task_page, name="task"),
        Route("/queues", pages.queues_page, name="queues"),
        Route("/beat", pages.beat_page, name="beat"),
        Route("/settings", pages.settings_page, name="settings"),
        Route("/metrics", pages.metrics, name="metrics"),
        Route("/healthcheck", pages.healthcheck, name="healthcheck"),
        Route("/events", events_endpoint, name="events"),
        Route("/api/summary", api.summary),
        Route("/api/tasks", api.tasks),
        Route("/api/tasks/bulk", actions.bulk, methods=["POST"]),
        Route("/api/tasks/{task_id}", api.task),
        Route("/api/tasks/{task_id}/{action}", actions.task_action, methods=["POST"]),
        Route("/api/workers", api.workers),
        Route("/api/workers/{hostname}/{action}", actions.worker_action, methods=["POST"]),
        Route("/api/queues", api.queues),
        Route("/api/queues/{name}/{action}", actions.queue_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    site = Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={404: pages.not_found},
        lifespan=lifespan,
    )
    site.state.dashboard = Dashboard(app=app, guard=guard, env=environment(), live=Live(app))
    return site


def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = 5555,
    auth: str | None = None,
    tokens: Sequence[str] = (),
    read_only: bool = False,
) -> None:
    """Run the dashboard with uvicorn until interrupted (open pages' streams are closed
    within a second or two on the way out)."""
    import uvicorn

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.aclose()  # served alone, the app's connections are ours to close

    guard = Guard(auth=auth, tokens=tuple(tokens), read_only=read_only)
    site = _build(app, guard, lifespan)
    config = uvicorn.Config(site, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=2, proxy_headers=False)  # fmt: skip
    uvicorn.Server(config).run()
