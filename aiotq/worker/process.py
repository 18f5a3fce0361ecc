"""The process executor for CPU-bound sync tasks.

Only bytes and strings cross the process boundary: arguments, the request and the outcome
are msgpack-encoded here, so no user object is ever pickled. The child imports the task's
module and finds the task by its qualified name (so process tasks are module-level), and
sends `worker_process_init` once, before its first task, when that import has connected
the app's receivers. Children are replaced after --max-tasks-per-child tasks or past
--max-memory-per-child (children.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import os
import shutil
import signal
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from ..django_fixup import close_old_connections, setup_if_configured
from ..exceptions import ConfigurationError, Retry, TaskRevoked
from ..protocol import Failure
from ..request import Request, current_request
from ..signals import worker_process_init
from .children import ChildProcesses

if TYPE_CHECKING:
    from concurrent.futures import Executor

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


INTERRUPT = signal.SIGUSR1  # a terminate asks the child running that task to stop it
KILL_AFTER_S = 3.0  # a child that has not stopped its task by then is killed
_running: str | None = None  # in a child: the id of the task it runs now
_initialized = False  # in a child: worker_process_init was sent


def _interrupted(signum: int, frame: FrameType | None) -> None:
    if _running is not None:  # raised in the task's own code, at its next bytecode
        raise TaskRevoked(f"task {_running} was revoked and terminated")


def exit_with_parent(parent_pid: int) -> None:
    """A worker killed with SIGKILL cannot stop its pool: its children notice and leave.
    (The pool's initializer, so it also sets up the terminate signal.)"""
    signal.signal(INTERRUPT, _interrupted)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="aiotq-parent-watch", daemon=True).start()


def run_in_child(module: str, qualname: str, payload: bytes, marks: str | None = None) -> bytes:
    """Entry point in the child process. `marks`: the pool's directory where the child
    notes which task it runs (`<id>` holds its pid) and the parent marks a terminate
    (`<id>.stop`)."""
    global _running, _initialized
    args, kwargs, request = _decode(payload)
    task_id = request["id"]
    running_file = Path(marks, _file_name(task_id)) if marks else None
    if running_file is not None:
        if _stop_file(running_file).exists():  # revoked before it started here
            return _encode({"error": Failure.of(TaskRevoked(f"task {task_id} was revoked"))})
        running_file.write_text(str(os.getpid()))
    django = setup_if_configured()  # Django: a task module importing models needs it first
    target: Any = importlib.import_module(module)
    if not _initialized:  # after the import: the app module connected its receivers
        _initialized = True
        worker_process_init.send(sender=None)
    for part in qualname.split("."):
        target = getattr(target, part)
    token = current_request.set(Request(**request, called_directly=False))
    try:
        _running = task_id
        if django:
            close_old_connections()  # Celery's fixup, before and after each task
        try:
            value = target(*args, **kwargs)  # a Task passes itself first when bound
        finally:
            _running = None
            if django:
                close_old_connections()
        return _encode({"ok": value})
    except Retry as retry:
        cause = Failure.of(retry.exc) if retry.exc is not None else None
        return _encode({"retry": retry.countdown_s, "exc": cause})
    except BaseException as exc:
        return _encode({"error": Failure.of(exc)})
    finally:
        current_request.reset(token)
        if running_file is not None:
            with contextlib.suppress(OSError):
                running_file.unlink()


def pack_call(args: list[Any], kwargs: dict[str, Any], request: Request) -> bytes:
    fields = {
        "id": request.id,
        "task": request.task,
        "args": request.args,
        "kwargs": request.kwargs,
        "retries": request.retries,
        "parent_id": request.parent_id,
        "root_id": request.root_id,
        "hostname": request.hostname,
    }
    return _encode([args, kwargs, fields])


def unpack_answer(data: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = _decode(data)
    return answer


class ProcessPool:
    """Spawned child processes, replaced one by one after `max_tasks_per_child` tasks or
    past `max_memory_per_child_kib`, and all at once when a task hits its hard time limit."""

    def __init__(
        self,
        size: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child_kib: int | None = None,
    ) -> None:
        for name, value in (
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_memory_per_child", max_memory_per_child_kib),
        ):
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be 1 or more, not {value}")
        self._size = size
        self._max_tasks = max_tasks_per_child
        self._max_memory_kib = max_memory_per_child_kib
        self._pool: ChildProcesses | None = None
        self._marks: str | None = None

    @property
    def marks(self) -> str:
        """The directory where children note which task they run (for a terminate)."""
        if self._marks is None:
            self._marks = tempfile.mkdtemp(prefix="aiotq-tasks-")
        return self._marks

    def interrupt(self, task_id: str) -> None:
        """Stop one task in its child, the others untouched: the child raises TaskRevoked
        in the task's code; one stuck in C code that ignores it is killed after
        KILL_AFTER_S (the pool is then replaced, and the tasks sharing it run again)."""
        running_file = Path(self.marks, _file_name(task_id))
        _stop_file(running_file).touch()
        pid = _pid_in(running_file)
        if pid is None:
            return  # not started yet: the child refuses it when it comes to it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, INTERRUPT)

        def kill_if_stuck() -> None:
            if _pid_in(running_file) == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        asyncio.get_running_loop().call_later(KILL_AFTER_S, kill_if_stuck)

    @property
    def executor(self) -> Executor:
        if self._pool is None:
            # imported with the first process task: multiprocessing costs a worker 4 MB
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            start_child = partial(
                ProcessPoolExecutor,
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
            self._pool = ChildProcesses(
                self._size, start_child, max_tasks=self._max_tasks,
                max_memory_kib=self._max_memory_kib,
            )  # fmt: skip
        return self._pool

    def kill(self) -> None:
        """End every child now (a hard time limit): tasks running in them are redelivered;
        those still waiting for a child run in the new ones."""
        if self._pool is not None:
            self._pool.kill()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._marks is not None:
            shutil.rmtree(self._marks, ignore_errors=True)
            self._marks = None


def _file_name(task_id: str) -> str:
    """A task id may hold any character: the file is named by its digest."""
    return hashlib.sha1(task_id.encode()).hexdigest()


def _stop_file(running_file: Path) -> Path:
    return running_file.with_name(running_file.name + ".stop")


def _pid_in(running_file: Path) -> int | None:
    try:
        return int(running_file.read_text())
    except (OSError, ValueError):
        return None
