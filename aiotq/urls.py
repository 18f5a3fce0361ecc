"""URL helpers: choosing an implementation by scheme, masking passwords, and reading
Celery's (kombu's) URLs the way Celery does: `amqp://` alone is RabbitMQ on localhost,
`pyamqp://` is `amqp://`, `rediss://...?ssl_cert_reqs=CERT_REQUIRED` is redis-py's
`required`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from .exceptions import ConfigurationError

T = TypeVar("T")


def mask_password(url: str) -> str:
    """`redis://:secret@h:6379/0` -> `redis://:**@h:6379/0`; never log a URL without this.
    A Sentinel URL is several joined by `;`: each is masked.

    Never raises: it runs in the error messages about bad URLs (a port that is no number)."""
    if ";" in url:
        return ";".join(mask_password(part) for part in url.split(";"))
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
    """A port that is no number (or out of range) fails here, before any connection. A URL
    of several hosts (Sentinel's `;`, Cluster's `,`) is checked by its own parser."""
    if ";" in url or "," in url.partition("://")[2].partition("/")[0]:
        return None
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


class Nodes(NamedTuple):
    """The servers a Sentinel or Cluster URL names, and what each connection carries."""

    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    db: int


SENTINEL_PORT = 26379


def _db(path: str, url: str) -> int:
    db = path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigurationError(f"bad db {db!r} in Redis URL {mask_password(url)!r}: a number")
    return int(db)


def _host_port(hostport: str, default_port: int, url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{hostport}")
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in Redis URL {mask_password(url)!r}: {exc}") from None
    if not parts.hostname:
        raise ConfigurationError(f"no host in {hostport!r} of Redis URL {mask_password(url)!r}")
    return parts.hostname, port


def db_of(url: str) -> int:
    """The db a redis:// URL names (its path, or `?db=`); 0 when none."""
    parts = urlsplit(url)
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if key == "db" and value.isdigit():
            return int(value)
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


def sentinel_nodes(url: str) -> Nodes:
    """kombu's `sentinel://[:password@]host:26379[/db];sentinel://host2:26380`: the sentinels
    to ask for the master. The password (of the first part with one) and the db are the
    master's; the sentinels' own password goes in `sentinel_kwargs`, as kombu takes it."""
    nodes: list[tuple[str, int]] = []
    username = password = None
    db = 0
    for part in url.split(";"):
        scheme, _, rest = part.strip().partition("://")
        if scheme.lower() != "sentinel":
            raise ConfigurationError(
                f"each part of a Sentinel URL starts with sentinel:// "
                f"(host:26379;...): {mask_password(url)!r}"
            )
        parts = urlsplit(f"//{rest}")
        if parts.query:
            raise ConfigurationError(
                f"no query options on a sentinel:// URL ({mask_password(url)!r}): give them "
                f"in broker_transport_options (result_backend_transport_options)"
            )
        nodes.append(_host_port(parts.netloc.rpartition("@")[2], SENTINEL_PORT, url))
        if password is None and parts.password is not None:
            username, password = parts.username or None, unquote(parts.password)
        if parts.path.strip("/"):
            db = _db(parts.path, url)
    return Nodes(nodes, username and unquote(username), password, db)


def cluster_nodes(url: str) -> Nodes:
    """`redis+cluster://[user:password@]host:port,host:port`: seed nodes of a Redis Cluster
    (one that answers is enough: it names the others). A cluster has db 0 only."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, _, secret = userinfo.partition(":")
    nodes = [_host_port(hostport, 6379, url) for hostport in hosts.split(",") if hostport]
    if not nodes:
        raise ConfigurationError(f"no host in Redis Cluster URL {mask_password(url)!r}")
    if _db(parts.path, url) != 0:
        raise ConfigurationError(
            f"Redis Cluster has db 0 only: {mask_password(url)!r} names another"
        )
    if parts.query:
        raise ConfigurationError(
            f"no query options on a redis+cluster:// URL: {mask_password(url)!r}"
        )
    return Nodes(nodes, unquote(user) or None, unquote(secret) if at and secret else None, 0)
