"""What every `aiotq` command shares: loading the app, running its work, one-line errors."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from .app import App, run
from .exceptions import AiotqError

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app", "-A", help="The app as module:attribute, e.g. proj.app:tq.", show_default=False
    ),
]


log = logging.getLogger("aiotq.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def fail(message: str, cause: BaseException | None = None) -> typer.Exit:
    """One line on stderr; the stack of `cause` too, but only at `-l debug`."""
    if cause is not None:
        log.debug("The stack of the error below:", exc_info=cause)
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def load_app(path: str | None) -> App:
    """`pkg.module:attr`, or `pkg.module` holding one App. Errors are one clear line."""
    if not path:
        raise fail("which app? pass it as `module:attribute` (e.g. `aiotq worker proj.app:tq`)")
    sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(f"cannot import {module_name!r}: {exc}", exc) from None
    except Exception as exc:
        message = f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
        raise fail(message, exc) from None
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, App):
            raise fail(f"{module_name!r} has no App named {attr!r}")
        return app
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) != 1:
        raise fail(f"{module_name!r} holds {len(apps)} apps; name one as {module_name}:attribute")
    return apps[0]


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
