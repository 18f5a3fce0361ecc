"""Routing: task_routes (exact names, globs like `"proj.sms.*"`, callables, or a list of them)
and task_queues (Queue, Exchange: direct, topic and fanout bindings).

A route is a dict of options (`queue`, `routing_key`, `exchange`, `priority`...). Per-call
options win over the route, which wins over the task's own `queue=`, which wins over the
default queue. The queue, exchange and routing key then pick the target queues (`Topology`).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigurationError

Route = dict[str, Any]
Router = Mapping[str, Any] | Callable[..., Any]


def resolve_route(routes: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Route:
    if not routes:
        return {}
    for router in routes if isinstance(routes, (list, tuple)) else [routes]:
        found = _one(router, name, args, kwargs)
        if found:
            return found
    return {}


def _one(router: Router, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Route:
    if callable(router):
        return _as_route(router(name, args, kwargs, {}), name)
    if not isinstance(router, Mapping):
        raise ConfigurationError(f"task_routes entry must be a dict or a callable, got {router!r}")
    if name in router:
        return _as_route(router[name], name)
    for pattern, route in router.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return _as_route(route, name)
    return {}


def _as_route(route: Any, name: str) -> Route:
    if route is None:
        return {}
    if isinstance(route, str):
        return {"queue": route}
    if isinstance(route, Mapping):
        return dict(route)
    raise ConfigurationError(f"route for {name!r} must be a queue name or a dict, got {route!r}")


# -- queues, exchanges and bindings (task_queues) ------------------------------------------
EXCHANGE_TYPES = ("direct", "topic", "fanout")


class Exchange:
    """Celery/kombu's Exchange, as routing data: a name and a type (direct, topic, fanout)."""

    def __init__(self, name: str = "", type: str = "direct", **_: Any) -> None:
        if type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange {name!r}: type {type!r} is not one of {', '.join(EXCHANGE_TYPES)}"
            )
        self.name = name
        self.type = type

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, type={self.type!r})"


class Queue:
    """Celery/kombu's Queue: a queue bound to an exchange with a routing key (a pattern on a
    topic exchange). `queue_arguments` are passed to RabbitMQ when it declares the queue."""

    def __init__(
        self,
        name: str,
        exchange: Exchange | str | None = None,
        routing_key: str | None = None,
        queue_arguments: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue_arguments = dict(queue_arguments or {})

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, exchange={self.exchange!r}, routing_key={self.routing_key!r})"


@dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    exchange_type: str
    key: str


class Topology:
    """The declared queues (`task_queues`) and what a send with a queue, an exchange and a
    routing key reaches, with the semantics of an AMQP exchange. aiotq resolves this in the
    producer on every broker, so one set of settings delivers to the same queues on RabbitMQ,
    Redis, SQLite and memory. A queue that is not declared is reached by its name alone."""

    def __init__(
        self,
        task_queues: Any,
        default_queue: str,
        default_exchange: str | None,
        default_exchange_type: str,
        default_routing_key: str | None,
    ) -> None:
        self.default_exchange = Exchange(default_exchange or default_queue, default_exchange_type)
        self.default_routing_key = default_routing_key
        self.bindings: dict[str, Binding] = {}
        for queue in _queues_of(task_queues):
            exchange = queue.exchange
            if exchange is None or exchange == "":
                exchange = self.default_exchange
            elif isinstance(exchange, str):  # an exchange named alone has the default type
                exchange = Exchange(exchange, default_exchange_type)
            key = queue.routing_key or default_routing_key or queue.name
            self.bindings[queue.name] = Binding(queue.name, exchange.name, exchange.type, key)

    @property
    def queues(self) -> list[str]:
        return list(self.bindings)

    def targets(self, queue: str, exchange: str | None, routing_key: str | None) -> list[str]:
        """The queues a message for `queue` (with optional exchange / routing key) lands in."""
        binding = self.bindings.get(queue)
        if binding is None and exchange is None:
            return [queue]  # not declared: by name, as Celery's task_create_missing_queues
        exchange_name = exchange or (binding.exchange if binding else self.default_exchange.name)
        key = routing_key or (binding.key if binding else queue)
        bound = [b for b in self.bindings.values() if b.exchange == exchange_name]
        if not bound:
            raise ValueError(f"no queue in task_queues is bound to exchange {exchange_name!r}")
        hits = [b.queue for b in bound if _matches(b, key)]
        if not hits:
            known = ", ".join(f"{b.queue}: {b.key!r}" for b in bound)
            raise ValueError(
                f"routing key {key!r} reaches no queue of {bound[0].exchange_type} exchange "
                f"{exchange_name!r} (bindings: {known})"
            )
        return hits


def queue_arguments(task_queues: Any) -> dict[str, dict[str, Any]]:
    """Each declared queue's `queue_arguments` (for RabbitMQ's queue declarations)."""
    return {queue.name: queue.queue_arguments for queue in _queues_of(task_queues)}


def _queues_of(task_queues: Any) -> list[Queue]:
    if not task_queues:
        return []
    if isinstance(task_queues, Mapping):  # {"name": {"exchange": ..., "routing_key": ...}}
        return [Queue(name, **dict(options or {})) for name, options in task_queues.items()]
    queues = (
        sorted(task_queues, key=lambda q: getattr(q, "name", ""))
        if isinstance(task_queues, (set, frozenset))
        else list(task_queues)
    )
    for queue in queues:
        if not isinstance(queue, Queue):
            raise ConfigurationError(f"task_queues holds Queue(...) objects, got {queue!r}")
    return queues


def _matches(binding: Binding, key: str) -> bool:
    if binding.exchange_type == "fanout":
        return True
    if binding.exchange_type == "direct":
        return binding.key == key
    return topic_matches(binding.key, key)


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on '.', `*` is exactly one word, `#` zero or more."""
    return _words_match(tuple(pattern.split(".")), tuple(key.split(".")))


def _words_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_words_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _words_match(rest, words[1:])
