"""The send path: option checks, routing, encoding, publishing, and the sync portal.

Every message leaves through one `Producer`: a task's `send`/`delay`/`apply_async`, a
signature or canvas, a worker's retries and follow-ups, beat. The App builds it; the layers
above (task, canvas, result) hold it, never the App. It sees the broker, the result store and
the settings through a `Wiring` that the App makes on first use (settings frozen then, so a
bad URL fails at the first send, naming it).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from . import unique
from ._portal import Portal
from .brokers.base import Outgoing
from .events import send_sent
from .exceptions import ConfigurationError
from .protocol import CODECS, READY_STATES, Message, chord_ref, decode_record, signature_list
from .request import current_request
from .routing import Topology, resolve_route
from .settings import Config, Settings
from .signals import after_task_publish, before_task_publish
from .tracing import Tracing

if TYPE_CHECKING:
    from .backends.base import Coordinator, ReplyRouting, ResultStore
    from .brokers.base import Broker

T = TypeVar("T")

SEND_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority",
        "task_id", "headers", "ignore_result", "link", "link_error", "time_limit",
        "soft_time_limit", "serializer", "retries", "parent_id", "root_id", "group_id",
        "chain", "chord", "unique_key",
    }
)  # fmt: skip

SIGNATURE_HEADER = "x-aiotq-signature"  # hex HMAC-SHA256 of the body (task_signing_key)


@dataclass(frozen=True, slots=True)
class Wiring:
    """What sending needs that exists only once the App is finalized."""

    settings: Settings
    broker: Broker
    backend: ResultStore
    topology: Topology
    coordinator: Coordinator | None = None  # None with rpc://
    replies: ReplyRouting | None = None  # rpc://: results go to the caller's own queue


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A checked, routed call, ready to encode."""

    message: Message
    serializer: str | None
    queues: list[str]
    exchange: str | None
    unique: tuple[str, float] | None = None  # (lease name, TTL from now): a unique job


