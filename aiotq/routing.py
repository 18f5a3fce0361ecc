"""task_routes resolution: exact names, globs (`"proj.sms.*"`), callables, or a list of them.

A route is a dict of options (`queue`, `routing_key`, `priority`...). Per-call options win
over the route, which wins over the task's own `queue=`, which wins over the default queue.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
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
