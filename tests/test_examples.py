"""Every example runs as a user would run it, with its own worker process, and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .workerproc import ROOT


def run_example(name: str, home: Path, timeout: float = 90, args: tuple[str, ...] = ()) -> str:
    env = {**os.environ, "AIOTQ_HOME": str(home)}  # the default broker's file goes here
    for variable in ("AIOTQ_BROKER_URL", "AIOTQ_RESULT_BACKEND"):
        env.pop(variable, None)
    proc = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    assert "aiotq@" in proc.stderr and " stopped." in proc.stderr  # its worker ran and stopped
    return proc.stdout + proc.stderr


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart", tmp_path)
    assert "  .get() = 10  status = SUCCESS" in out
    assert "mul.apply_async((2, 4)).get() = 8" in out
    assert "ready() = True  successful() = True" in out
    assert "xsum.delay([1, 2, 3]).get() = 6" in out
    assert ".get() = 8\n" in out.split("app.AsyncResult(")[1]
    assert "add.delay(1) -> TypeError:" in out and "missing a required argument: 'y'" in out


def test_sms_retries_with_backoff(tmp_path: Path) -> None:
    out = run_example("sms", tmp_path).splitlines()  # stdout first
    sent = int(out[0].split()[1])
    failed = [line for line in out if "failed after 6 retries" in line]
    assert sent + len(failed) == 200, out  # every message accounted for
    total_retries = int(out[1].split()[1])
    assert 20 < total_retries < 200, out  # about a quarter of the attempts failed


def test_fastapi_app(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the examples extra is not installed")
    out = run_example("fastapi_app", tmp_path)
    assert "POST /signup -> {'task_id':" in out
    assert "'state': 'SUCCESS', 'result': 'welcome mail sent to ada@example.com'" in out


def test_django_style(tmp_path: Path) -> None:
    out = run_example("django_style", tmp_path)
    assert "activation mail for user 1\n10 more mails sent" in out


def test_retry_div(tmp_path: Path) -> None:
    out = run_example("retry", tmp_path)
    assert "div.delay(2, 1).get() = 2.0" in out
    assert "ZeroDivisionError(division by zero) after 3 retries" in out
    took = float(out.split("  in ")[1].split("s;")[0])
    assert took >= 9.0 and "state FAILURE" in out
    # the task logger names the task and its id, and shows self.request
    assert out.count("examples.retry.tasks.div[") >= 5
    assert "task.args      : [2, 0]" in out


def test_periodic(tmp_path: Path) -> None:
    os.environ["PERIODIC_EVERY_S"] = "0.5"  # the 30-second entry, shortened for the test
    try:
        out = run_example("periodic", tmp_path, args=("4",))  # room for a slow start
    finally:
        del os.environ["PERIODIC_EVERY_S"]
    assert "mul-on-weekday-mornings: <crontab: 30 7 * * mon-fri>, next at" in out
    assert out.count("Scheduler: Sending due task mul-every-30-seconds") >= 3
    assert "examples.periodic.tasks.mul[" in out and "succeeded in" in out and ": 256" in out
    assert "heartbeat[" in out and "still here" in out


def test_routing(tmp_path: Path) -> None:
    out = run_example("routing", tmp_path)
    assert "add(3, 3) = 6 from queue foo\nmul(3, 3) = 9 from queue feed_task\n" in out
    assert "add(3, 3) = 6 from queue feed_task\nmul(3, 3) = 9 from queue foo\n" in out
    assert "routing_key='nowhere' -> ValueError: routing key 'nowhere' reaches no queue" in out
