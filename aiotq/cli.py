"""The `aiotq` command: thin. It parses options and calls one library function each."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Annotated, Any

import typer

from ._version import __version__
from .app import App, run
from .cli_common import (
    APP_BEFORE_THE_COMMAND,
    AppOption,
    LogLevelOption,
    fail,
    load_app,
    run_against,
)
from .cli_control import control_cli, events_command, inspect_cli
from .cli_worker import setup_logging, worker
from .dashboard.cli import dashboard_command
from .exceptions import AiotqError, ConfigurationError

cli = typer.Typer(
    help="aiotq: asyncio-native distributed jobs (Celery's model, one event loop per worker).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"aiotq {__version__}")
        raise typer.Exit()


@cli.callback()
def main_options(
    app_option: Annotated[
        str | None,
        typer.Option(
            "--app",
            "-A",
            envvar="AIOTQ_APP",
            help="The app for the command (as `celery -A proj worker`): proj, or"
            " module:attribute. A command's own -A wins.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    APP_BEFORE_THE_COMMAND.set(app_option)


cli.command()(worker)  # first in --help, as it was


@cli.command("beat")
def beat_command(
    app_path: Annotated[
        str | None,
        typer.Argument(metavar="APP", help="The app, as -A takes it.", show_default=False),
    ] = None,
    app_option: AppOption = None,
    loglevel: LogLevelOption = "info",
) -> None:
    """Run beat alone: send periodic tasks when due (one leader among all beats)."""
    setup_logging(loglevel)
    app = load_app(app_option or app_path)
    try:
        run(run_beat(app))
    except AiotqError as exc:
        raise fail(str(exc), exc) from None


async def run_beat(app: App) -> None:
    """Until SIGTERM or SIGINT, then give the lead up and close."""
    from .beat import Beat

    app.finalize()
    beat = Beat(app)
    running = asyncio.create_task(beat.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.cancel)
    try:
        await running
    except asyncio.CancelledError:
        pass
    finally:
        await app.aclose()
        logging.getLogger("aiotq.beat").info("beat stopped.")


def _json_arg(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise fail(f"{what} is not JSON: {exc}") from None


@cli.command()
def send(
    name: Annotated[str, typer.Argument(help="Task name, e.g. proj.tasks.add.")],
    app_option: AppOption = None,
    args: Annotated[str, typer.Option(help="Positional arguments as a JSON list.")] = "[]",
    kwargs: Annotated[str, typer.Option(help="Keyword arguments as a JSON object.")] = "{}",
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-Q", help="Queue to send to.", show_default="the task's route"),
    ] = None,
    countdown: Annotated[
        float | None,
        typer.Option(help="Run no earlier than this many seconds.", show_default="at once"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 30.0,
) -> None:
    """Send a task by name and print its id (or its result with --wait)."""
    app = load_app(app_option)
    call_args, call_kwargs = _json_arg(args, "--args"), _json_arg(kwargs, "--kwargs")
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        raise fail("--args takes a JSON list and --kwargs a JSON object")

    async def go() -> None:
        result = await app.asend_task(
            name, call_args, call_kwargs, queue=queue, countdown=countdown
        )
        typer.echo(result.id)
        if wait:
            typer.echo(json.dumps(await result.get(timeout=timeout)))

    run_against(app, go)


@cli.command()
def result(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    app_option: AppOption = None,
    wait: Annotated[
        float | None,
        typer.Option(help="Wait up to this many seconds for it.", show_default="no wait"),
    ] = None,
) -> None:
    """Print a task's state and result."""
    app = load_app(app_option)

    async def go() -> None:
        handle = app.AsyncResult(task_id)
        if wait:
            await handle.get(timeout=wait, propagate=False)
        record = await handle.refresh()
        if record is None:
            typer.echo(json.dumps({"id": task_id, "state": "PENDING"}))
            return
        out: dict[str, Any] = {"id": task_id, "state": record.state}
        if record.state == "SUCCESS":
            out["result"] = record.result
        elif record.failure is not None:
            out["error"] = str(record.failure)
            out["traceback"] = record.traceback
        typer.echo(json.dumps(out))

    run_against(app, go)


@cli.command()
def status(
    app_option: AppOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list, for scripts.")] = False,
) -> None:
    """List the live workers at once, from their presence records; exit 1 if there are none."""
    from .presence import describe, live_workers

    app = load_app(app_option)
    rows: list[dict[str, Any]] = []

    async def go() -> None:
        coordinator = app.coordinator
        if coordinator is None:
            raise ConfigurationError(
                "workers keep their presence in the result backend's coordinator; rpc:// has"
                " none: configure a redis:// or sqlite:// result backend"
            )
        rows.extend(describe(await live_workers(coordinator)))

    run_against(app, go)
    if as_json:
        typer.echo(json.dumps(rows))
    for row in [] if as_json else rows:
        typer.echo(
            f"-> {row['hostname']} (pid {row['pid']}, v{row['version']}): OK, up {row['up_s']}s,"
            f" queues {row['queues']}, {row['in_flight']}/{row['concurrency']} in flight,"
            f" processed {row['processed']} (failed {row['failed']}, retried"
            f" {row['retried']}), load {row['loadavg'][0]:.2f}, {row['rss_mb']} MB,"
            f" seen {row['seen_s_ago']}s ago"
        )
    if not as_json:
        typer.echo(f"{len(rows)} node{'' if len(rows) == 1 else 's'} online.")
    if not rows:
        raise typer.Exit(1)


@cli.command()
def purge(
    app_option: AppOption = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues", "-Q", help="Comma-separated queues.", show_default="task_default_queue"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not ask.")] = False,
) -> None:
    """Delete every waiting message (ready and delayed) of the queues."""
    app = load_app(app_option)
    names = [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]
    if not force and not typer.confirm(f"Delete all messages of {', '.join(names)}?"):
        raise typer.Exit(1)

    async def go() -> None:
        for name in names:
            typer.echo(f"{name}: purged {await app.broker.purge(name)} message(s)")

    run_against(app, go)


@cli.command("dead-letters")
def dead_letters(
    app_option: AppOption = None,
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-Q", help="The queue.", show_default="task_default_queue"),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, oldest first.")] = 100,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Move them back to the queue.")
    ] = False,
) -> None:
    """List a queue's dead letters with their reasons, or move them back with --requeue."""
    app = load_app(app_option)
    name = queue or app.conf.task_default_queue

    async def go() -> None:
        if requeue:
            typer.echo(f"{name}: requeued {await app.broker.requeue_dead(name, limit)} message(s)")
            return
        for body, reason in await app.broker.dead_letters(name, limit):
            typer.echo(json.dumps({"reason": reason, "body": body.decode("utf-8", "replace")}))

    run_against(app, go)


cli.add_typer(inspect_cli, name="inspect")
cli.add_typer(control_cli, name="control")
cli.command("events")(events_command)
cli.command("dashboard")(dashboard_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
