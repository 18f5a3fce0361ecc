"""What every `aiotq` command shares: loading the app, running its work, one-line errors."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import ModuleType
from typing import Annotated, Any

import typer

from .app import App, run
from .exceptions import AiotqError

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-A",
        help="The app: proj (finds proj.app, proj.celery, ... as celery -A does) or"
        " module:attribute. Also before the command: aiotq -A proj worker.",
        show_default=False,
    ),
]


log = logging.getLogger("aiotq.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LogLevelOption = Annotated[
    str,
    typer.Option(
        "--loglevel", "-l", metavar="LEVEL",
        help="debug, info, warning, error or critical (any case; fatal = critical).",
    ),
]  # fmt: skip
# set by the top command's callback (a context of this invocation, not a module global)
APP_BEFORE_THE_COMMAND: ContextVar[str | None] = ContextVar("app_before_the_command", default=None)
# Celery's -A proj: these attributes of the module, then these of its submodules
APP_ATTRIBUTES = ("app", "celery")
APP_SUBMODULES = ("celery", "app", "tasks")


def fail(message: str, cause: BaseException | None = None) -> typer.Exit:
    """One line on stderr; the stack of `cause` too, but only at `-l debug`."""
    if cause is not None:
        log.debug("The stack of the error below:", exc_info=cause)
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def check_loglevel(level: str) -> str:
    """The logging name of `-l LEVEL` (Celery's names, any case), or one line naming them."""
    name = level.lower()
    if name == "fatal":
        return "CRITICAL"
    if name not in LOG_LEVELS:
        raise fail(f"unknown log level {level!r}; use one of: {', '.join(LOG_LEVELS)}")
    return name.upper()


def load_app(path: str | None) -> App:
    """The App named by -A (after the command, else before it): `module:attribute`, or a
    module searched as `celery -A` does (find_app). Errors are one clear line."""
    path = path or app_before_the_command()
    if not path:
        raise fail("which app? pass -A proj or -A module:attribute (e.g. `aiotq -A proj worker`)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, colon, attr = path.partition(":")
    if colon:
        app = _import(module_name)
        for part in attr.split("."):
            app = getattr(app, part, None)
        if not isinstance(app, App):
            raise fail(f"{module_name!r} has no App named {attr!r}")
        return app
    found = _import_or_attribute(path)
    if isinstance(found, App):
        return found
    tried: list[str] = []
    app = _find_in(found, tried, submodules=True)
    if app is None:
        raise fail(f"no App found for -A {path}: tried {', '.join(tried)}; name it as module:attr")
    return app


def app_before_the_command() -> str | None:
    """`aiotq -A proj worker`: the option of the top command, as `celery -A proj worker`."""
    return APP_BEFORE_THE_COMMAND.get()


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise _import_failed(name, exc) from None


def _import_failed(name: str, exc: Exception) -> typer.Exit:
    if isinstance(exc, ImportError):
        return fail(f"cannot import {name!r}: {exc}", exc)
    return fail(f"importing {name!r} raised {type(exc).__name__}: {exc}", exc)


def _import_or_attribute(path: str) -> Any:
    """`proj.tasks` as a module, else `proj`'s attribute `tasks` (as Celery's symbol_by_name)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        parent, _, attr = path.rpartition(".")
        value = getattr(_import(parent), attr, None) if exc.name == path and parent else None
        if not isinstance(value, App | ModuleType):
            raise _import_failed(path, exc) from None
        return value
    except Exception as exc:
        raise _import_failed(path, exc) from None


def _find_in(module: ModuleType, tried: list[str], *, submodules: bool) -> App | None:
    """find_app's order: the attributes app and celery; then, for a package, the modules
    celery, app and tasks under it; then the module's only App, whatever its name."""
    name = module.__name__
    for attr in APP_ATTRIBUTES:
        tried.append(f"{name}.{attr}")
        if isinstance(candidate := getattr(module, attr, None), App):
            return candidate
    if submodules and hasattr(module, "__path__"):
        for sub in APP_SUBMODULES:
            full = f"{name}.{sub}"
            try:
                child = importlib.import_module(full)
            except ModuleNotFoundError as exc:
                if exc.name != full:  # it exists, and imports what is missing
                    raise _import_failed(full, exc) from None
                tried.append(f"module {full} (none)")
                continue
            except Exception as exc:
                raise _import_failed(full, exc) from None
            if (found := _find_in(child, tried, submodules=False)) is not None:
                return found
    apps = {id(v): v for v in vars(module).values() if isinstance(v, App)}
    if len(apps) > 1:
        raise fail(f"{name!r} holds {len(apps)} apps; name one as {name}:attribute")
    tried.append(f"any App in {name}")
    return next(iter(apps.values()), None)


def run_against(app: App, work: Callable[[], Awaitable[None]]) -> None:
    """Run one command's work on a fresh loop, close the app's connections, and turn the
    errors a user can cause into one clear line."""

    async def go() -> None:
        try:
            await work()
        finally:
            await app.aclose()

    try:
        run(go())
    except (AiotqError, TypeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
