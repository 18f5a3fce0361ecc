"""Remote control, the caller's side: `app.control` and `app.control.inspect()`, as in Celery.

A command is posted once on the broker's bus (topic `control`, see brokers/bus.py); every
worker hears it and answers on the caller's own reply topic (`reply.<ticket>`, kept a
minute at most: no key or queue is left behind). The caller knows who is alive from the
presence records (aiotq/presence.py), so it returns as soon as every one of them has
answered; the timeout only bounds a worker that is alive and silent (paused, its loop
blocked). Celery waits out the whole timeout every time, because it cannot know.

Revokes are durable: the id is written to the coordinator with a TTL (`revoke_expires_s`)
before the command goes out, so a worker that starts later, or was offline, still refuses
the task; the result turns REVOKED at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import msgspec

from ._portal import in_running_loop
from .exceptions import TaskRevoked
from .presence import Presence, live_workers
from .producer import Producer
from .protocol import CODECS, READY_STATES, Failure, ResultRecord, decode_record
from .settings import parse_rate

T = TypeVar("T")

TOPIC = "control"
KEEP = 1000  # commands the broker keeps for a worker that reconnects
TTL_S = 60.0
REPLY_TTL_S = 60.0
STALE_AFTER_S = 10.0  # a command heard this long after its timeout is not acted on
REVOKED_PREFIX = "revoked:"

INSPECT_METHODS = (
    "ping", "active", "reserved", "scheduled", "registered", "stats", "active_queues",
    "revoked", "conf", "query_task",
)  # fmt: skip


class Command(msgspec.Struct, kw_only=True, omit_defaults=True):
    method: str
    ticket: str
    expires_at_s: float
    arguments: dict[str, Any] = {}
    destination: list[str] | None = None
    reply_to: str | None = None


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    ticket: str
    hostname: str
    pid: int
    ok: Any = None
    error: str | None = None


_encode = msgspec.json.Encoder().encode
decode_command = msgspec.json.Decoder(Command).decode
_decode_reply = msgspec.json.Decoder(Reply).decode


def encode(item: Command | Reply) -> bytes:
    return _encode(item)


def _destination(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _node_names(replies: Sequence[Reply]) -> list[str]:
    """Each reply's key in the answer: the hostname, with the pid when two share it."""
    counts: dict[str, int] = {}
    for reply in replies:
        counts[reply.hostname] = counts.get(reply.hostname, 0) + 1
    return [r.hostname if counts[r.hostname] == 1 else f"{r.hostname}/{r.pid}" for r in replies]


