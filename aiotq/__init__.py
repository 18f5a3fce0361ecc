"""aiotq: an asyncio-native distributed job runtime with Celery's model.

from aiotq import App
tq = App("sms", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")

@tq.task(max_retries=3, retry_backoff=True)
async def send_sms(phone: str, text: str) -> str: ...

result = await send_sms.send("+15550100", "hi")    # async code
send_sms.delay("+15550100", "hi").get(timeout=5)   # sync code
"""

from . import result as states
from ._version import __version__
from .app import App, shared_task
from .canvas import Signature, chain, chord, group
from .exceptions import (
    AccessRefused,
    AiotqError,
    BackendConnectionError,
    BackendError,
    BackendUnavailable,
    BrokerConnectionError,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DeliveryLimitExceeded,
    MaxRetriesExceededError,
    MessageRejected,
    NotRegistered,
    Reject,
    Replace,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevoked,
    TimeLimitExceeded,
    Transient,
)
from .log import get_task_logger
from .mapping import chunks, xmap, xstarmap
from .result import AsyncResult, EagerResult, GroupResult
from .routing import Exchange, Queue
from .schedules import crontab
from .task import ExceptionInfo, Request, Task
from .worker.worker import Worker

signature = Signature

__all__ = [
    "AccessRefused",
    "AiotqError",
    "App",
    "AsyncResult",
    "BackendConnectionError",
    "BackendError",
    "BackendUnavailable",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DeliveryLimitExceeded",
    "EagerResult",
    "ExceptionInfo",
    "Exchange",
    "GroupResult",
    "MaxRetriesExceededError",
    "MessageRejected",
    "NotRegistered",
    "Queue",
    "Reject",
    "Replace",
    "Request",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "Transient",
    "Worker",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "get_task_logger",
    "group",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
