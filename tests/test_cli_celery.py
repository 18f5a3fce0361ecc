"""Celery's worker flags and CLI habits, through the real `aiotq` command on SQLite.

The project is laid out as Celery's docs lay one out (tests/celeryproj: `celery.py` holds
`app`), so `-A tests.celeryproj` must find it as `celery -A proj` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiotq import App

from .workerproc import ROOT, WorkerProcess

PROJ = "tests.celeryproj"


class CliProcess(WorkerProcess):
    """Any `aiotq ...` command line (WorkerProcess starts `aiotq worker APP` only)."""

    def __init__(self, argv: list[str], url: str, cwd: Path = ROOT) -> None:
        environment = {**os.environ, "AIOTQ_BROKER_URL": url, "COLUMNS": "200"}
        environment.pop("AIOTQ_RESULT_BACKEND", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiotq", *argv],
            cwd=cwd,
            env=environment,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/aiotq.db"


@pytest.fixture
def producer(url: str) -> Iterator[App]:
    app = App("producer", broker=url)
    yield app
    app.close()


@pytest.fixture
def started(url: str) -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.stop()


def start(started: list[WorkerProcess], url: str, *argv: str) -> WorkerProcess:
    worker = CliProcess(list(argv), url)
    started.append(worker)
    return worker.ready()


def aiotq(*argv: str, url: str = "memory://", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "AIOTQ_BROKER_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "aiotq", *argv], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_app_option_before_the_command_finds_proj_celery_app_and_expands_h(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    start(started, url, "-A", PROJ, "worker", "-n", "w1@%h", "-l", "INFO")
    node = f"w1@{socket.gethostname()}"
    assert producer.send_task("proj.where_async").get(timeout=20) == started[0].proc.pid
    listed = aiotq("--app", PROJ, "status", "--json", url=url)
    assert [row["hostname"] for row in json.loads(listed.stdout)] == [node], listed.stderr
    pinged = aiotq("-A", PROJ, "inspect", "ping", "-d", node, url=url)
    assert pinged.returncode == 0 and f"-> {node}: OK" in pinged.stdout, pinged.stderr


def test_max_tasks_per_child_replaces_children_and_loses_no_task(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    start(started, url, "worker", "-A", PROJ, "--processes", "2", "--max-tasks-per-child", "2")
    results = [producer.send_task("proj.double_in_child", (n,)) for n in range(10)]
    answers = [r.get(timeout=60) for r in results]
    assert [value for value, _ in answers] == [n * 2 for n in range(10)]
    pids = [pid for _, pid in answers]
    assert len(set(pids)) >= 5 and all(pids.count(pid) <= 2 for pid in pids), pids
    # each child takes tasks until it has run 2; only the last two may run fewer
    started[0].wait_for_log(r"child \d+ replaced after 2 tasks \(--max-tasks-per-child\)", times=4)


def test_max_memory_per_child_replaces_a_child_after_its_task(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    worker = start(
        started, url, "worker", PROJ, "--processes", "1", "--max-memory-per-child", "80000"
    )
    small = producer.send_task("proj.double_in_child", (1,)).get(timeout=60)[1]
    assert producer.send_task("proj.double_in_child", (2,)).get(timeout=60) == [4, small]
    assert producer.send_task("proj.grow", (60,)).get(timeout=60) == small  # then it retires
    worker.wait_for_log(r"replaced after \d+ KiB resident \(--max-memory-per-child 80000\)")
    results = [producer.send_task("proj.double_in_child", (n,)) for n in range(3)]
    after = [r.get(timeout=60) for r in results]
    assert [value for value, _ in after] == [0, 2, 4]
    [new_child] = {pid for _, pid in after}  # under the limit: this one stays
    assert new_child != small


def test_worker_process_init_is_sent_in_each_child(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    start(started, url, "worker", PROJ, "--processes", "1", "--max-tasks-per-child", "1")
    assert [producer.send_task("proj.initialized").get(timeout=60) for _ in range(2)] == [
        True,
        True,
    ]  # the second ran in a new child: it got the signal too


def test_pool_prefork_moves_sync_tasks_to_children_and_keeps_async_on_the_loop(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    worker = start(started, url, "worker", "-A", PROJ, "-P", "prefork", "--processes", "1")
    pid, _ = producer.send_task("proj.where_sync").get(timeout=60)
    assert pid != worker.proc.pid
    assert producer.send_task("proj.where_async").get(timeout=20) == worker.proc.pid
    assert producer.send_task("proj.local_sync").get(timeout=20) == worker.proc.pid
    warned = [line for line in worker.lines if "not module-level" in line]
    assert len(warned) == 1 and warned[0].endswith(": proj.local_sync"), worker.log


def test_pool_solo_runs_sync_tasks_one_at_a_time(
    started: list[WorkerProcess], url: str, producer: App
) -> None:
    worker = start(started, url, "worker", "-A", PROJ, "--pool", "SOLO")
    results = [producer.send_task("proj.where_sync", (0.2,)) for _ in range(4)]
    answers = [r.get(timeout=30) for r in results]
    assert {pid for pid, _ in answers} == {worker.proc.pid}
    assert len({thread for _, thread in answers}) == 1  # one thread ran them all


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--autoscale", "10,3"], "Error: --autoscale: aiotq has no pool to grow"),
        (["-D"], "Error: --detach: run the worker in the foreground under a supervisor"),
        (["-l", "verbose"], "Error: unknown log level 'verbose'; use one of: debug, info,"),
        (["-P", "gevent"], "Error: --pool gevent: aiotq runs on asyncio; write the task as"),
        (["-P", "forks"], "Error: unknown pool 'forks'; use one of: prefork, threads, solo"),
        (["-n", "w@%x"], "Error: --hostname 'w@%x': unknown %x; use %h, %n, %d, %i, %I or %%"),
        (["-P", "solo", "--threads", "4"], "Error: --pool solo runs sync tasks in one thread"),
        (["--max-tasks-per-child", "0"], "Error: --max-tasks-per-child must be 1 or more"),
    ],
)
def test_celery_flags_aiotq_cannot_honour_are_one_clear_line(argv: list[str], error: str) -> None:
    proc = aiotq("worker", "-A", PROJ, *argv)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(error), proc.stderr
    if argv[0] == "--autoscale":
        assert line.endswith("use --concurrency 10")


def test_fatal_and_upper_case_levels_are_accepted() -> None:
    proc = aiotq("worker", "-A", "no_such_module_here", "-l", "FATAL")
    assert proc.stderr.splitlines() == [
        "Error: cannot import 'no_such_module_here': No module named 'no_such_module_here'"
    ]  # past the level check: FATAL is Celery's alias of CRITICAL


def test_an_app_not_found_names_what_was_tried(tmp_path: Path) -> None:
    (tmp_path / "emptyproj").mkdir()
    (tmp_path / "emptyproj" / "__init__.py").write_text("")
    (tmp_path / "emptyproj" / "tasks.py").write_text("VALUE = 1\n")
    proc = aiotq("-A", "emptyproj", "worker", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: no App found for -A emptyproj: tried emptyproj.app, emptyproj.celery,"
        " module emptyproj.celery (none), module emptyproj.app (none), emptyproj.tasks.app,"
        " emptyproj.tasks.celery, any App in emptyproj.tasks, any App in emptyproj;"
        " name it as module:attr"
    ]


def test_app_discovery_follows_celerys_order(tmp_path: Path) -> None:
    """`-A proj` takes proj.app (an App attribute) first; `module:attr` still works."""
    package = tmp_path / "orderproj"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from aiotq import App\napp = App('by-attribute')\nother = App('other')\n"
    )
    (package / "celery.py").write_text("from aiotq import App\napp = App('by-submodule')\n")
    probe = "from aiotq.cli_common import load_app\nprint(load_app({!r}).main)"
    for path, main in (("orderproj", "by-attribute"), ("orderproj.celery", "by-submodule"),
                       ("orderproj:other", "other"), ("orderproj.other", "other")):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", probe.format(path)], cwd=tmp_path, capture_output=True,
            text=True, timeout=30,
        )  # fmt: skip
        assert proc.stdout.strip() == main, (path, proc.stderr)


def test_every_help_shows_its_defaults() -> None:
    worker_help = aiotq("worker", "--help").stdout
    for shown in ("[default: (worker_concurrency: 100)]", "[default: info]",
                  "[default: (aiotq@%h)]", "prefork|threads|solo", "[default: (no limit)]"):  # fmt: skip
        assert shown in worker_help, worker_help
    assert "[default: (the task's route)]" in aiotq("send", "--help").stdout
    assert "[default: 100]" in aiotq("dead-letters", "--help").stdout


RELOAD_TASKS = """
from aiotq import App