class Control:
    """`app.control`. Every method is awaitable inside a running event loop and returns its
    value directly in sync code (run on the app's portal), like AsyncResult."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def _run(self, coro: Coroutine[Any, Any, T]) -> Any:
        if in_running_loop():
            return coro
        return self.producer.call(coro)

    def inspect(
        self, destination: str | Iterable[str] | None = None, timeout: float = 1.0
    ) -> Inspect:
        return Inspect(self, _destination(destination), timeout)

    async def workers(self, destination: Sequence[str] | None = None) -> list[Presence] | None:
        """The live workers (of `destination`, if given); None when there is no coordinator
        to ask (rpc:// results): then a broadcast waits for its whole timeout."""
        coordinator = self.producer.wiring.coordinator
        if coordinator is None:
            return None
        found = await live_workers(coordinator)
        if destination is not None:
            found = [p for p in found if p.hostname in destination]
        return found

    async def abroadcast(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,  # noqa: ASYNC109  (Celery's name)
    ) -> list[dict[str, Any]]:
        """Send `method` to the workers; with `reply`, their answers as [{hostname: answer}]
        once every live worker answered (or at the timeout)."""
        broker = self.producer.wiring.broker
        nodes = _destination(destination)
        ticket = uuid.uuid4().hex
        command = Command(
            method=method, ticket=ticket, arguments=arguments or {}, destination=nodes,
            expires_at_s=time.time() + timeout + STALE_AFTER_S,
            reply_to=f"reply.{ticket}" if reply else None,
        )  # fmt: skip
        if not reply:
            await broker.post(TOPIC, encode(command), keep=KEEP, ttl_s=TTL_S)
            return []
        assert command.reply_to is not None
        expected = await self.workers(nodes)
        subscription = await broker.subscribe(command.reply_to)
        try:
            await broker.post(TOPIC, encode(command), keep=KEEP, ttl_s=TTL_S)
            replies = await _collect(subscription, ticket, expected, timeout)
        finally:
            await subscription.aclose()
        names = _node_names(replies)
        return [
            {name: r.ok if r.error is None else {"error": r.error}}
            for name, r in zip(names, replies, strict=True)
        ]

    def broadcast(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        return self._run(self.abroadcast(method, arguments, destination, reply, timeout))

    def ping(self, destination: str | Iterable[str] | None = None, timeout: float = 1.0) -> Any:
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: str | Iterable[str] | None = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        return self._run(self.arevoke(ids, destination, terminate, signal, reply, timeout))

    async def arevoke(
        self,
        ids: list[str],
        destination: str | Iterable[str] | None = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        reply: bool = False,
        timeout: float = 1.0,  # noqa: ASYNC109  (Celery's name)
    ) -> list[dict[str, Any]]:
        """`revoke()`'s async form (AsyncResult.revoke and the CLI use it)."""
        await store_revokes(self.producer, ids, terminate)
        arguments = {"task_ids": ids, "terminate": terminate, "signal": signal}
        return await self.abroadcast("revoke", arguments, destination, reply, timeout)

    def terminate(self, task_id: str | Iterable[str], **options: Any) -> Any:
        return self.revoke(task_id, terminate=True, **options)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | None,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        """`"10/s"`, `"100/m"`, `"1000/h"`, or None / `"0"` to lift the limit."""
        if rate_limit not in (None, "0", 0):
            parse_rate(rate_limit)  # a bad rate fails here, not in every worker
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, reply, timeout)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, reply, timeout)

    def add_consumer(
        self,
        queue: str,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        return self.broadcast("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self,
        queue: str,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)

    def shutdown(
        self,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Any:
        """A warm stop of the workers (all of them unless `destination` names some)."""
        return self.broadcast("shutdown", destination=destination, reply=reply, timeout=timeout)

    def enable_events(self, destination: str | Iterable[str] | None = None) -> Any:
        return self.broadcast("enable_events", destination=destination)

    def disable_events(self, destination: str | Iterable[str] | None = None) -> Any:
        return self.broadcast("disable_events", destination=destination)


class Inspect:
    """`app.control.inspect(destination=None, timeout=1.0)`: each method returns
    {hostname: answer} from every worker that answered ({} when none did)."""

    def __init__(self, control: Control, destination: list[str] | None, timeout: float) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    async def arequest(self, method: str, **arguments: Any) -> dict[str, Any]:
        replies = await self.control.abroadcast(
            method, arguments, self.destination, reply=True, timeout=self.timeout
        )
        return {name: answer for item in replies for name, answer in item.items()}

    def _request(self, method: str, **arguments: Any) -> Any:
        return self.control._run(self.arequest(method, **arguments))

    def ping(self) -> Any:
        return self._request("ping")

    def active(self) -> Any:
        return self._request("active")

    def reserved(self) -> Any:
        return self._request("reserved")

    def scheduled(self) -> Any:
        return self._request("scheduled")

    def registered(self) -> Any:
        return self._request("registered")

    registered_tasks = registered

    def stats(self) -> Any:
        return self._request("stats")

    def active_queues(self) -> Any:
        return self._request("active_queues")

    def revoked(self) -> Any:
        return self._request("revoked")

    def conf(self) -> Any:
        return self._request("conf")

    def query_task(self, *ids: str) -> Any:
        return self._request("query_task", task_ids=list(ids))


async def _collect(
    subscription: Any, ticket: str, expected: list[Presence] | None, wait_s: float
) -> list[Reply]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    waiting = None if expected is None else {(p.hostname, p.pid) for p in expected}
    got: dict[tuple[str, int], Reply] = {}
    while waiting is None or not waiting <= got.keys():
        left = deadline - loop.time()
        if left <= 0:
            break
        for body in await subscription.next(min(left, 0.5)):
            try:
                reply = _decode_reply(body)
            except msgspec.DecodeError:
                continue
            if reply.ticket == ticket:
                got[(reply.hostname, reply.pid)] = reply
    return sorted(got.values(), key=lambda r: (r.hostname, r.pid))


async def store_revokes(producer: Producer, ids: Sequence[str], terminate: bool) -> None:
    """Durable first: the ids go to the coordinator (with the TTL `revoke_expires_s`), and
    each result not yet final turns REVOKED. Then the workers are told (`revoke`)."""
    wiring = producer.wiring
    settings = wiring.settings
    now = time.time()
    if wiring.coordinator is not None:
        mark = _encode({"terminate": terminate, "at_s": now})
        for task_id in ids:
            await wiring.coordinator.put(REVOKED_PREFIX + task_id, mark, settings.revoke_expires_s)
    if wiring.replies is not None:
        return  # rpc://: nothing is kept for anyone to read
    codec = CODECS[settings.result_serializer]
    backend = wiring.backend
    records = []
    for task_id in ids:
        data = await backend.get(task_id)
        if data is not None and decode_record(data).state in READY_STATES:
            continue  # it finished already: a revoke does not rewrite history
        failure = Failure.of(TaskRevoked(f"task {task_id} was revoked"))
        record = ResultRecord(task_id=task_id, state="REVOKED", failure=failure, date_done_s=now)
        records.append((task_id, codec.encode(record)))
    if records:
        await backend.store(records, settings.result_expires_s)


async def revoked_ids(producer: Producer) -> dict[str, bool]:
    """Every revoke still kept: task id -> terminate."""
    coordinator = producer.wiring.coordinator
    if coordinator is None:
        return {}
    found = await coordinator.scan(REVOKED_PREFIX)
    marks: dict[str, bool] = {}
    for key, data in found.items():
        try:
            terminate = bool(msgspec.json.decode(data).get("terminate", False))
        except (msgspec.DecodeError, AttributeError):
            terminate = False
        marks[key.removeprefix(REVOKED_PREFIX)] = terminate
    return marks
