"""Start `aiotq worker <app>` as a separate process, as a second terminal would.

Every example runs alone (`python -m examples.<name>`) by starting its worker this way; the
example's README line shows the two-terminal form too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def worker_process(app_path: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "aiotq", "worker", app_path, "-l", "info", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(command, cwd=os.getcwd(), env=env)
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: in-flight tasks finish
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