class Registered(Protocol):
    """What the send path reads of a registered task (task.py's `Task`)."""

    expires: float | None
    queue: str | None
    priority: int | None
    unique_ttl: float | None

    def check_call(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None: ...

    def unique_key_of(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None: ...


# one call for `send_many`: (task name, args, kwargs, options, the registered task or None)
Call = tuple[str, Sequence[Any], dict[str, Any], dict[str, Any], Registered | None]
# (signature, extra args, extra kwargs, options) -> its eager result(s)
EagerCanvas = Callable[[Any, Sequence[Any], dict[str, Any] | None, dict[str, Any]], Awaitable[Any]]


class Producer:
    """`tasks`: the registry (name -> task); `wire()`: the App's finalize, cached there."""

    def __init__(
        self, name: str, conf: Config, tasks: Mapping[str, Registered], wire: Callable[[], Wiring]
    ) -> None:
        self.conf = conf
        self.tasks = tasks
        self.portal = Portal(name)
        self._wire = wire
        self._tracing: Tracing | None = None
        # runs a signature here and now under task_always_eager: set by the App
        # (aiotq/eager_canvas.py sits above the canvas, which calls it through this)
        self.eager_canvas: EagerCanvas | None = None

    @property
    def tracing(self) -> Tracing:
        """OpenTelemetry spans for sends and runs (made with the wiring: settings frozen)."""
        if self._tracing is None:
            wiring = self.wiring
            self._tracing = Tracing(wiring.settings.tracing, wiring.broker.url)
        return self._tracing

    @property
    def wiring(self) -> Wiring:
        return self._wire()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the portal loop from sync code and return its value."""
        return self.portal.call(coro)

    async def send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task: Registered | None = None,
    ) -> str:
        """Check, route, encode and publish one task call; return its id (a unique job
        whose key another task holds publishes nothing and returns that task's id)."""
        out = await self._prepare(name, args, kwargs, options, task)
        task_id, held = out.message.id, out.unique
        if held is not None:
            first = await unique.claim(self._coordinator, held[0], task_id, held[1], self._finished)
            if first is not None:
                return first
        try:
            message, publishes = await self._encoded(
                out.message, out.serializer, out.queues, out.exchange
            )
            exchange = out.exchange
            del out  # nothing of the message but its id is kept while the broker confirms...
            keep = after_task_publish.has_receivers() or self._follow_ups
            kept = message if keep else None
            del message  # ...unless something after the publish needs it
            publish = self.wiring.broker.publish
            for queue, body, headers, delay_s, priority in publishes:
                await publish(queue, body, headers, delay_s=delay_s, priority=priority)
        except BaseException:
            if held is not None:  # it never left: its key is free at once, not after the TTL
                await unique.unclaim(self._coordinator, [(held[0], task_id)])
            raise
        if kept is not None:
            await self._published(kept, exchange)
            await self._sent(kept)
        return task_id

    @property
    def _follow_ups(self) -> bool:
        """Whether a sent message is counted or announced (metrics, task-sent events)."""
        settings = self.wiring.settings
        return settings.producer_metrics or settings.task_send_sent_event

    async def send_many(self, calls: Sequence[Call], what: str = "send_many: item") -> list[str]:
        """Check every call first (an error names the index of the bad one, as `what N`, and
        nothing is sent), then publish them all in one pipeline (`Broker.publish_many`): the
        whole batch is as safe as one send once this returns. Returns their ids, in order."""
        prepared: list[_Outgoing] = []
        for index, (name, args, kwargs, options, task) in enumerate(calls):
            try:
                prepared.append(await self._prepare(name, args, kwargs, options, task))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{what} {index}: {exc}") from None
        ids = [out.message.id for out in prepared]
        claims = await self._claim_many(prepared, ids)
        try:
            outgoing: list[Outgoing] = []
            sent: list[tuple[Message, str | None]] = []
            for index, out in enumerate(prepared):
                if ids[index] != out.message.id:
                    continue  # a unique job queued already: its holder's id is handed out
                try:
                    message, publishes = await self._encoded(
                        out.message, out.serializer, out.queues, out.exchange
                    )
                except TypeError as exc:
                    raise TypeError(f"{what} {index}: {exc}") from None
                sent.append((message, out.exchange))
                outgoing.extend(publishes)
            await self.wiring.broker.publish_many(outgoing)
        except BaseException:
            if claims:
                await unique.unclaim(self._coordinator, claims)
            raise
        for message, exchange in sent:
            await self._published(message, exchange)
            await self._sent(message)
        return ids

    async def _claim_many(
        self, prepared: Sequence[_Outgoing], ids: list[str]
    ) -> list[tuple[str, str]]:
        """Take the keys of a batch's unique jobs at once: where another task (or another call
        of the batch) holds a key, `ids` gets its id. Returns the keys taken here."""
        keyed = [(i, out.unique) for i, out in enumerate(prepared) if out.unique is not None]
        if not keyed:
            return []
        coordinator = self._coordinator
        firsts = await asyncio.gather(
            *(
                unique.claim(coordinator, lease, ids[i], ttl_s, self._finished)
                for i, (lease, ttl_s) in keyed
            ),
            return_exceptions=True,
        )
        claims: list[tuple[str, str]] = []
        error: BaseException | None = None
        for (index, (lease, _)), first in zip(keyed, firsts, strict=True):
            if isinstance(first, BaseException):
                error = error or first
            elif first is None:
                claims.append((lease, ids[index]))
            else:
                ids[index] = first
        if error is not None:
            await unique.unclaim(coordinator, claims)
            raise error
        return claims

    async def _finished(self, task_id: str) -> bool:
        """Whether the task's final result is stored (a unique key's holder that is done)."""
        data = await self.wiring.backend.get(task_id)
        return data is not None and decode_record(data).state in READY_STATES

    @property
    def _coordinator(self) -> Coordinator:
        coordinator = self.wiring.coordinator
        assert coordinator is not None  # _prepare refuses a unique job without one
        return coordinator

    async def _prepare(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task: Registered | None,
    ) -> _Outgoing:
        """Check and route one call into its Message (nothing is sent)."""
        unknown = set(options) - SEND_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
        wiring = self.wiring
        settings = wiring.settings
        task = task or self.tasks.get(name)
        if task is not None:
            task.check_call(args, kwargs)
        route = resolve_route(settings.task_routes, name, args, kwargs)
        opt = {**route, **{k: v for k, v in options.items() if v is not None}}
        parent = current_request.get()
        parent_id = opt.get("parent_id") or (parent.id if parent else None)
        root_id = opt.get("root_id") or (parent.root_id or parent.id if parent else None)
        task_id = opt.get("task_id") or str(uuid.uuid4())
        countdown = opt.get("countdown")
        eta_at_s = _epoch(opt.get("eta"), relative=False)
        now = time.time()
        if countdown is not None:
            eta_at_s = now + float(countdown)
        headers = dict(opt.get("headers") or {})
        held = self._unique(name, args, kwargs, opt, task)
        if held is not None:  # the worker gives the key up (or renews it) by these
            headers[unique.HEADER], headers[unique.TTL_HEADER] = held
            # held from now until the task is due, and for its TTL after that
            held = held[0], held[1] + max(0.0, (eta_at_s or now) - now)
        expires = opt.get("expires", task.expires if task else None)
        queue = opt.get("queue") or (task.queue if task else None) or settings.task_default_queue
        targets = wiring.topology.targets(queue, opt.get("exchange"), opt.get("routing_key"))
        replies = wiring.replies
        message = Message(
            reply_to=await replies.reply_to() if replies is not None else None,
            id=task_id,
            task=name,
            args=list(args),
            kwargs=dict(kwargs),
            retries=int(opt.get("retries", 0)),
            eta_at_s=eta_at_s,
            expires_at_s=_epoch(expires, relative=True),
            time_limit_s=opt.get("time_limit"),
            soft_time_limit_s=opt.get("soft_time_limit"),
            parent_id=parent_id,
            root_id=root_id or task_id,
            group_id=opt.get("group_id"),
            link=signature_list(opt.get("link")),
            link_error=signature_list(opt.get("link_error")),
            chain=signature_list(opt.get("chain")),
            chord=chord_ref(opt.get("chord")),
            ignore_result=bool(opt.get("ignore_result", False)),
            priority=opt.get("priority", task.priority if task else settings.task_default_priority),
            queue=targets[0],
            routing_key=opt.get("routing_key"),
            headers=headers,
            sent_at_s=now,
        )
        if message.priority is not None and not 0 <= message.priority <= 9:
            raise ValueError(f"priority of {name} must be 0-9 (9 first), got {message.priority}")
        return _Outgoing(message, opt.get("serializer"), targets, opt.get("exchange"), held)

    def _unique(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        opt: Mapping[str, Any],
        task: Registered | None,
    ) -> tuple[str, float] | None:
        """(lease name, TTL) of a unique job, or None. A task's own `unique=` does not apply
        to a send that fixed its task_id (a canvas member, a callback: their ids are awaited
        already); `unique_key=` always does."""
        key = opt.get("unique_key")
        if key is not None:
            if not isinstance(key, str) or not key:
                raise TypeError(f"unique_key of {name} must be a non-empty str, got {key!r}")
            if opt.get("group_id") or opt.get("chord"):
                raise TypeError(
                    f"unique_key of {name}: a member of a group or chord cannot be"
                    " deduplicated (the canvas counts each member's own result)"
                )
        elif task is not None and "task_id" not in opt:
            key = task.unique_key_of(args, kwargs)
        if key is None:
            return None
        wiring = self.wiring
        if wiring.coordinator is None:
            raise ConfigurationError(
                f"{name} is a unique job, which needs a result backend that can hold its key"
                f" (redis://, sqlite://); {wiring.backend.url} keeps nothing"
            )
        ttl_s = task.unique_ttl if task is not None else None
        return unique.lease_name(name, key), ttl_s or wiring.settings.task_unique_ttl_s

    async def _sent(self, message: Message) -> None:
        """What follows a send that left: the sent counter and the task-sent event."""
        settings = self.wiring.settings
        if settings.producer_metrics:
            _sent_total().labels(message.task, _HOSTNAME, message.queue or "").inc()
        if settings.task_send_sent_event:
            await send_sent(
                self.wiring.broker, message, keep=settings.event_keep,
                ttl_s=settings.event_ttl_s, value_max=settings.event_value_max,
            )  # fmt: skip

    async def publish_message(
        self,
        message: Message,
        serializer: str | None = None,
        queues: Sequence[str] = (),
        exchange: str | None = None,
    ) -> None:
        """Encode and publish to `queues` (default: the message's own queue; a fanout has
        several); the one path for first sends and retries."""
        message, publishes = await self._encoded(message, serializer, queues, exchange)
        broker = self.wiring.broker
        for out in publishes:
            await broker.publish(
                out.queue, out.body, out.headers, delay_s=out.delay_s, priority=out.priority
            )
        await self._published(message, exchange)

    async def _encoded(
        self,
        message: Message,
        serializer: str | None,
        queues: Sequence[str],
        exchange: str | None,
    ) -> tuple[Message, list[Outgoing]]:
        """before_task_publish, then the encoded body and headers for each target queue (the
        tracing span's context rides in the message's headers)."""
        wiring = self.wiring
        if before_task_publish.has_receivers():
            message = await _before_publish(message, exchange)
        codec = CODECS.get(serializer or wiring.settings.task_serializer)
        if codec is None:
            raise ConfigurationError(f"unknown serializer {serializer!r}")
        tracing = self._tracing or self.tracing
        with tracing.publishing(message, message.headers):
            try:
                body = codec.encode(message)
            except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
                raise _encode_error(message, codec.name, exc) from None
        delay_s = max(0.0, message.eta_at_s - time.time()) if message.eta_at_s else 0.0
        headers = {"content-type": codec.content_type, "id": message.id, "task": message.task}
        priority = message.priority
        if priority is not None:
            headers["priority"] = str(priority)
        signing = wiring.settings.task_signing_key
        if signing is not None:
            headers[SIGNATURE_HEADER] = signing.sign(body)
        assert message.queue is not None
        publishes = [
            Outgoing(queue, body, headers, delay_s, priority) for queue in queues or [message.queue]
        ]
        return message, publishes

    async def _published(self, message: Message, exchange: str | None) -> None:
        if after_task_publish.has_receivers():
            await after_task_publish.asend(
                sender=message.task, body=_body(message), exchange=exchange or "",
                routing_key=message.routing_key or message.queue,
            )  # fmt: skip

    def close(self, cleanup: Coroutine[Any, Any, None] | None = None) -> None:
        """Close the sync portal, running `cleanup` on its loop first."""
        self.portal.close(cleanup)


def call_pairs(
    name: str, calls: Iterable[Any], options: Mapping[str, Any]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """`send_many`'s items as (args, kwargs) pairs, or a TypeError naming the bad index."""
    if "task_id" in options:
        raise TypeError(f"send_many of {name}: one task_id cannot be shared by every call")
    if options.get("unique_key") is not None:
        raise TypeError(
            f"send_many of {name}: one unique_key would make every call the same job; key"
            " each call with @task(unique=...)"
        )
    pairs = []
    for index, call in enumerate(calls):
        if not (
            isinstance(call, (tuple, list))
            and len(call) == 2
            and isinstance(call[0], (tuple, list))
            and isinstance(call[1], Mapping)
        ):
            raise TypeError(
                f"send_many of {name}: item {index} must be (args, kwargs), e.g. ((1, 2), {{}}),"
                f" got {call!r:.80}"
            )
        pairs.append((tuple(call[0]), dict(call[1])))
    return pairs


class HasProducer(Protocol):
    @property
    def producer(self) -> Producer: ...


def producer_of(source: Producer | HasProducer | None) -> Producer | None:
    """`app=` arguments (AsyncResult(id, app=app), chain(..., app=app)) take an App or a
    Producer: the layers below the App keep only its producer."""
    if source is None or isinstance(source, Producer):
        return source
    return source.producer


_HOSTNAME = socket.gethostname()


@functools.cache
def _sent_total() -> Any:
    """`celery_task_sent_total` in the sending process's default prometheus_client registry
    (`producer_metrics = True`): the web app exposes it with its own metrics."""
    from prometheus_client import Counter

    return Counter("celery_task_sent_total", "Tasks sent.", ["name", "hostname", "queue_name"])


# what before_task_publish's `headers` hold besides the message's own headers (Celery's
# protocol 2 names); a receiver may add headers of its own, which then travel with it
_STANDARD_HEADERS = frozenset(
    {"lang", "task", "id", "eta", "expires", "group", "retries", "timelimit", "root_id",
     "parent_id", "origin"}
)  # fmt: skip


def _body(message: Message) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Celery's body: (args, kwargs, embed)."""
    embed = {
        "callbacks": message.link or None, "errbacks": message.link_error or None,
        "chain": message.chain or None, "chord": message.chord,
    }  # fmt: skip
    return message.args, message.kwargs, embed


async def _before_publish(message: Message, exchange: str | None) -> Message:
    """before_task_publish, with Celery's arguments; headers a receiver adds are sent."""
    headers: dict[str, Any] = {
        "lang": "py", "task": message.task, "id": message.id, "eta": message.eta_at_s,
        "expires": message.expires_at_s, "group": message.group_id, "retries": message.retries,
        "timelimit": [message.time_limit_s, message.soft_time_limit_s],
        "root_id": message.root_id, "parent_id": message.parent_id, "origin": _HOSTNAME,
        **message.headers,
    }  # fmt: skip
    properties = {
        "correlation_id": message.id, "reply_to": message.reply_to,
        "priority": message.priority,
    }  # fmt: skip
    await before_task_publish.asend(
        sender=message.task, body=_body(message), exchange=exchange or "",
        routing_key=message.routing_key or message.queue, headers=headers,
        properties=properties, declare=[], retry_policy=None,
    )  # fmt: skip
    own = {k: v for k, v in headers.items() if k not in _STANDARD_HEADERS}
    if own != message.headers:
        message = msgspec.structs.replace(message, headers=own)
    return message


def _epoch(value: datetime | float | None, *, relative: bool) -> float | None:
    """eta/expires as absolute epoch seconds; numbers (and timedelta) are relative for expires."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return time.time() + value.total_seconds()
    return time.time() + float(value) if relative else float(value)


def _encode_error(message: Message, serializer: str, exc: Exception) -> TypeError:
    """Name the argument that cannot be encoded."""
    encode = CODECS[serializer].encode
    culprits = [(f"argument {i}", v) for i, v in enumerate(message.args)]
    culprits += [(f"keyword argument {k!r}", v) for k, v in message.kwargs.items()]
    for label, value in culprits:
        try:
            encode(value)
        except Exception as inner:
            return TypeError(
                f"{label} of {message.task} ({type(value).__name__}) "
                f"cannot be sent as {serializer}: {inner}"
            )
    return TypeError(f"message for {message.task} cannot be encoded as {serializer}: {exc}")
