"""Every error aiotq raises, in one tree.

    AiotqError
    ├── ConfigurationError         bad setting, bad URL, unknown scheme (names the culprit)
    ├── NotRegistered              a task name no one registered
    ├── MessageRejected            a message that cannot be run: undecodable, bad content type
    ├── BrokerError
    │   └── BrokerConnectionError  the broker cannot be reached (retried where safe)
    ├── BackendError
    │   └── BackendConnectionError
    ├── TaskError                  a remote failure whose exception type is not importable here
    ├── TimeLimitExceeded          hard time limit: the task was stopped
    ├── SoftTimeLimitExceeded      raised inside an async task so it can clean up
    ├── TaskRevoked                the task expired or was revoked before it ran
    ├── MaxRetriesExceededError    self.retry() with no exc after the last retry
    ├── Retry                      control: raised by Task.retry(), caught by the worker
    └── Reject                     control: raised by a task to reject its message

Third-party errors (redis, aio-pika, msgspec) are translated at the module that
talks to them, so callers only ever catch these.
"""

from __future__ import annotations

from typing import Any


class AiotqError(Exception):
    """Base of every aiotq error."""


class ConfigurationError(AiotqError):
    """A setting, URL or option is wrong; the message names it."""


class NotRegistered(AiotqError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class MessageRejected(AiotqError):
    """The message cannot be run; `reason` says why. The worker dead-letters it."""

    def __init__(self, reason: str, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id


class BrokerError(AiotqError):
    pass


class BrokerConnectionError(BrokerError, ConnectionError):
    pass


class BackendError(AiotqError):
    pass


class BackendConnectionError(BackendError, ConnectionError):
    pass


class TaskError(AiotqError):
    """A task failed with an exception whose type cannot be rebuilt here."""

    def __init__(self, exc_type: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback


class TimeLimitExceeded(AiotqError):
    pass


class SoftTimeLimitExceeded(AiotqError):
    pass


class TaskRevoked(AiotqError):
    pass


class MaxRetriesExceededError(AiotqError):
    pass


class Retry(AiotqError):
    """Raised by `Task.retry()`: the worker sends the task again after `countdown_s`."""

    def __init__(
        self,
        exc: BaseException | None = None,
        countdown_s: float = 0.0,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            f"retry in {countdown_s:g}s: {exc!r}" if exc else f"retry in {countdown_s:g}s"
        )
        self.exc = exc
        self.countdown_s = countdown_s
        self.new_args = args
        self.new_kwargs = kwargs


class Reject(AiotqError):
    """Raised by a task to reject its message (`requeue=False` dead-letters it)."""

    def __init__(self, reason: str = "rejected by task", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue
