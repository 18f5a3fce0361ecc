"""Task loggers: `get_task_logger(__name__)` prefixes each line with the running task, as
Celery's does (`proj.tasks.div[<id>]: ...`), so a worker's log says which task wrote it."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from .request import current_request


class TaskLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        request = current_request.get()
        if request is None:
            return msg, kwargs
        return f"{request.task}[{request.id}]: {msg}", kwargs


def get_task_logger(name: str) -> TaskLogger:
    return TaskLogger(logging.getLogger(name), {})
