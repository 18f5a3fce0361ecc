"""`aiotq inspect ...`, `aiotq control ...` and `aiotq events`: Celery's commands, over
`app.control` and `app.events` (aiotq/control.py, aiotq/events.py).

Output reads well for a person; `--json` prints one JSON object {hostname: answer} for
scripts. A command that no worker answered exits 1 ("No nodes replied"), so
`aiotq inspect ping -d HOST` is a liveness probe.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .cli_common import AppOption, fail, load_app, run_against
from .control import INSPECT_METHODS

inspect_cli = typer.Typer(
    help="Ask the workers what they are doing (answers as soon as every live worker did).",
    no_args_is_help=True,
)
control_cli = typer.Typer(help="Change what the workers do, at runtime.", no_args_is_help=True)

DestinationOption = Annotated[
    str | None,
    typer.Option(
        "--destination", "-d", help="Comma-separated worker hostnames (default: all).",
        show_default=False,
    ),
]  # fmt: skip
TimeoutOption = Annotated[
    float, typer.Option("--timeout", "-t", help="Seconds to wait for a silent worker.")
]
JsonOption = Annotated[bool, typer.Option("--json", "-j", help="One JSON object, for scripts.")]


def _nodes(destination: str | None) -> list[str] | None:
    if destination is None:
        return None
    return [name.strip() for name in destination.split(",") if name.strip()]


def _item(method: str, value: Any) -> str:
    """One line of a person's view of an answer's list item."""
    if method in ("active", "reserved") and isinstance(value, dict):
        line = f"{value.get('name')}[{value.get('id')}] args={value.get('args')!r}"
        line += f" kwargs={value.get('kwargs')!r}"
        if "runtime_s" in value:
            line += f" running {value['runtime_s']:.1f}s"
        return line
    if method == "scheduled" and isinstance(value, dict):
        request = value.get("request", {})
        return (
            f"{value.get('eta')} {request.get('name')}[{request.get('id')}]"
            f" args={request.get('args')!r} kwargs={request.get('kwargs')!r}"
        )
    if method == "active_queues" and isinstance(value, dict):
        return str(value.get("name"))
    return value if isinstance(value, str) else json.dumps(value, default=repr)


def _show(method: str, answers: dict[str, Any]) -> None:
    for hostname, answer in answers.items():
        if isinstance(answer, dict) and set(answer) == {"error"}:
            typer.secho(f"-> {hostname}: ERROR {answer['error']}", fg=typer.colors.RED)
            continue
        typer.echo(f"-> {hostname}: OK")
        if isinstance(answer, dict) and set(answer) <= {"ok"}:
            typer.echo(f"    {answer.get('ok')}")
        elif isinstance(answer, list):
            if not answer:
                typer.echo("    - empty -")
            for value in answer:
                typer.echo(f"    * {_item(method, value)}")
        else:
            for line in json.dumps(answer, indent=2, default=repr).splitlines():
                typer.echo(f"    {line}")
    count = len(answers)
    typer.echo(f"\n{count} node{'' if count == 1 else 's'} online.")


def _finish(method: str, answers: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answers, default=repr))
    elif answers:
        _show(method, answers)
    if not answers:
        if not as_json:
            typer.secho("Error: No nodes replied within time constraint.", fg=typer.colors.RED,
                        err=True)  # fmt: skip
        raise typer.Exit(1)


def _inspect(
    method: str, app_option: str | None, destination: str | None, timeout: float,
    as_json: bool, **arguments: Any,
) -> None:  # fmt: skip
    app = load_app(app_option)
    answers: dict[str, Any] = {}

    async def go() -> None:
        inspect = app.control.inspect(_nodes(destination), timeout=timeout)
        answers.update(await inspect.arequest(method, **arguments))

    run_against(app, go)
    _finish(method, answers, as_json)


def _inspect_command(method: str) -> None:
    def command(
        app_option: AppOption = None,
        destination: DestinationOption = None,
        timeout: TimeoutOption = 1.0,
        as_json: JsonOption = False,
    ) -> None:
        _inspect(method, app_option, destination, timeout, as_json)

    command.__doc__ = {
        "ping": "Is each worker alive and answering? Exit 1 if none (a liveness probe).",
        "active": "The tasks running now, with args, start time and runtime so far.",
        "reserved": "The tasks fetched (prefetched) and not yet running.",
        "scheduled": "Delayed messages (countdown, eta, retries) waiting for the queues.",
        "registered": "The task names each worker knows.",
        "stats": "Counters, pool, prefetch, uptime, resource use, loop lag.",
        "active_queues": "The queues each worker consumes.",
        "revoked": "The revoked task ids each worker holds.",
        "conf": "Each worker's settings (secrets masked).",
    }[method]
    inspect_cli.command(method)(command)
    if "_" in method:  # Celery spells it active_queues; typer users type active-queues
        inspect_cli.command(method.replace("_", "-"), hidden=True)(command)


for _method in INSPECT_METHODS:
    if _method != "query_task":
        _inspect_command(_method)


@inspect_cli.command("query_task")
def query_task(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.")],
    app_option: AppOption = None,
    destination: DestinationOption = None,
    timeout: TimeoutOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Where these tasks are: active or reserved, and on which worker."""
    _inspect("query_task", app_option, destination, timeout, as_json, task_ids=task_ids)


