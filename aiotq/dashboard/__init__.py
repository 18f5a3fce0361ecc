"""`aiotq dashboard`: the web dashboard (Flower's job), server-rendered with live updates.

    from aiotq.dashboard import asgi
    fastapi_app.mount("/tasks", asgi(tq, auth="admin:secret"))      # inside your app

    aiotq dashboard -A proj.app:tq --port 5555                        # on its own

Pages: overview (throughput and runtimes of the last hour, queue depths), workers (with
remote control), tasks (searchable history, bulk retry / revoke), one task (arguments,
result or traceback, timeline, its canvas as a tree), queues (dead letters, requeue, purge),
beat, settings (secrets masked); `/api/` serves the same as JSON; `/events` is the pages'
live stream (SSE); `/metrics` (Prometheus) and `/healthcheck` need no login.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .site import asgi, serve

__all__ = ["asgi", "serve"]


def __getattr__(name: str) -> Any:
    """Starlette, Jinja2 and uvicorn are imported when the dashboard is used, not by every
    `aiotq` command that registers it."""
    if name in __all__:
        from . import site

        return getattr(site, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
