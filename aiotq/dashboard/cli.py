"""`aiotq dashboard`: the typer command (the main CLI registers `dashboard_command`)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ..cli_common import LOG_LEVELS, AppOption, fail, load_app

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def dashboard_command(
    app_option: AppOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (anything but localhost: use --auth).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5555,
    auth: Annotated[
        str | None,
        typer.Option(
            help="user:password for HTTP Basic (better from the environment: not in `ps`).",
            envvar="AIOTQ_DASHBOARD_AUTH",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="A bearer token accepted by the API (repeat for several).",
            envvar="AIOTQ_DASHBOARD_TOKENS",
            show_default=False,
        ),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show everything, change nothing.")
    ] = False,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning.")] = (
        "info"
    ),
) -> None:
    """Serve the web dashboard: workers, tasks, queues, beat; live, with actions."""
    if loglevel.lower() not in LOG_LEVELS:
        raise fail(f"unknown log level {loglevel!r}; use one of: {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=loglevel.upper(), stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s] %(message)s")  # fmt: skip
    if auth is not None and ":" not in auth:
        raise fail("--auth takes user:password")
    app = load_app(app_option)
    if host not in LOCAL_HOSTS and auth is None and not token:
        typer.secho(
            f"Warning: serving on {host} with no --auth or --token: anyone who reaches the "
            "port can revoke tasks and stop workers",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    from . import serve

    typer.echo(f"aiotq dashboard for {app.main} on http://{host}:{port}/", err=True)
    serve(app, host=host, port=port, auth=auth, tokens=tuple(token or ()), read_only=read_only)
