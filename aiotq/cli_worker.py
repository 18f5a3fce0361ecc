"""`aiotq worker`, with Celery's flags by Celery's names.

What maps: -c (tasks in flight on the loop, not processes), -P/--pool (where sync tasks run:
worker/pools.py), --max-tasks-per-child / --max-memory-per-child (the process executor's
children), -n with %h %n %d %i %I, -Q, -X, -I, -l, -E, -B, -O, --time-limit,
--soft-time-limit, --reload (watchfiles). What is refused, with what to do instead:
--autoscale (nothing to grow: one loop runs up to -c tasks) and --detach (run it under
systemd, docs/deployment.md).
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from typing import Annotated

import typer

from .app import App, run
from .cli_common import (
    AppOption,
    LogLevelOption,
    app_before_the_command,
    check_loglevel,
    fail,
    load_app,
)
from .exceptions import AiotqError
from .settings import Settings

log = logging.getLogger("aiotq.cli")

DEFAULTS = Settings()
HOSTNAME_KEYS = "%h, %n, %d, %i, %I or %%"


def setup_logging(level: str) -> None:
    """Before anything else runs: a wrong level is one line naming the valid ones."""
    logging.basicConfig(
        level=check_loglevel(level),
        format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
        stream=sys.stderr,
    )


def expand_hostname(value: str) -> str:
    """Celery's node name: %h the host name, %n its first label, %d its domain, %i / %I
    the pool process index (0 / empty: aiotq is one process); no `@` means `aiotq@value`."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    keys = {"h": host, "n": short, "d": domain, "i": "0", "I": "", "%": "%"}

    def resolve(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in keys:
            raise fail(f"--hostname {value!r}: unknown %{key}; use {HOSTNAME_KEYS}")
        return keys[key]

    name = re.sub(r"%(.)", resolve, value)
    return name if "@" in name else f"aiotq@{name}"


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _refuse_celery_only(autoscale: str | None, detach: bool) -> None:
    if autoscale is not None:
        biggest = max((int(n) for n in re.findall(r"\d+", autoscale)), default=100)
        raise fail(
            f"--autoscale: aiotq has no pool to grow: one event loop runs up to --concurrency"
            f" tasks at once and idles at no cost; use --concurrency {biggest}"
        )
    if detach:
        raise fail(
            "--detach: run the worker in the foreground under a supervisor; see the systemd"
            " unit in docs/deployment.md (Running under systemd)"
        )


def _default(setting: str, value: object) -> str:
    return f"{setting}: {value}"


def worker(
    app_path: Annotated[
        str | None,
        typer.Argument(metavar="APP", help="The app, as -A takes it.", show_default=False),
    ] = None,
    app_option: AppOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            help="Tasks in flight at once on the loop (not processes: see --processes).",
            show_default=_default("worker_concurrency", DEFAULTS.worker_concurrency),
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            "-P",
            metavar="prefork|threads|solo",
            help="Where sync tasks that chose no executor run: prefork = child processes"
            " (--processes), threads = the thread pool (--threads), solo = one thread."
            " Async tasks always run on the loop.",
            show_default="worker_pool: none, each task's own",
        ),
    ] = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues to consume.",
            show_default="task_queues, else default",
        ),
    ] = None,
    exclude_queues: Annotated[
        str | None,
        typer.Option(
            "--exclude-queues",
            "-X",
            help="Comma-separated queues not to consume.",
            show_default="none",
        ),
    ] = None,
    include: Annotated[
        str | None,
        typer.Option(
            "--include",
            "-I",
            help="Comma-separated task modules to import too.",
            show_default="none",
        ),
    ] = None,
    loglevel: LogLevelOption = "info",
    threads: Annotated[
        int | None,
        typer.Option(
            help="Thread pool size for sync tasks.",
            show_default=_default("worker_threads", DEFAULTS.worker_threads),
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Child processes for executor='process' tasks (and --pool prefork).",
            show_default="worker_processes: one per CPU",
        ),
    ] = None,
    max_tasks_per_child: Annotated[
        int | None,
        typer.Option(
            help="A child process is replaced after this many tasks.",
            show_default="no limit",
        ),
    ] = None,
    max_memory_per_child: Annotated[
        int | None,
        typer.Option(
            metavar="KIB",
            help="A child process whose resident memory passes this many KiB after a task is"
            " replaced (the task completes).",
            show_default="no limit",
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            help="Hard time limit of every task, in seconds.", show_default="task_time_limit: none"
        ),
    ] = None,
    soft_time_limit: Annotated[
        float | None,
        typer.Option(
            help="Soft time limit of every task, in seconds.",
            show_default="task_soft_time_limit: none",
        ),
    ] = None,
    prefetch_multiplier: Annotated[
        int | None,
        typer.Option(
            help="Prefetch = concurrency x this.",
            show_default=_default(
                "worker_prefetch_multiplier", DEFAULTS.worker_prefetch_multiplier
            ),
        ),
    ] = None,
    optimization: Annotated[
        str,
        typer.Option(
            "--optimization",
            "-O",
            metavar="default|fair",
            help="Accepted for Celery command lines: aiotq always hands a task to a free"
            " slot only (Celery's fair).",
        ),
    ] = "default",
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a warm shutdown waits for in-flight tasks.",
            show_default=_default("worker_shutdown_timeout", DEFAULTS.worker_shutdown_timeout_s),
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname",
            "-n",
            help="Node name, e.g. sms@%h: %h host, %n its first label, %d its domain;"
            " without @ it is aiotq@NAME.",
            show_default="aiotq@%h",
        ),
    ] = None,
    beat: Annotated[
        bool, typer.Option("--beat", "-B", help="Also run beat (periodic tasks) in this loop.")
    ] = False,
    task_events: Annotated[
        bool,
        typer.Option(
            "--task-events", "--events", "-E", help="Send task events (for `aiotq events`)."
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", help="Serve Prometheus /metrics on this port.", show_default="off"
        ),
    ] = None,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Restart (warm) when a .py file under this directory changes. For development.",
        ),
    ] = False,
    autoscale: Annotated[
        str | None,
        typer.Option(metavar="MAX,MIN", help="Refused: use --concurrency MAX.", show_default=False),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-D", help="Refused: run it under systemd (docs/deployment.md)."),
    ] = False,
    without_gossip: Annotated[
        bool, typer.Option("--without-gossip", help="Accepted: aiotq has no gossip.")
    ] = False,
    without_mingle: Annotated[
        bool, typer.Option("--without-mingle", help="Accepted: aiotq has no mingle.")
    ] = False,
) -> None:
    """Start a worker: one process, one event loop, up to --concurrency tasks at once."""
    setup_logging(loglevel)
    _refuse_celery_only(autoscale, detach)
    if optimization.lower() not in ("default", "fair"):
        raise fail(f"unknown optimization {optimization!r}; use default or fair")
    node = expand_hostname(hostname) if hostname is not None else None
    from .worker.pools import check_pool  # here: `aiotq send` needs no worker

    try:
        chosen_pool = check_pool(pool) if pool is not None else None
    except AiotqError as exc:
        raise fail(str(exc)) from None
    if chosen_pool == "solo" and threads not in (None, 1):
        raise fail(f"--pool solo runs sync tasks in one thread: --threads {threads} too?")
    for flag, value in (("--max-tasks-per-child", max_tasks_per_child),
                        ("--max-memory-per-child", max_memory_per_child)):  # fmt: skip
        if value is not None and value < 1:
            raise fail(f"{flag} must be 1 or more, not {value}")
    if reload:
        from .reload import Reloader, command_without_reload, watched_directories

        where = watched_directories(app_option or app_path or app_before_the_command())
        raise typer.Exit(Reloader(command_without_reload(sys.argv[1:]), where).run())
    app = load_app(app_option or app_path)
    from .worker.worker import Worker

    try:
        _configure(app, chosen_pool, max_tasks_per_child, max_memory_per_child, time_limit,
                   soft_time_limit, _names(include))  # fmt: skip
        app.finalize()  # the task modules are imported: the pool can place their tasks
        w = Worker(
            app,
            queues=_consumed_queues(app, _names(queues), _names(exclude_queues)),
            concurrency=concurrency,
            prefetch_multiplier=prefetch_multiplier,
            threads=threads,
            processes=processes,
            shutdown_timeout_s=shutdown_timeout,
            hostname=node,
            beat=beat,
            send_events=True if task_events else None,
            metrics_port=metrics_port,
        )
        run(w.run())
    except AiotqError as exc:
        raise fail(str(exc), exc) from None


def _configure(
    app: App,
    pool: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    include: list[str],
) -> None:
    """The flags that are settings, set before the app starts (then they are frozen)."""
    values = {
        "worker_pool": pool,
        "worker_max_tasks_per_child": max_tasks_per_child,
        "worker_max_memory_per_child": max_memory_per_child,
        "task_time_limit_s": time_limit,
        "task_soft_time_limit_s": soft_time_limit,
    }
    app.conf.update({name: value for name, value in values.items() if value is not None})
    if include:
        app.conf.include = [*app.conf.include, *include]


def _consumed_queues(app: App, queues: list[str], excluded: list[str]) -> list[str] | None:
    if not excluded:
        return queues or None
    every = queues or app.topology.queues or [app.conf.settings.task_default_queue]
    left = [name for name in every if name not in excluded]
    if not left:
        raise fail(f"-X {','.join(excluded)} leaves no queue to consume")
    return left
