"""Every error aiotq raises, in one tree.

    AiotqError
    ├── ConfigurationError         bad setting, bad URL, unknown scheme (names the culprit)
    │   └── AccessRefused          the server refused the credentials, user or vhost
    ├── NotRegistered              a task name no one registered
    ├── MessageRejected            a message that cannot be run: undecodable, bad content type
    ├── Transient                  may pass: retried (a message stays unacknowledged meanwhile)
    │   ├── BrokerConnectionError  the broker cannot be reached
    │   ├── BrokerUnavailable      reached, but refusing for now (locked, out of memory)
    │   ├── BackendConnectionError
    │   └── BackendUnavailable     reached, but refusing for now (OOM, locked, read-only)
    ├── BrokerError                the broker refused this for good (base of the Broker* above)
    ├── BackendError               the backend refused this for good (base of the Backend*)
    ├── DeliveryLimitExceeded      a message delivered too often without finishing
    ├── TaskError                  a remote failure whose exception type is not importable here
    ├── TimeLimitExceeded          hard time limit: the task was stopped
    ├── SoftTimeLimitExceeded      raised inside an async task so it can clean up
    ├── TaskRevoked                the task expired or was revoked before it ran
    ├── MaxRetriesExceededError    self.retry() with no exc after the last retry
    ├── Retry                      control: raised by Task.retry(), caught by the worker
    └── Reject                     control: raised by a task to reject its message

Third-party errors (redis, aio-pika, sqlite3, msgspec) are translated at the module that
talks to them, so callers only ever catch these. Whether an error is retried is decided by
its class: `Transient` ones are, every other one is final for the operation that raised it.
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


class AccessRefused(ConfigurationError):
    """The server refused our credentials (or the user's rights, or the vhost): retrying the
    same ones cannot help, so a worker exits with this one line instead of looping."""


class Transient(AiotqError):
    """An error that may pass: the caller retries with backoff (never loses the message)."""


class BrokerError(AiotqError):
    pass


class BrokerConnectionError(BrokerError, Transient, ConnectionError):
    pass


class BrokerUnavailable(BrokerError, Transient):
    """The broker answered but cannot take this now (a locked SQLite file, Redis OOM)."""


class BackendError(AiotqError):
    pass


class BackendConnectionError(BackendError, Transient, ConnectionError):
    pass


class BackendUnavailable(BackendError, Transient):
    """The backend answered but cannot store now (OOM, locked, read-only replica, loading)."""


class DeliveryLimitExceeded(AiotqError):
    """The message was delivered more than its limit without finishing (it may kill its
    worker): dead-lettered instead of run again."""


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


class Replace(AiotqError):
    """Raised by `Task.replace(sig)`: `sig` runs instead of the task, inheriting what came
    after it (callbacks, the rest of its chain, its chord) and its result id."""

    def __init__(self, signature: Any) -> None:
        super().__init__(f"replaced by {signature!r}")
        self.signature = signature


class Reject(AiotqError):
    """Raised by a task to reject its message (`requeue=False` dead-letters it)."""

    def __init__(self, reason: str = "rejected by task", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue
