"""Who may use the dashboard, and which POSTs really come from its own pages.

- Authentication: HTTP Basic (`auth="user:pass"`) and bearer tokens, checked in one ASGI
  middleware in front of everything but `/healthcheck` and `/metrics` (probes and scrapers
  carry no credentials). A token also works as a Basic password, so a browser can log in
  to a token-only dashboard.
- Read-only: every method but GET/HEAD is refused with 403, whatever the route.
- CSRF: a browser sends Basic credentials (and cookies) by itself, so an HTML form POST must
  carry the per-session token: a signed cookie whose value the page repeats in a hidden
  field. Requests no other site can forge are exempt: bearer-authenticated ones (a browser
  never adds that header) and `application/json` bodies (a cross-site JSON POST needs a CORS
  preflight, which this app never grants). `Sec-Fetch-Site: cross-site` is refused outright.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/healthcheck", "/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
CSRF_COOKIE = "aiotq_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
FLASH_COOKIE = "aiotq_flash"
AUTH_KEY = "aiotq.auth"  # scope key: how the request authenticated ("basic", "bearer", "none")


@dataclass
class Guard:
    """The dashboard's security settings, and the checks made with them."""

    auth: str | None = None
    tokens: Sequence[str] = ()
    read_only: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        if self.auth is not None and ":" not in self.auth:
            raise ValueError("auth must be 'user:password'")
        self.tokens = tuple(t for t in self.tokens if t)

    @property
    def open(self) -> bool:
        return self.auth is None and not self.tokens

    def authenticate(self, authorization: str | None) -> str | None:
        """ "basic", "bearer" or "none" (no auth configured); None when refused."""
        if self.open:
            return "none"
        if not authorization:
            return None
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return "bearer" if self._token_ok(credentials.strip()) else None
        if scheme != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        if self.auth is not None:
            want_user, _, want_password = self.auth.partition(":")
            user_ok = hmac.compare_digest(user.encode(), want_user.encode())
            if user_ok & hmac.compare_digest(password.encode(), want_password.encode()):
                return "basic"
        return "basic" if self._token_ok(password) else None

    def _token_ok(self, given: str) -> bool:
        found = False
        for token in self.tokens:  # no early exit: every token is compared
            found |= hmac.compare_digest(given.encode(), token.encode())
        return found

    def challenge(self) -> str:
        return 'Basic realm="aiotq dashboard"' if self.auth or self.tokens else ""

    # -- signing (CSRF tokens, flash messages) --------------------------------------------
    def sign(self, value: str) -> str:
        digest = hmac.new(self.secret, value.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def signed(self, value: str) -> str:
        return f"{value}.{self.sign(value)}"

    def unsigned(self, token: str | None) -> str | None:
        """The value of a signed token, or None when it is not one of ours."""
        if not token or "." not in token:
            return None
        value, _, signature = token.rpartition(".")
        return value if hmac.compare_digest(self.sign(value), signature) else None

    def new_csrf(self) -> str:
        return self.signed(secrets.token_urlsafe(18))

    def csrf_of(self, request: Request) -> tuple[str, bool]:
        """The session's CSRF token and whether it is new (then set it as the cookie)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        if cookie and self.unsigned(cookie) is not None:
            return cookie, False
        return self.new_csrf(), True

    def csrf_ok(self, request: Request, given: str | None) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not given or self.unsigned(cookie) is None:
            return False
        return hmac.compare_digest(cookie.encode(), given.encode())

    # -- flash messages ---------------------------------------------------------------------
    def flash_cookie(self, level: str, text: str, link: str | None = None) -> str:
        raw = json.dumps([level, text[:500], link]).encode()
        return self.signed(base64.urlsafe_b64encode(raw).decode().rstrip("="))

    def read_flash(self, request: Request) -> Flash | None:
        value = self.unsigned(request.cookies.get(FLASH_COOKIE))
        if value is None:
            return None
        try:
            level, text, link = json.loads(
                base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            )
        except (ValueError, TypeError, binascii.Error):
            return None
        return Flash(str(level), str(text), link if isinstance(link, str) and local(link) else None)


@dataclass(frozen=True)
class Flash:
    """A message shown once on the next page (after a form's redirect)."""

    level: str  # "ok" or "bad"
    text: str
    link: str | None = None  # a dashboard path, e.g. the task a retry made


def local(path: str) -> bool:
    """A path inside this dashboard (a redirect target no one can point elsewhere)."""
    return path.startswith("/") and not path.startswith("//") and "\\" not in path


def route_path(scope: Scope) -> str:
    """The path inside the dashboard, wherever it is mounted (as Starlette's routing)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def base_of(scope: Scope) -> str:
    """The dashboard's own URL prefix ("" at the root, "/dash" mounted there)."""
    root: str = scope.get("root_path", "")
    return root.rstrip("/")


class GuardMiddleware:
    """Authentication and read-only, before any route runs (pure ASGI: streams pass)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        how = self.guard.authenticate(headers.get("authorization"))
        if how is None and path not in PUBLIC_PATHS:
            # a page's own fetch() gets no challenge: a browser would pop a login dialog
            # over the page for a background refresh; navigations and other clients do
            fetch_mode = headers.get("sec-fetch-mode", "navigate")
            challenge = self.guard.challenge() if fetch_mode == "navigate" else ""
            response = Response(
                "401 Unauthorized: this dashboard needs a login or a bearer token\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": challenge} if challenge else None,
            )
            await response(scope, receive, send)
            return
        scope[AUTH_KEY] = how or "none"
        if self.guard.read_only and scope["method"] not in SAFE_METHODS:
            response = _refusal(403, "this dashboard is read-only", headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(status: int, message: str, headers: dict[str, str]) -> Response:
    if "application/json" in headers.get("accept", "") or "json" in headers.get("content-type", ""):
        body = json.dumps({"ok": False, "error": message})
        return Response(body, status_code=status, media_type="application/json")
    return Response(f"{status}: {message}\n", status_code=status, media_type="text/plain")


def post_refusal(guard: Guard, request: Request, form_token: str | None) -> str | None:
    """Why this POST is refused as a possible forgery, or None when it may go on."""
    if request.scope.get(AUTH_KEY) == "bearer":
        return None
    if request.headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused"
    if media_type(request) == "application/json":
        return None
    if guard.csrf_ok(request, form_token or request.headers.get(CSRF_HEADER)):
        return None
    return "missing or wrong CSRF token: reload the page and try again"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def security_headers(response: Response) -> Response:
    """No framing, no sniffing, scripts and styles from this app only (the pages have no
    inline script or style: a task argument cannot run even if escaping failed)."""
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def cookie_path(scope: Scope) -> str:
    return base_of(scope) or "/"


def set_cookie(response: Response, request: Request, name: str, value: str, **kw: Any) -> None:
    response.set_cookie(
        name, value, path=cookie_path(request.scope), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", **kw,
    )  # fmt: skip