def _control(
    method: str,
    arguments: dict[str, Any],
    app_option: str | None,
    destination: str | None,
    timeout: float,
    as_json: bool,
    *,
    answered_or_stored: bool = False,
) -> None:
    app = load_app(app_option)
    answers: dict[str, Any] = {}

    async def go() -> None:
        control = app.control
        if method == "revoke":
            replies = await control.arevoke(
                arguments["task_ids"], _nodes(destination), arguments["terminate"],
                arguments["signal"], reply=True, timeout=timeout,
            )  # fmt: skip
        else:
            replies = await control.abroadcast(
                method, arguments, _nodes(destination), reply=True, timeout=timeout
            )
        answers.update({name: answer for item in replies for name, answer in item.items()})

    run_against(app, go)
    if answered_or_stored and not answers:  # a revoke is kept: later workers refuse it
        message = "revoked: kept for the workers that start later (none answered now)"
        typer.echo(json.dumps({}) if as_json else message)
        return
    _finish(method, answers, as_json)


@control_cli.command("revoke")
def revoke(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.")],
    terminate: Annotated[
        bool, typer.Option("--terminate", help="Also stop it where it runs now.")
    ] = False,
    signal: Annotated[str, typer.Option("--signal", "-s", help="Kept for Celery.")] = "SIGTERM",
    app_option: AppOption = None,
    destination: DestinationOption = None,
    timeout: TimeoutOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Never run these tasks (kept, so workers that start later refuse them too); with
    --terminate, stop them where they run."""
    arguments = {"task_ids": task_ids, "terminate": terminate, "signal": signal}
    _control("revoke", arguments, app_option, destination, timeout, as_json,
             answered_or_stored=True)  # fmt: skip


@control_cli.command("terminate")
def terminate(
    task_ids: Annotated[list[str], typer.Argument(help="Task ids.")],
    app_option: AppOption = None,
    destination: DestinationOption = None,
    timeout: TimeoutOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Revoke and stop these tasks where they run (revoke --terminate)."""
    arguments = {"task_ids": task_ids, "terminate": True, "signal": "SIGTERM"}
    _control("revoke", arguments, app_option, destination, timeout, as_json,
             answered_or_stored=True)  # fmt: skip


@control_cli.command("rate_limit")
def rate_limit(
    task_name: Annotated[str, typer.Argument(help="The task's name.")],
    rate: Annotated[str, typer.Argument(help="e.g. 10/s, 100/m, 1000/h; 0 lifts it.")],
    app_option: AppOption = None,
    destination: DestinationOption = None,
    timeout: TimeoutOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Change a task's rate limit on the workers."""
    from .settings import parse_rate

    if rate != "0":
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise fail(str(exc)) from None
    arguments = {"task_name": task_name, "rate_limit": rate}
    _control("rate_limit", arguments, app_option, destination, timeout, as_json)


@control_cli.command("time_limit")
def time_limit(
    task_name: Annotated[str, typer.Argument(help="The task's name.")],
    soft: Annotated[float, typer.Argument(help="Soft limit, seconds (0: none).")],
    hard: Annotated[float, typer.Argument(help="Hard limit, seconds (0: none).")] = 0.0,
    app_option: AppOption = None,
    destination: DestinationOption = None,
    timeout: TimeoutOption = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Change a task's soft and hard time limits on the workers."""
    arguments = {"task_name": task_name, "soft": soft or None, "hard": hard or None}
    _control("time_limit", arguments, app_option, destination, timeout, as_json)


def _queue_command(method: str, doc: str) -> None:
    def command(
        queue: Annotated[str, typer.Argument(help="The queue.")],
        app_option: AppOption = None,
        destination: DestinationOption = None,
        timeout: TimeoutOption = 1.0,
        as_json: JsonOption = False,
    ) -> None:
        _control(method, {"queue": queue}, app_option, destination, timeout, as_json)

    command.__doc__ = doc
    control_cli.command(method)(command)
    control_cli.command(method.replace("_", "-"), hidden=True)(command)


_queue_command("add_consumer", "Start consuming from a queue as well.")
_queue_command("cancel_consumer", "Stop consuming from a queue (running tasks finish).")


def _plain_command(method: str, doc: str) -> None:
    def command(
        app_option: AppOption = None,
        destination: DestinationOption = None,
        timeout: TimeoutOption = 1.0,
        as_json: JsonOption = False,
    ) -> None:
        _control(method, {}, app_option, destination, timeout, as_json)

    command.__doc__ = doc
    control_cli.command(method)(command)
    if "_" in method:
        control_cli.command(method.replace("_", "-"), hidden=True)(command)


_plain_command("shutdown", "Warm-stop the workers (each finishes what it runs).")
_plain_command("enable_events", "Turn task events on (as -E does), at runtime.")
_plain_command("disable_events", "Turn task events off, at runtime.")


def events_command(
    app_option: AppOption = None,
    dump: Annotated[bool, typer.Option("--dump", help="Print events as JSON lines.")] = False,
    replay: Annotated[
        bool,
        typer.Option("--replay/--no-replay", help="Start with the recent past the broker keeps."),
    ] = True,
    limit: Annotated[
        int | None, typer.Option(help="With --dump: stop after this many events.")
    ] = None,
    idle: Annotated[
        float | None, typer.Option(help="With --dump: stop after this many quiet seconds.")
    ] = None,
) -> None:
    """A live monitor of workers and tasks (like `celery events`); --dump for JSON lines.
    Task events need workers started with -E (or `aiotq control enable_events`)."""
    app = load_app(app_option)
    if not dump:
        from .monitor import run_monitor

        run_monitor(app, replay=replay)
        return

    async def go() -> None:
        seen = 0
        async for event in app.events.receive(replay=replay, idle_s=idle):
            typer.echo(json.dumps(event, default=repr))
            seen += 1
            if limit is not None and seen >= limit:
                return

    run_against(app, go)
