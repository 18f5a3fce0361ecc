"""The app, named `app` in `proj/celery.py`, as in Celery's "First steps"."""

from __future__ import annotations

import os

from aiotq import App
from aiotq.signals import worker_process_init

app = App("celeryproj", include=["tests.celeryproj.tasks"])

process_initialized_in: int | None = None  # the pid of the child that got worker_process_init


@worker_process_init.connect
def note_the_child(**kwargs: object) -> None:
    global process_initialized_in
    process_initialized_in = os.getpid()
