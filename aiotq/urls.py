"""URL helpers: choosing an implementation by scheme, and masking passwords."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigurationError

T = TypeVar("T")


def mask_password(url: str) -> str:
    """`redis://:secret@h:6379/0` -> `redis://:**@h:6379/0`; never log a URL without this.

    Never raises: it runs in the error messages about bad URLs (a port that is no number)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]  # as written: `parts.port` raises on a bad port
    return urlunsplit(parts._replace(netloc=f"{user}:**@{host}"))


def check_port(url: str, what: str) -> int | None:
    """A port that is no number (or out of range) fails here, before any connection."""
    try:
        return urlsplit(url).port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in {what} URL {mask_password(url)!r}: {exc}") from None


def scheme_of(url: str) -> str:
    if "://" not in url:
        raise ConfigurationError(
            f"{mask_password(url)!r} is not a URL: expected scheme://..., e.g. redis://localhost:6379/0"
        )
    return url.split("://", 1)[0].lower()


def choose(url: str, table: Mapping[str, Callable[..., T]], what: str, *args: object) -> T:
    """Build the implementation registered for the URL's scheme, with 'did you mean' on a typo."""
    scheme = scheme_of(url)
    check_port(url, what)
    factory = table.get(scheme)
    if factory is None:
        close = difflib.get_close_matches(scheme, list(table), n=1)
        hint = f"; did you mean {close[0]}://?" if close else ""
        raise ConfigurationError(
            f"unknown {what} scheme {scheme!r} in {mask_password(url)!r}{hint} "
            f"(known: {', '.join(sorted(table))})"
        )
    return factory(url, *args)
