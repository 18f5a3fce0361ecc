"""A real worker subprocess started through the CLI, for end-to-end and fault tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    def __init__(
        self,
        broker_url: str | None,
        *args: str,
        env: dict[str, str] | None = None,
        app: str = "tests.apps:tq",
    ) -> None:
        """`broker_url=None`: no broker configured, so the embedded default is used."""
        command = [sys.executable, "-m", "aiotq", "worker", app, "-l", "info", *args]
        environment = dict(os.environ)
        environment.pop("AIOTQ_BROKER_URL", None)
        environment.pop("AIOTQ_RESULT_BACKEND", None)
        environment.update(env or {})  # e.g. AIOTQ_RESULT_BACKEND for a RabbitMQ broker
        if broker_url is not None:
            environment["AIOTQ_BROKER_URL"] = broker_url
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def wait_for_log(self, pattern: str, times: int = 1, timeout: float = 20.0) -> None:
        try:
            wait_for(lambda: self.count(pattern) >= times or self.proc.poll() is not None, timeout)
        except AssertionError:
            raise AssertionError(f"no {pattern!r} x{times} in worker log:\n{self.log}") from None
        if self.count(pattern) < times:
            raise AssertionError(
                f"worker exited ({self.proc.returncode}) before {pattern!r}:\n{self.log}"
            )

    def ready(self) -> WorkerProcess:
        self.wait_for_log(r" ready\.$")
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Kill the worker and whatever it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


Start = Callable[..., WorkerProcess]


def workers_on(broker_url: str) -> Iterator[Start]:
    """Body of a `start` fixture: start ready workers on one broker, stop them all after."""
    started: list[WorkerProcess] = []

    def start_worker(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(broker_url, *args, env=env)
        started.append(worker)
        return worker.ready()

    yield start_worker
    for worker in started:
        worker.stop()
