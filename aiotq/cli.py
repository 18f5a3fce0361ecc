"""The `aiotq` command: thin. It parses options and calls one library function each."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Annotated, Any

import typer

from ._version import __version__
from .app import App, run
from .cli_common import LOG_LEVELS, AppOption, fail, load_app, run_against
from .cli_control import control_cli, events_command, inspect_cli
from .dashboard.cli import dashboard_command
from .exceptions import AiotqError, ConfigurationError

cli = typer.Typer(
    help="aiotq: asyncio-native distributed jobs (Celery's model, one event loop per worker).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setup_logging(level: str) -> None:
    """Before anything else runs: a wrong level is one line naming the valid ones."""
    if level.lower() not in LOG_LEVELS:
        raise fail(f"unknown log level {level!r}; use one of: {', '.join(LOG_LEVELS)}")
    logging.basicConfig(
        level=level.upper(),
        format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
        stream=sys.stderr,
    )


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"aiotq {__version__}")
        raise typer.Exit()


@cli.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    pass


@cli.command()
def worker(
    app_path: Annotated[
        str | None, typer.Argument(metavar="APP", help="module:attribute of the App.")
    ] = None,
    app_option: AppOption = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="Tasks in flight at once.")
    ] = None,
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")
    ] = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", help="debug, info, warning, error.")
    ] = "info",
    threads: Annotated[int | None, typer.Option(help="Thread pool size for sync tasks.")] = None,
    processes: Annotated[
        int | None, typer.Option(help="Process pool size for executor='process' tasks.")
    ] = None,
    prefetch_multiplier: Annotated[
        int | None, typer.Option(help="Prefetch = concurrency x this.")
    ] = None,
    shutdown_timeout: Annotated[
        float | None, typer.Option(help="Seconds a warm shutdown waits for in-flight tasks.")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Name shown in logs.")
    ] = None,
    beat: Annotated[
        bool, typer.Option("--beat", "-B", help="Also run beat (periodic tasks) in this loop.")
    ] = False,
    task_events: Annotated[
        bool,
        typer.Option("--task-events", "-E", help="Send task events (for `aiotq events`)."),
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port.")
    ] = None,
) -> None:
    """Start a worker: one process, one event loop, up to --concurrency tasks at once."""
    setup_logging(loglevel)
    app = load_app(app_option or app_path)
    from .worker.worker import Worker  # here: `aiotq send` need not import the worker

    try:
        w = Worker(
            app,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            concurrency=concurrency,
            prefetch_multiplier=prefetch_multiplier,
            threads=threads,
            processes=processes,
            shutdown_timeout_s=shutdown_timeout,
            hostname=hostname,
            beat=beat,
            send_events=True if task_events else None,
            metrics_port=metrics_port,
        )
        run(w.run())
    except AiotqError as exc:
        raise fail(str(exc), exc) from None


@cli.command("beat")
def beat_command(
    app_path: Annotated[
        str | None, typer.Argument(metavar="APP", help="module:attribute of the App.")
    ] = None,
    app_option: AppOption = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", help="debug, info, warning, error.")
    ] = "info",
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
    queue: Annotated[str | None, typer.Option("--queue", "-Q", help="Queue to send to.")] = None,
    countdown: Annotated[
        float | None, typer.Option(help="Run no earlier than this many seconds.")
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
    wait: Annotated[float | None, typer.Option(help="Wait up to this many seconds for it.")] = None,
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
        str | None, typer.Option("--queues", "-Q", help="Comma-separated queues.")
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
    queue: Annotated[str | None, typer.Option("--queue", "-Q", help="The queue.")] = None,
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
