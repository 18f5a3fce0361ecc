"""`aiotq worker --reload`, for development: the worker runs as a child process and is
restarted when a .py file under the watched directories changes.

A restart is a warm stop (SIGTERM: in-flight tasks finish, prefetched ones go back), then a
fresh process, so the new code is imported whole. The child has a process group of its
own: Ctrl-C reaches only this process, which passes it on once as SIGTERM (a second one
means a cold stop, as for any worker). A worker that exits by itself (an import error) is
started again at the next change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger("aiotq.reload")


def watched_directories(app_path: str | None) -> list[Path]:
    """The current directory, and the app's top-level package when it lives elsewhere (found
    without importing it: a syntax error there must not stop the reloader)."""
    here = Path.cwd().resolve()
    directories = [here]
    top = (app_path or "").partition(":")[0].split(".")[0]
    if not top:
        return directories
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        package = Path(spec.origin).resolve().parent
        if here not in package.parents and package != here:
            directories.append(package)
    return directories


class Reloader:
    """Runs `command` (the worker without --reload) until a signal, restarting it on change."""

    def __init__(self, command: Sequence[str], directories: Sequence[Path]) -> None:
        self.command = list(command)
        self.directories = list(directories)
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def _start(self) -> None:
        self.child = subprocess.Popen(self.command, process_group=0)
        log.info("--reload: worker started (pid %d)", self.child.pid)

    def _terminate(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()
        self._terminate()  # again on a second signal: the worker then stops at once

    def run(self) -> int:
        from watchfiles import PythonFilter, watch

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        shown = ", ".join(str(d) for d in self.directories)
        log.info("--reload: restarting the worker when a .py file changes under %s", shown)
        self._start()
        for changes in watch(
            *self.directories,
            watch_filter=PythonFilter(),
            stop_event=self.stopping,
            raise_interrupt=False,
        ):
            if self.stopping.is_set():
                break
            names = sorted({os.path.relpath(path) for _, path in changes})
            log.info("--reload: %s changed: restarting the worker", ", ".join(names[:5]))
            self._terminate()
            if self.child is not None:
                self.child.wait()
            if self.stopping.is_set():
                break
            self._start()
        return self.child.wait() if self.child is not None else 0


def command_without_reload(argv: Sequence[str]) -> list[str]:
    """This same command line, run as `python -m aiotq`, without --reload."""
    return [sys.executable, "-m", "aiotq", *(arg for arg in argv if arg != "--reload")]
