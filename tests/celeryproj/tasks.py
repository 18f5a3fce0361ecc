"""Tasks of the Celery-shaped project. Process tasks are module-level: a child finds them."""

from __future__ import annotations

import os
import threading
import time

from . import celery
from .celery import app

_kept: list[bytearray] = []  # what `grow` allocated stays: the child's memory grows


@app.task(name="proj.double_in_child", executor="process")
def double_in_child(x: int) -> list[int]:
    return [x * 2, os.getpid()]


@app.task(name="proj.grow", executor="process")
def grow(megabytes: int) -> int:
    _kept.append(bytearray(megabytes * 1024 * 1024))  # zero-filled pages: resident
    return os.getpid()


@app.task(name="proj.initialized", executor="process")
def initialized() -> bool:
    """worker_process_init reached this child before its first task."""
    return celery.process_initialized_in == os.getpid()


@app.task(name="proj.where_sync")
def where_sync(sleep_s: float = 0.0) -> list[object]:
    """A sync task that chose no executor: --pool decides where it runs."""
    time.sleep(sleep_s)
    return [os.getpid(), threading.current_thread().name]


@app.task(name="proj.where_async")
async def where_async() -> int:
    return os.getpid()


def _register_local() -> None:
    @app.task(name="proj.local_sync")
    def local_sync() -> int:  # not module-level: a child could not import it
        return os.getpid()


_register_local()
