"""Wire messages as msgspec Structs, and the JSON / MessagePack codecs. Never pickle.

A broker carries an opaque body plus a small string header map; the header
`content-type` names the codec. `decode_message` either returns a `Message` or raises
`MessageRejected` with the reason, nothing else (the decoder is fuzzed for it).
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from .exceptions import MessageRejected, TaskError

PROTOCOL_VERSION = 1
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "msgpack": "application/x-msgpack",
}
SERIALIZER_OF = {v: k for k, v in CONTENT_TYPES.items()}
_args_encoder = msgspec.msgpack.Encoder()  # can an exception's args travel as data?
# Content type a broker gives a body whose own framing it could not read.
BROKEN_ENVELOPE = "application/x-aiotq-broken-envelope"

# Celery's states; a task may also store a state of its own (`self.update_state("PROGRESS")`),
# so a record's state is any string, and these are the ones aiotq itself writes.
State = str
STATES: frozenset[str] = frozenset(
    {"PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"}
)
READY_STATES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class SignatureData(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A task call, or a chain / group / chord of them, as plain data inside messages."""

    task: str = ""
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    immutable: bool = False
    kind: Literal["task", "chain", "group", "chord"] = "task"
    tasks: list[SignatureData] = msgspec.field(default_factory=list)  # steps, members, header
    body: SignatureData | None = None  # a chord's callback


class ChordRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Carried by each member of a chord's header: which chord, how many, what to call.

    With no body it is a group that is one member of an outer chord (a chain ending in a
    group, inside a chord's header): when complete, the list of its results is stored under
    its group id and `then` (the outer chord) is counted."""

    group_id: str
    size: int
    body: SignatureData | None = None
    then: ChordRef | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One task invocation. Times are absolute epoch seconds (`*_at_s`) or durations (`*_s`)."""

    v: int = PROTOCOL_VERSION
    id: str
    task: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    retries: int = 0
    eta_at_s: float | None = None
    expires_at_s: float | None = None
    time_limit_s: float | None = None
    soft_time_limit_s: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    link: list[SignatureData] = msgspec.field(default_factory=list)
    link_error: list[SignatureData] = msgspec.field(default_factory=list)
    chain: list[SignatureData] = msgspec.field(default_factory=list)  # the steps after this
    chord: ChordRef | None = None
    ignore_result: bool = False
    priority: int | None = None
    queue: str | None = None
    routing_key: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] = msgspec.field(default_factory=dict)
    sent_at_s: float | None = None  # when the producer sent it: queue wait time (metrics)


class Failure(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A task's exception as data, in one shape from where it is raised (the worker, or a
    child process of the process executor) to the stored record to what `get()` raises."""

    type: str  # the qualified name within its module
    module: str = "builtins"
    message: str = ""
    args: list[Any] | None = None  # the exception's args, when they can be encoded
    traceback: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        args: list[Any] | None = list(exc.args)
        try:
            _args_encoder.encode(args)
        except Exception:
            args = None
        return cls(
            type=type(exc).__qualname__, module=type(exc).__module__, message=str(exc),
            args=args, traceback="".join(traceback.format_exception(exc)),
        )  # fmt: skip

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def rebuild(self) -> BaseException:
        """The task's own exception type where importable here (with the remote traceback
        as a note), else a TaskError naming it."""
        try:
            cls = getattr(importlib.import_module(self.module), self.type)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                exc = cls(*(self.args if self.args is not None else [self.message]))
                exc.__notes__ = [f"remote traceback:\n{self.traceback}"] if self.traceback else []
                return exc
        except Exception:
            pass
        name = self.type if self.module == "builtins" else f"{self.module}.{self.type}"
        return TaskError(name, self.message, self.traceback)


class ResultRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the backend keeps for a task id."""

    task_id: str
    state: State
    result: Any = None  # the value, on success
    failure: Failure | None = None  # on FAILURE, REVOKED and a RETRY that had a cause
    date_done_s: float | None = None
    retries: int = 0
    task: str | None = None
    parent_id: str | None = None
    children: list[str] = msgspec.field(default_factory=list)  # ids of links, chain's next
    # with result_extended (Celery's name): the call and where it ran
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    worker: str | None = None
    queue: str | None = None

    @property
    def traceback(self) -> str | None:
        return self.failure.traceback if self.failure is not None else None

    def exception(self) -> BaseException:
        """What `get()` raises for this record."""
        if self.failure is None:
            return TaskError("Exception", f"task {self.task_id} ended {self.state}")
        return self.failure.rebuild()


