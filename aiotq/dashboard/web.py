"""The pieces every route shares: the dashboard's state, the template environment and its
filters, and `render()`, which adds the session's CSRF token and the flash message."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .._version import __version__
from . import data
from .security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    FLASH_COOKIE,
    Guard,
    base_of,
    cookie_path,
    route_path,
    security_headers,
    set_cookie,
)
from .sse import Live

if TYPE_CHECKING:
    from ..app import App

DASH = "\u2013"  # an en dash: "no value"
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


@dataclass
class Dashboard:
    """One mounted dashboard: the app it shows and how it is guarded."""

    app: App
    guard: Guard
    env: jinja2.Environment
    live: Live

    @property
    def read_only(self) -> bool:
        return self.guard.read_only


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


# -- template filters ------------------------------------------------------------------------
def when(epoch_s: float | None) -> Markup:
    """An epoch time as a <time> the page's script shows in the reader's own timezone."""
    if not epoch_s:
        return Markup("&ndash;")
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    shown = moment.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return Markup(f'<time datetime="{escape(iso)}" title="{escape(shown)}">{escape(shown)}</time>')


def ago(epoch_s: float | None, now_s: float | None = None) -> str:
    if not epoch_s:
        return DASH
    delta = (time.time() if now_s is None else now_s) - epoch_s
    future = delta < 0
    text = duration(abs(delta), precise=False)
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: float | None, precise: bool = True) -> str:
    if seconds is None:
        return DASH
    if seconds < 0.001 and precise:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1 and precise:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s" if precise else f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def pretty(value: Any) -> str:
    """A value as indented JSON (repr for what JSON cannot hold); escaped when shown."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def short(value: Any, limit: int = 80) -> str:
    """A value on one line, cut to `limit` characters (table cells)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every page, whatever its name: task arguments are untrusted
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, ago=ago, duration=duration, pretty=pretty, short=short)
    env.globals.update(version=__version__, states=data.STATES, outcomes=data.OUTCOMES)
    return env


async def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """A page: the shared context (base path, read-only, CSRF token, flash), the security
    headers, the CSRF cookie when the session has none yet, the flash cleared once shown."""
    dashboard = dashboard_of(request)
    token, new = dashboard.guard.csrf_of(request)
    flash = dashboard.guard.read_flash(request)
    summary = await dashboard.live.summary()
    here = route_path(request.scope)
    if request.url.query:
        here += "?" + request.url.query
    page = dashboard.env.get_template(template).render(
        {
            "base": base_of(request.scope),
            "read_only": dashboard.read_only,
            "csrf_field": CSRF_FIELD,
            "csrf": token,
            "flash": flash,
            "here": here,
            "nav": template.removesuffix(".html"),
            "app_name": dashboard.app.main,
            "broker": data.broker_label(dashboard.app),
            "summary": summary,
            **context,
        }
    )
    response = HTMLResponse(page, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    if new:
        set_cookie(response, request, CSRF_COOKIE, token)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=cookie_path(request.scope))
    return security_headers(response)


async def error_page(request: Request, status_code: int, title: str, detail: str) -> Response:
    return await render(request, "error.html", {"title": title, "detail": detail}, status_code)


def flash_to(
    response: Response, request: Request, level: str, text: str, link: str | None = None
) -> None:
    """A message for the next page shown (after a form's redirect)."""
    cookie = dashboard_of(request).guard.flash_cookie(level, text, link)
    set_cookie(response, request, FLASH_COOKIE, cookie, max_age=60)
