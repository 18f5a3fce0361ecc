"""redis-server processes of the suite's own: free port, temp dir, stopped by PID.

The suite never talks to a Redis it did not start, so it may flush, fill, pause or kill
these at will. `RedisServer.start(tmp_path, maxmemory="2mb")` passes any redis.conf option.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process; `url(db)` to reach it, `pause()` / `resume()` (SIGSTOP /
    SIGCONT), `kill()` (SIGKILL) and `restart()` on the same port (no persistence: empty)."""

    def __init__(self, directory: Path, port: int, options: dict[str, Any]) -> None:
        self.directory = directory
        self.port = port
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, **options: Any) -> RedisServer:
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory, free_port(), options)
        server._launch()
        return server

    def _command(self) -> list[str]:
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        for key, value in self.options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        return command

    def _launch(self) -> None:
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start: "
                        f"{(self.directory / f'redis-{self.port}.log').read_text()[-500:]}"
                    ) from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, db: int = 0) -> str:
        password = self.options.get("requirepass")
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        password = self.options.get("requirepass")
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=password, socket_timeout=5
        )

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a paused one cannot die until resumed
                self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Kill it and start a fresh one on the same port: every key is gone."""
        self.kill()
        self._launch()

    def stop(self) -> None:
        self.kill()