class Codec:
    """Encoder and decoders for one serializer; one instance per app, reused (no per-call setup)."""

    def __init__(self, name: str) -> None:
        if name not in CONTENT_TYPES:
            raise ValueError(f"unknown serializer {name!r}; use one of {sorted(CONTENT_TYPES)}")
        self.name = name
        self.content_type = CONTENT_TYPES[name]
        module: Any = msgspec.json if name == "json" else msgspec.msgpack
        self._encoder = module.Encoder()
        self._message_decoder = module.Decoder(Message)
        self._record_decoder = module.Decoder(ResultRecord)
        self._any_decoder = module.Decoder()

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def decode_message(self, body: bytes) -> Message:
        return self._message_decoder.decode(body)

    def decode_record(self, data: bytes) -> ResultRecord:
        return self._record_decoder.decode(data)

    def decode_any(self, data: bytes) -> Any:
        return self._any_decoder.decode(data)


CODECS: dict[str, Codec] = {name: Codec(name) for name in CONTENT_TYPES}


def decode_message(body: bytes, content_type: str | None, accept: frozenset[str]) -> Message:
    """Decode a task message, or raise `MessageRejected` naming the reason."""
    serializer = SERIALIZER_OF.get(content_type or "")
    if content_type == BROKEN_ENVELOPE:
        raise MessageRejected("undecodable broker envelope (not written by aiotq?)")
    if serializer is None:
        raise MessageRejected(f"unknown content type {content_type!r}")
    if serializer not in accept:
        raise MessageRejected(f"content type {content_type!r} is not accepted (accept_content)")
    try:
        message = CODECS[serializer].decode_message(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageRejected(f"undecodable {serializer} message: {exc}") from None
    except Exception as exc:  # a codec must not take the worker down on any input
        raise MessageRejected(f"undecodable {serializer} message: {exc!r}") from None
    if message.v != PROTOCOL_VERSION:
        raise MessageRejected(f"unsupported protocol version {message.v}", message.id)
    return message


def decode_record(data: bytes) -> ResultRecord:
    """Results are stored with their codec's first byte telling which: JSON starts with `{`."""
    codec = CODECS["json"] if data[:1] == b"{" else CODECS["msgpack"]
    return codec.decode_record(data)


# -- what the layers above read of a record or a signature ---------------------------------


@runtime_checkable
class AsData(Protocol):
    """A signature (canvas.py) as this module sees it: something that turns into data."""

    def data(self) -> SignatureData: ...


def group_meta_key(group_id: str) -> str:
    """Where the backend keeps a group's member ids (for chords and GroupResult.restore)."""
    return f"aiotq.group:{group_id}"


def signature_list(value: Any) -> list[SignatureData]:
    """Signatures, their data, or that data decoded to plain dicts (from inside a message)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[SignatureData] = []
    for item in items:
        if isinstance(item, AsData):
            out.append(item.data())
        elif isinstance(item, SignatureData):
            out.append(item)
        elif isinstance(item, dict):
            out.append(msgspec.convert(item, SignatureData))
        else:
            raise TypeError(f"expected signatures (task.s(...)), got {item!r}")
    return out


def chord_ref(value: Any) -> ChordRef | None:
    if value is None or isinstance(value, ChordRef):
        return value
    return msgspec.convert(value, ChordRef)


def result_ids(data: SignatureData) -> list[str]:
    """Every result id a signature's data will fill (frozen ids), for failing them at once."""
    if data.kind == "task":
        task_id = data.options.get("task_id")
        return [task_id] if task_id else []
    ids = [i for member in data.tasks for i in result_ids(member)]
    if data.kind == "group" and data.options.get("group_id"):
        ids.append(data.options["group_id"])  # a group that is one member of a chord
    return ids + (result_ids(data.body) if data.body is not None else [])


def terminal_refs(data: SignatureData) -> list[ChordRef]:
    """The chords a signature reports to when it finishes (its last task carries them), so
    a signature that will never run can still count, as failed, and no chord waits forever."""
    own = chord_ref(data.options.get("chord"))
    refs = [own] if own is not None else []
    if data.kind == "chain" and data.tasks:
        refs += terminal_refs(data.tasks[-1])
    elif data.kind == "chord" and data.body is not None:
        refs += terminal_refs(data.body)
    return refs


def errbacks_of(data: SignatureData) -> list[SignatureData]:
    """The error callbacks of a signature as a whole (a chain's are on every step)."""
    if data.kind == "task":
        return signature_list(data.options.get("link_error"))
    if data.kind == "chord" and data.body is not None:
        return errbacks_of(data.body)
    return errbacks_of(data.tasks[0]) if data.tasks else []
