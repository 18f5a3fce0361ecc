"""The process executor for CPU-bound sync tasks.

Only bytes and strings cross the process boundary: arguments, the request and the outcome
are msgpack-encoded here, so no user object is ever pickled. The child imports the task's
module and finds the task by its qualified name (so process tasks are module-level).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ..exceptions import Retry
from ..protocol import Failure
from ..request import Request, current_request

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def exit_with_parent(parent_pid: int) -> None:
    """A worker killed with SIGKILL cannot stop its pool: its children notice and leave."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="aiotq-parent-watch", daemon=True).start()


def run_in_child(module: str, qualname: str, payload: bytes) -> bytes:
    """Entry point in the child process."""
    args, kwargs, request = _decode(payload)
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    token = current_request.set(Request(**request, called_directly=False))
    try:
        value = target(*args, **kwargs)  # a Task passes itself first when bound
        return _encode({"ok": value})
    except Retry as retry:
        cause = Failure.of(retry.exc) if retry.exc is not None else None
        return _encode({"retry": retry.countdown_s, "exc": cause})
    except BaseException as exc:
        return _encode({"error": Failure.of(exc)})
    finally:
        current_request.reset(token)


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
    """A spawn-context pool that can be torn down when a task hits its hard time limit."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool: ProcessPoolExecutor | None = None

    @property
    def executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # imported with the first process task: multiprocessing costs a worker 4 MB
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self._size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def kill(self) -> None:
        """End every child now (a hard time limit): tasks sharing the pool are redelivered."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
