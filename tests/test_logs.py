"""What the logs show: results bounded or left out, failures with their stack, and start-up
errors as one line (the stack only with `-l debug`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiotq import App, ConfigurationError
from aiotq.testing import run_worker
from aiotq.worker.execute import ValueRepr

from .apps import build

ROOT = str(Path(__file__).resolve().parent.parent)


def success_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "succeeded in" in r.getMessage()]


async def test_a_huge_result_is_cut_to_about_a_kilobyte(caplog: pytest.LogCaptureFixture) -> None:
    app = App("logs", broker="memory://")

    @app.task
    async def big() -> str:
        return "x" * 100_000

    with caplog.at_level("INFO", logger="aiotq.worker"):
        async with run_worker(app):
            result = await big.send()
            assert len(await result.get(timeout=5)) == 100_000  # the stored value is whole
    [line] = success_lines(caplog)
    assert len(line) < 1200
    assert line.endswith("...")
    assert ": 'xxxx" in line


async def test_small_results_still_show_whole(caplog: pytest.LogCaptureFixture) -> None:
    app = App("logs", broker="memory://")

    @app.task
    async def small() -> dict[str, object]:
        return {"status": "sent", "ids": [1, 2, 3]}

    with caplog.at_level("INFO", logger="aiotq.worker"):
        async with run_worker(app):
            await (await small.send()).get(timeout=5)
    [line] = success_lines(caplog)
    assert line.endswith("s: {'status': 'sent', 'ids': [1, 2, 3]}")  # the task's own order


async def test_values_off_logs_no_value_at_all(caplog: pytest.LogCaptureFixture) -> None:
    app = App("logs", broker="memory://", worker_log_values=False)

    @app.task
    async def lookup_phone() -> str:
        return "+15550100"

    with caplog.at_level(logging.DEBUG):
        async with run_worker(app):
            assert await (await lookup_phone.send()).get(timeout=5) == "+15550100"
    [line] = success_lines(caplog)
    assert line.endswith("s")  # the line ends after the runtime
    assert "+15550100" not in caplog.text


def test_the_value_repr_is_bounded_and_never_fails() -> None:
    shown = ValueRepr(1024)
    assert len(shown.repr(list(range(1_000_000)))) < 100
    assert shown.repr({f"k{i}": i for i in range(1_000_000)}).startswith("{'k0': 0, 'k1': 1")
    assert len(shown.repr(b"x" * 1_000_000)) == 1024
    assert shown.repr(10**5000) == "<int that cannot be shown>"  # int->str refuses; no raise


def explode_deeply(n: int) -> None:
    raise ValueError(f"bad input {n}")


async def test_a_failure_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    app = App("logs", broker="memory://")

    @app.task
    async def fails() -> None:
        explode_deeply(7)

    with caplog.at_level("INFO", logger="aiotq.worker"):
        async with run_worker(app):
            with pytest.raises(ValueError):
                await (await fails.send()).get(timeout=5)
    [record] = [r for r in caplog.records if "raised unexpected" in r.getMessage()]
    assert record.getMessage().startswith("Task ")
    assert "raised unexpected: ValueError: bad input 7 (after " in record.getMessage()
    assert record.exc_info is not None
    assert "Traceback" in caplog.text and "explode_deeply" in caplog.text


async def test_a_child_process_failure_carries_the_childs_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build("memory://")
    with caplog.at_level("INFO", logger="aiotq.worker"):
        async with run_worker(app, processes=1):
            with pytest.raises(ValueError):
                await (await app.asend_task("e2e.child_boom")).get(timeout=30)
    [record] = [r for r in caplog.records if "raised unexpected" in r.getMessage()]
    first, *stack = record.getMessage().splitlines()
    assert "raised unexpected: ValueError: bad input in a child (after " in first
    text = "\n".join(stack)
    assert "Traceback" in text and "boom_in_child" in text  # the frames of the child
    assert record.exc_info is None  # the local frames would only show the pool's plumbing


def test_a_failing_task_module_is_a_configuration_error_naming_it() -> None:
    app = App("logs", broker="memory://", include=["a_missing_module"])
    with pytest.raises(ConfigurationError, match="cannot import task module 'a_missing_module'"):
        app.finalize()


# -- the CLI: what a user sees on stderr ---------------------------------------------------
def worker_cli(tmp_path: Path, app_source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "logs_app.py").write_text(app_source)
    env = {**os.environ, "AIOTQ_BROKER_URL": "memory://"}
    env.pop("AIOTQ_RESULT_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "aiotq", "worker", "logs_app", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


MISSING = 'from aiotq import App\ntq = App("logs", include=["a_missing_module"])\n'


def test_a_missing_task_module_is_one_line(tmp_path: Path) -> None:
    proc = worker_cli(tmp_path, MISSING)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: cannot import task module 'a_missing_module': "
        "ModuleNotFoundError: No module named 'a_missing_module'"
    ]


def test_a_task_module_that_raises_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "raising_tasks.py").write_text('raise RuntimeError("no SMS_API_KEY")\n')
    app = 'from aiotq import App\ntq = App("logs", include=["raising_tasks"])\n'
    proc = worker_cli(tmp_path, app)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: cannot import task module 'raising_tasks': RuntimeError: no SMS_API_KEY"
    ]


def test_debug_also_shows_the_traceback(tmp_path: Path) -> None:
    proc = worker_cli(tmp_path, MISSING, "-l", "debug")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ModuleNotFoundError: No module named 'a_missing_module'" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("Error: cannot import task module")


def test_an_unknown_log_level_is_one_line_naming_the_valid_ones(tmp_path: Path) -> None:
    proc = worker_cli(tmp_path, MISSING, "-l", "verbose")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "Error: unknown log level 'verbose'; use one of: debug, info, warning, error, critical"
    ]
