"""Django, the way Celery's fixup (celery/fixups/django.py) does it: nothing to install.

- `setup_if_configured()`: when `DJANGO_SETTINGS_MODULE` is set, `django.setup()` runs
  before any task module is imported (App.import_task_modules calls it first), so a
  `tasks.py` that imports its models works in the worker instead of failing with
  `AppRegistryNotReady`. Inside a process where Django is already set up (the web
  process, `manage.py shell`, a test) it does nothing.
- `installed_app_packages()`: the packages of `INSTALLED_APPS`, each AppConfig resolved to
  its app's module (`apps.get_app_configs()`, as Celery): `app.autodiscover_tasks()` with
  no packages imports their `tasks` modules.

Django is imported here only when a function is called, never at import: aiotq does not
depend on it. Django ships no type stubs, so its objects are `Any`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from .exceptions import ConfigurationError

log = logging.getLogger("aiotq.django")

SETTINGS_ENV = "DJANGO_SETTINGS_MODULE"


def setup_if_configured() -> bool:
    """`django.setup()` if `DJANGO_SETTINGS_MODULE` is set and Django's apps are not ready
    yet. True when Django is in use (set up now, before, or being set up right now)."""
    module = os.environ.get(SETTINGS_ENV)
    if not module:
        return _apps_ready()  # settings.configure() + django.setup() by hand
    try:
        import django  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from django.apps import apps  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        # Celery warns and goes on: a stale variable must not stop a project without Django
        log.warning("%s=%s is set but Django is not installed: no django.setup()", SETTINGS_ENV,
                    module)  # fmt: skip
        return False
    registry: Any = apps
    if registry.ready or registry.loading:  # loading: called from inside django.setup()
        return True
    try:
        django.setup()
    except Exception as exc:
        raise ConfigurationError(
            f"django.setup() with {SETTINGS_ENV}={module!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return True


def installed_app_packages() -> list[str]:
    """The module name of every installed Django app, in INSTALLED_APPS order
    (`"shop.apps.ShopConfig"` is `"shop"`). Sets Django up first if it is configured."""
    setup_if_configured()
    configs = _app_configs()
    if configs is None:
        raise ConfigurationError(
            "autodiscover_tasks() without packages imports the tasks of Django's"
            f" INSTALLED_APPS, but Django is not set up: set {SETTINGS_ENV} (e.g."
            " os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings')) or name the"
            " packages: autodiscover_tasks(['proj.orders'])"
        )
    return [config.name for config in configs]


def app_packages(entries: Iterable[str]) -> list[str]:
    """INSTALLED_APPS-style entries as packages: one naming an AppConfig class
    (`"shop.apps.ShopConfig"`) becomes its app's module (`"shop"`) when Django is set up;
    every other entry is kept as it is."""
    names = list(entries)
    configs = _app_configs()
    if not configs:
        return names
    by_class = {f"{type(c).__module__}.{type(c).__qualname__}": c.name for c in configs}
    return [by_class.get(name, name) for name in names]


def close_old_connections() -> None:
    """Celery's fixup, before and after each task: the calling thread's database connections
    that are broken or past CONN_MAX_AGE are closed, so a task never gets one a database
    restart (or a long idle) has killed. Django's connections are per thread, so this runs in
    the thread (or child) that runs the task."""
    from django import db  # type: ignore[import-untyped,import-not-found,unused-ignore]

    db.close_old_connections()


def in_use() -> bool:
    """Whether this process uses Django (its apps are set up): read once by a worker."""
    return _apps_ready()


def _apps_ready() -> bool:
    return _app_configs() is not None


def _app_configs() -> list[Any] | None:
    """Django's app configs, or None when Django is not imported or its apps are not ready
    (a process that never imported Django is not using it: no import is tried)."""
    module = sys.modules.get("django.apps")
    if module is None:
        return None
    registry: Any = module.apps
    if not registry.ready:
        return None
    return list(registry.get_app_configs())
