"""URL helpers: choosing an implementation by scheme, masking passwords, and reading
Celery's (kombu's) URLs the way Celery does: `amqp://` alone is RabbitMQ on localhost,
`pyamqp://` is `amqp://`, `rediss://...?ssl_cert_reqs=CERT_REQUIRED` is redis-py's
`required`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

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


# kombu's names for its RabbitMQ transports, all read as aiotq's amqp:// broker
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def amqp_url(url: str) -> str:
    """kombu's reading of an AMQP URL, written for aio-pika: `pyamqp://` and `librabbitmq://`
    are `amqp://`; no host is localhost (`amqp://`, `amqp:///vhost`); the user, password,
    port and vhost left out are guest, guest, 5672 (amqps: 5671) and "/", as aio-pika
    reads them too."""
    scheme, _, rest = url.partition("://")
    scheme = "amqps" if scheme.lower() == "amqps" else "amqp"
    parts = urlsplit(f"{scheme}://{rest}")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not hostport or hostport.startswith(":"):  # aio-pika would dial host None
        parts = parts._replace(netloc=f"{userinfo}{at}localhost{hostport}")
    return urlunsplit(parts)


# Celery's spellings of ssl_cert_reqs (the ssl module's constants, or redis-py's words)
_CERT_REQS = {
    "required": "required",
    "cert_required": "required",
    "optional": "optional",
    "cert_optional": "optional",
    "none": "none",
    "cert_none": "none",
}
_TLS_PARAMETERS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def redis_url(url: str) -> str:
    """A Redis URL as Celery reads it, written for redis-py: `ssl_cert_reqs=CERT_REQUIRED`
    (or CERT_OPTIONAL, CERT_NONE) becomes `required` (`optional`, `none`); an unknown value,
    or TLS parameters on a redis:// URL, fail here, before any connection. (No db is db 0 and
    no port 6379, as redis-py reads them already.)"""
    scheme, _, rest = url.partition("://")
    head, question, query = rest.partition("?")
    if not question:
        return url
    pairs = query.split("&")
    for index, pair in enumerate(pairs):
        key, equals, value = pair.partition("=")
        if key in _TLS_PARAMETERS and scheme.lower() != "rediss":
            raise ConfigurationError(
                f"{key} in Redis URL {mask_password(url)!r} needs TLS: write rediss:// "
                f"instead of {scheme}://"
            )
        if key == "ssl_cert_reqs":
            reqs = _CERT_REQS.get(unquote(value).lower())
            if reqs is None:
                raise ConfigurationError(
                    f"bad ssl_cert_reqs {unquote(value)!r} in Redis URL {mask_password(url)!r}: "
                    f"use required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
                )
            pairs[index] = f"{key}{equals}{reqs}"
    return f"{scheme}://{head}?{'&'.join(pairs)}"
