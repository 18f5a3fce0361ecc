"""Celery's task protocol (version 2) and result format, converted to and from aiotq's own.

A Celery task message is headers + properties + a body `[args, kwargs, embed]`, where
`embed` holds `callbacks`, `errbacks`, `chain` (the steps after this one, the next one last)
and `chord` (celery/app/amqp.py `as_task_v2`). Its `timelimit` header is `[hard, soft]`.
Times (`eta`, `expires`) are ISO 8601 strings. A Celery result is a map `status`, `result`,
`traceback`, `children`, `date_done`, `task_id` (+ `name`, `args`, `kwargs`, `worker`,
`retries`, `queue` with result_extended), an exception as `{exc_type, exc_message (its
args), exc_module}` (celery/backends/base.py).

The brokers and the result backend of `task_protocol = "celery"` convert at their boundary
with these functions; everything above them sees aiotq's `Message` and `ResultRecord`.
What aiotq has and Celery has not (a chord member's count, an rpc:// reply queue) travels in
headers of aiotq's own (`x-aiotq-*`), which a Celery worker ignores.
"""

from __future__ import annotations

import base64
import json
import os
import reprlib
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from .exceptions import MessageRejected
from .protocol import (
    CODECS,
    CONTENT_TYPES,
    READY_STATES,
    ChordRef,
    Failure,
    Message,
    ResultRecord,
    SignatureData,
    decode_message,
)

# Celery's content types for the codecs aiotq has; the others are refused with a reason.
SERIALIZER_OF_CELERY = {
    "application/json": "json",
    "application/x-msgpack": "msgpack",
    "application/msgpack": "msgpack",
}
CONTENT_TYPE_OF = {"json": "application/json", "msgpack": "application/x-msgpack"}
CONTENT_ENCODING_OF = {"json": "utf-8", "msgpack": "binary"}
REFUSED_CONTENT = {
    "application/x-python-serialize": "pickle is refused (unpickling runs code a message"
    " chooses): set task_serializer = 'json' or 'msgpack' on the Celery side",
    "application/x-yaml": "yaml is not accepted: set task_serializer = 'json' or 'msgpack'",
}

# aiotq's own headers (a Celery worker copies unknown headers into its request and ignores them)
CHORD_HEADER = "x-aiotq-chord"
REPLY_HEADER = "x-aiotq-reply-to"
SENT_HEADER = "x-aiotq-sent-at"
DELIVERED_HEADER = "x-aiotq-delivered"  # deliveries before this copy (Redis: kombu keeps none)

# the protocol-2 headers Celery itself writes: everything else is a custom header
CELERY_HEADERS = frozenset(
    {"lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
     "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
     "replaced_task_nesting", "stamped_headers", "stamps", "redelivered",
     CHORD_HEADER, REPLY_HEADER, SENT_HEADER, DELIVERED_HEADER}
)  # fmt: skip
# the options a Celery signature may carry that an aiotq send takes (the rest are Celery's)
SIGNATURE_OPTIONS = frozenset(
    {"countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority", "task_id",
     "headers", "ignore_result", "link", "link_error", "time_limit", "soft_time_limit",
     "serializer", "retries", "parent_id", "root_id", "group_id", "chord"}
)  # fmt: skip
_CANVAS_TASKS = {"chain": "celery.chain", "group": "celery.group", "chord": "celery.chord"}

# Exceptions with one meaning and a name on each side: stored under the reader's name.
_CELERY_EXCEPTIONS = {
    ("aiotq.exceptions", "TaskRevoked"): ("celery.exceptions", "TaskRevokedError"),
    ("aiotq.exceptions", "TimeLimitExceeded"): ("billiard.exceptions", "TimeLimitExceeded"),
    ("aiotq.exceptions", "SoftTimeLimitExceeded"): (
        "billiard.exceptions", "SoftTimeLimitExceeded",
    ),
    ("aiotq.exceptions", "MaxRetriesExceededError"): (
        "celery.exceptions", "MaxRetriesExceededError",
    ),
    ("aiotq.exceptions", "Retry"): ("celery.exceptions", "Retry"),
    ("aiotq.exceptions", "NotRegistered"): ("celery.exceptions", "NotRegistered"),
}  # fmt: skip
_AIOTQ_EXCEPTIONS = {celery: ours for ours, celery in _CELERY_EXCEPTIONS.items()}
_AIOTQ_EXCEPTIONS[("celery.exceptions", "TimeLimitExceeded")] = (
    "aiotq.exceptions", "TimeLimitExceeded",
)  # fmt: skip
_AIOTQ_EXCEPTIONS[("celery.exceptions", "SoftTimeLimitExceeded")] = (
    "aiotq.exceptions", "SoftTimeLimitExceeded",
)  # fmt: skip

ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 1024
_any_json = msgspec.json.Decoder()
_any_msgpack = msgspec.msgpack.Decoder()


