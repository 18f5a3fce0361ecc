"""The README's first command runs the main job; it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .workerproc import ROOT


def test_demo_processes_every_task_through_a_worker_process(tmp_path: Path) -> None:
    env = {**os.environ, "AIOTQ_HOME": str(tmp_path)}  # the default broker's file goes here
    for name in ("AIOTQ_BROKER_URL", "AIOTQ_RESULT_BACKEND"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert f"on sqlite:///{tmp_path}/aiotq.db with concurrency 200" in proc.stdout
    assert lines[-2] == "worker stopped cleanly (exit 0)", proc.stdout
    assert "tasks: 2000" in lines[-1] and "failures: 0" in lines[-1], lines[-1]
    assert (tmp_path / "aiotq.db").exists()