app = App("reloadproj", include=["reloadproj.tasks"])
"""


def test_reload_restarts_the_worker_on_a_code_change(tmp_path: Path, url: str) -> None:
    package = tmp_path / "reloadproj"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(RELOAD_TASKS))
    tasks = package / "tasks.py"
    tasks.write_text(
        "from . import app\n\n@app.task(name='version')\ndef version():\n    return 1\n"
    )
    reloader = CliProcess(["worker", "-A", "reloadproj", "--reload", "-l", "info"], url, tmp_path)
    producer = App("producer", broker=url)
    try:
        reloader.ready()
        assert producer.send_task("version").get(timeout=20) == 1
        tasks.write_text(tasks.read_text().replace("return 1", "return 2"))
        reloader.wait_for_log(r"reloadproj/tasks\.py changed: restarting the worker")
        reloader.wait_for_log(r" ready\.$", times=2, timeout=30)
        assert producer.send_task("version").get(timeout=20) == 2
        reloader.signal(signal.SIGTERM)
        assert reloader.wait(30) == 0  # the reloader passed it on: the worker stopped warm
        assert reloader.count(r" stopped\.$") == 2
    finally:
        producer.close()
        for pid in reloader_children(reloader):
            kill_quietly(pid)
        reloader.stop()


def reloader_children(reloader: WorkerProcess) -> list[int]:
    return [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in reloader.lines
            if "--reload: worker started (pid" in line]  # fmt: skip


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_reload_watches_the_current_directory_and_the_apps_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiotq.reload import command_without_reload, watched_directories

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert watched_directories("tests.apps:tq") == [tmp_path.resolve(), ROOT / "tests"]
    assert command_without_reload(["worker", "--reload", "-A", "p"]) == [
        sys.executable, "-m", "aiotq", "worker", "-A", "p",
    ]  # fmt: skip