class CeleryTask(msgspec.Struct, frozen=True, kw_only=True):
    """A Celery task message as a broker carries it: what goes in the AMQP properties (or
    the Redis envelope's `properties`), the headers and the serialized body."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str


# -- time ------------------------------------------------------------------------------------
def iso(epoch_s: float | None) -> str | None:
    """Epoch seconds as Celery writes times: ISO 8601, timezone-aware UTC."""
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).isoformat()


def epoch(value: Any, what: str) -> float | None:
    """A Celery time (ISO 8601 string, naive read as UTC; or a number) as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise MessageRejected(f"Celery {what} {value!r} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise MessageRejected(f"Celery {what} {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- signatures (callbacks, errbacks, chain steps) --------------------------------------------
def signature_from_celery(value: Any) -> SignatureData:
    """A Celery signature dict (celery/canvas.py: task, args, kwargs, options, subtask_type,
    immutable) as aiotq's signature data; chain, group and chord by their `subtask_type`."""
    if not isinstance(value, Mapping) or not isinstance(value.get("task"), str):
        raise MessageRejected(f"not a Celery signature: {_repr.repr(value)}")
    kind = value.get("subtask_type") or "task"
    kwargs = value.get("kwargs") or {}
    options = _options_from_celery(value.get("options") or {})
    if kind == "chain":
        steps = [signature_from_celery(step) for step in kwargs.get("tasks") or []]
        return SignatureData(kind="chain", tasks=steps, options=options)
    if kind == "group":
        members = [signature_from_celery(member) for member in kwargs.get("tasks") or []]
        return SignatureData(kind="group", tasks=members, options=options)
    if kind == "chord":
        header = [signature_from_celery(member) for member in kwargs.get("header") or []]
        body = signature_from_celery(kwargs.get("body"))
        return SignatureData(kind="chord", tasks=header, body=body, options=options)
    if kind != "task" and value.get("subtask_type") is not None:
        raise MessageRejected(f"Celery signature of kind {kind!r} is not supported here")
    return SignatureData(
        task=value["task"],
        args=list(value.get("args") or []),
        kwargs=dict(kwargs),
        options=options,
        immutable=bool(value.get("immutable")),
    )


def _options_from_celery(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in options.items() if key in SIGNATURE_OPTIONS}
    for key in ("link", "link_error"):
        if out.get(key):
            links = out[key] if isinstance(out[key], list | tuple) else [out[key]]
            out[key] = [signature_from_celery(link) for link in links]
        else:
            out.pop(key, None)
    chord = out.get("chord")
    if chord is not None and not (isinstance(chord, Mapping) and "size" in chord):
        del out["chord"]  # Celery's own chord (a signature), not aiotq's count (a ChordRef)
    return out


def signature_to_celery(data: SignatureData) -> dict[str, Any]:
    """aiotq's signature data as the dict a Celery worker rebuilds a signature from."""
    options = dict(data.options)
    for key in ("link", "link_error"):
        if options.get(key):
            options[key] = [signature_to_celery(link) for link in _as_data(options[key])]
    if isinstance(options.get("chord"), ChordRef):
        options["chord"] = msgspec.to_builtins(options["chord"])
    if data.kind == "task":
        return {
            "task": data.task, "args": list(data.args), "kwargs": dict(data.kwargs),
            "options": options, "subtask_type": None, "immutable": data.immutable,
            "chord_size": None,
        }  # fmt: skip
    if data.kind == "chord":
        assert data.body is not None
        kwargs: dict[str, Any] = {
            "header": [signature_to_celery(member) for member in data.tasks],
            "body": signature_to_celery(data.body),
            "kwargs": {},
        }
    else:
        kwargs = {"tasks": [signature_to_celery(step) for step in data.tasks]}
    return {
        "task": _CANVAS_TASKS[data.kind], "args": [], "kwargs": kwargs, "options": options,
        "subtask_type": data.kind, "immutable": False, "chord_size": None,
    }  # fmt: skip


def _as_data(value: Any) -> list[SignatureData]:
    items = value if isinstance(value, list | tuple) else [value]
    return [
        item if isinstance(item, SignatureData) else msgspec.convert(item, SignatureData)
        for item in items
    ]


# -- task messages ---------------------------------------------------------------------------
def to_celery(message: Message, serializer: str) -> CeleryTask:
    """An aiotq message as Celery's protocol 2 (headers, properties, body)."""
    codec = CODECS[serializer]
    headers: dict[str, Any] = {
        **message.headers,
        "lang": "py", "task": message.task, "id": message.id, "shadow": None,
        "eta": iso(message.eta_at_s), "expires": iso(message.expires_at_s),
        "group": message.group_id, "group_index": None, "retries": message.retries,
        "timelimit": [message.time_limit_s, message.soft_time_limit_s],
        "root_id": message.root_id or message.id, "parent_id": message.parent_id,
        "argsrepr": _repr.repr(tuple(message.args)), "kwargsrepr": _repr.repr(message.kwargs),
        "origin": ORIGIN, "ignore_result": message.ignore_result,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    if message.chord is not None:
        headers[CHORD_HEADER] = msgspec.to_builtins(message.chord)
    if message.reply_to is not None:
        headers[REPLY_HEADER] = message.reply_to
    if message.sent_at_s is not None:
        headers[SENT_HEADER] = message.sent_at_s
    embed = {
        "callbacks": [signature_to_celery(s) for s in message.link] or None,
        "errbacks": [signature_to_celery(s) for s in message.link_error] or None,
        "chain": [signature_to_celery(s) for s in reversed(message.chain)] or None,
        "chord": None,
    }
    properties: dict[str, Any] = {"correlation_id": message.id, "reply_to": ""}
    if message.priority is not None:
        properties["priority"] = message.priority
    return CeleryTask(
        headers=headers,
        properties=properties,
        body=codec.encode([message.args, message.kwargs, embed]),
        content_type=CONTENT_TYPE_OF[serializer],
        content_encoding=CONTENT_ENCODING_OF[serializer],
    )


def serializer_of(content_type: str | None) -> str:
    """The aiotq codec of a Celery content type, or MessageRejected saying why not."""
    serializer = SERIALIZER_OF_CELERY.get((content_type or "").lower())
    if serializer is not None:
        return serializer
    reason = REFUSED_CONTENT.get((content_type or "").lower())
    raise MessageRejected(reason or f"Celery content type {content_type!r} is not json/msgpack")


def from_celery(
    headers: Mapping[str, Any],
    properties: Mapping[str, Any],
    body: bytes,
    content_type: str | None,
    queue: str,
) -> tuple[Message, str]:
    """A Celery task message as an aiotq Message and the serializer it came in; raises
    MessageRejected naming what is wrong (the broker dead-letters it)."""
    serializer = serializer_of(content_type)
    if "task" not in headers or "id" not in headers:
        raise MessageRejected(
            "not a Celery protocol 2 task message (no task/id headers; protocol 1 is refused:"
            " set task_protocol = 2 on the Celery side)"
        )
    try:
        decoded = (_any_json if serializer == "json" else _any_msgpack).decode(body)
    except Exception as exc:  # any input: a malformed body must never kill the worker
        raise MessageRejected(f"undecodable {serializer} Celery body: {exc}") from None
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise MessageRejected("Celery body is not [args, kwargs, embed]")
    args, kwargs, embed = decoded
    embed = embed or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        raise MessageRejected("Celery body is not [args (list), kwargs (map), embed (map)]")
    if embed.get("chord"):
        raise MessageRejected(
            "a Celery chord member: Celery counts its chords in keys of its own, which aiotq"
            " does not write (run the chord's header on Celery workers)"
        )
    task_id, name = headers["id"], headers["task"]
    if not isinstance(task_id, str) or not isinstance(name, str):
        raise MessageRejected("Celery task/id headers are not strings")
    hard, soft = _time_limits(headers.get("timelimit"))
    try:
        chain = [signature_from_celery(step) for step in reversed(embed.get("chain") or [])]
        link = [signature_from_celery(s) for s in embed.get("callbacks") or []]
        link_error = [signature_from_celery(s) for s in embed.get("errbacks") or []]
        chord = headers.get(CHORD_HEADER)
        message = Message(
            id=task_id,
            task=name,
            args=args,
            kwargs=kwargs,
            retries=int(headers.get("retries") or 0),
            eta_at_s=epoch(headers.get("eta"), "eta"),
            expires_at_s=epoch(headers.get("expires"), "expires"),
            time_limit_s=hard,
            soft_time_limit_s=soft,
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id") or task_id,
            group_id=headers.get("group"),
            link=link,
            link_error=link_error,
            chain=chain,
            chord=msgspec.convert(chord, ChordRef) if chord else None,
            ignore_result=bool(headers.get("ignore_result")),
            priority=_priority(properties.get("priority")),
            queue=queue,
            reply_to=headers.get(REPLY_HEADER),
            headers={k: v for k, v in headers.items() if k not in CELERY_HEADERS},
            sent_at_s=headers.get(SENT_HEADER),
        )
    except (TypeError, ValueError, msgspec.ValidationError) as exc:
        raise MessageRejected(f"malformed Celery message {task_id}: {exc}", task_id) from None
    return message, serializer


def _time_limits(value: Any) -> tuple[float | None, float | None]:
    """`timelimit` is `[hard, soft]` (as_task_v2 writes it so)."""
    if not value:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise MessageRejected(f"Celery timelimit {value!r} is not [hard, soft]")
    hard, soft = (None if v is None else float(v) for v in value)
    return hard, soft


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return min(max(int(value), 0), 9)
    except (TypeError, ValueError):
        return None


# -- results ---------------------------------------------------------------------------------
def meta_from_record(record: ResultRecord) -> dict[str, Any]:
    """A result record as the map Celery's backend stores at `celery-task-meta-<id>`."""
    result: Any = record.result
    if record.failure is not None:
        result = exception_meta(record.failure)
    meta: dict[str, Any] = {
        "status": record.state,
        "result": result,
        "traceback": record.traceback,
        "children": [[[child, None], None] for child in record.children],
        "date_done": iso(record.date_done_s) if record.state in READY_STATES else None,
        "task_id": record.task_id,
    }
    if record.parent_id:
        meta["parent_id"] = record.parent_id
    if record.args is not None or record.worker is not None:  # result_extended on
        meta.update(
            name=record.task, args=record.args, kwargs=record.kwargs, worker=record.worker,
            retries=record.retries, queue=record.queue,
        )  # fmt: skip
    return meta


def exception_meta(failure: Failure) -> dict[str, Any]:
    module, name = _CELERY_EXCEPTIONS.get(
        (failure.module, failure.type), (failure.module, failure.type)
    )
    message = failure.args if failure.args is not None else [failure.message]
    return {"exc_type": name, "exc_message": message, "exc_module": module}


def record_from_meta(meta: Any) -> ResultRecord:
    """Celery's result map as a result record; ValueError when it is not one."""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("status"), str):
        raise ValueError(f"not a Celery result: {_repr.repr(meta)}")
    result, failure = meta.get("result"), None
    traceback = meta.get("traceback")
    if isinstance(result, Mapping) and "exc_type" in result:
        failure = _failure(result, traceback if isinstance(traceback, str) else None)
        result = None
    task_id = meta.get("task_id")
    return ResultRecord(
        task_id=task_id if isinstance(task_id, str) else "",
        state=meta["status"],
        result=result,
        failure=failure,
        date_done_s=_date(meta.get("date_done")),
        retries=int(meta.get("retries") or 0),
        task=meta.get("name"),
        parent_id=meta.get("parent_id"),
        children=[i for child in meta.get("children") or [] if (i := _child_id(child))],
        args=meta.get("args"),
        kwargs=meta.get("kwargs"),
        worker=meta.get("worker"),
        queue=meta.get("queue"),
    )


def _failure(exc: Mapping[str, Any], traceback: str | None) -> Failure:
    module = str(exc.get("exc_module") or "builtins")
    name = str(exc.get("exc_type"))
    module, name = _AIOTQ_EXCEPTIONS.get((module, name), (module, name))
    raw = exc.get("exc_message")
    args = list(raw) if isinstance(raw, list | tuple) else [raw]
    message = str(args[0]) if len(args) == 1 else str(tuple(args))
    return Failure(type=name, module=module, message=message, args=args, traceback=traceback)


def _date(value: Any) -> float | None:
    try:
        return epoch(value, "date_done")
    except MessageRejected:
        return None


def _child_id(child: Any) -> str | None:
    """A child as Celery stores it: `[[id, parent], None]` (a task) or `[[id, parent],
    [members]]` (a group); an id alone is taken too."""
    while isinstance(child, list | tuple) and child:
        child = child[0]
    return child if isinstance(child, str) else None


def decode_meta(data: bytes) -> Any:
    """A stored Celery result: JSON (`{`) or MessagePack, whichever Celery's
    result_serializer wrote. Any error is a ValueError."""
    try:
        return (_any_json if data[:1] in (b"{", b" ") else _any_msgpack).decode(data)
    except Exception as exc:
        raise ValueError(f"undecodable Celery result: {exc}") from None


# -- kombu's Redis envelope (kombu/transport/virtual/base.py) ----------------------------------
class Envelope:
    """kombu's JSON envelope around a Celery message on Redis, read or written."""

    @staticmethod
    def write(
        message_body: bytes, content_type: str, queue: str, priority: int | None
    ) -> dict[str, Any]:
        aiotq_message = decode_message(message_body, content_type, frozenset(CONTENT_TYPES))
        serializer = "msgpack" if content_type == CONTENT_TYPES["msgpack"] else "json"
        task = to_celery(aiotq_message, serializer)
        return {
            "body": base64.b64encode(task.body).decode(),
            "content-encoding": task.content_encoding,
            "content-type": task.content_type,
            "headers": task.headers,
            "properties": {
                **task.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority or 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }

    @staticmethod
    def read(payload: Any, queue: str) -> tuple[bytes, dict[str, str], Any]:
        """The aiotq body and delivery headers of an envelope, and the message; raises
        MessageRejected saying what is wrong."""
        if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
            raise MessageRejected("not a kombu envelope")
        properties = payload["properties"]
        headers = payload.get("headers") or {}
        raw = payload.get("body", "")
        if properties.get("body_encoding") == "base64":
            try:
                body = base64.b64decode(raw, validate=True)
            except (ValueError, TypeError) as exc:
                raise MessageRejected(f"bad base64 body: {exc}") from None
        else:
            body = raw.encode() if isinstance(raw, str) else bytes(raw)
        message, serializer = from_celery(
            headers, properties, body, payload.get("content-type"), queue
        )
        codec = CODECS[serializer]
        delivery_headers = {"content-type": codec.content_type, "id": message.id,
                            "task": message.task}  # fmt: skip
        return codec.encode(message), delivery_headers, message


def delivery_count(payload: dict[str, Any]) -> int:
    """This delivery's number: kombu keeps no count, only `redelivered`; aiotq adds one."""
    headers = payload.get("headers") or {}
    before = headers.get(DELIVERED_HEADER)
    if isinstance(before, int) and before >= 0:
        return before + 1
    info = payload["properties"].get("delivery_info") or {}
    return 2 if headers.get("redelivered") or info.get("redelivered") else 1


def marked_redelivered(envelope: bytes, delivered: int) -> bytes:
    """The envelope marked redelivered (as kombu's restore does), with its count."""
    payload = json.loads(envelope)
    payload.setdefault("headers", {})
    payload["headers"]["redelivered"] = True
    payload["headers"][DELIVERED_HEADER] = delivered
    payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
    return json.dumps(payload).encode()
