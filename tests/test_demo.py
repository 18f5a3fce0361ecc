"""The README's first command runs the main job; it must keep working."""

from __future__ import annotations

import subprocess
import sys

from .workerproc import ROOT


def test_demo_processes_every_task() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "tasks: 2000" in summary and "failures: 0" in summary, summary
