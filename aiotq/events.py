"""Task and worker events, as Celery names them, over the broker's bus (topic `events`).

An event is a JSON object with Celery's fields (`type`, `uuid`, `hostname`, `timestamp`,
`clock`, `pid`, ... see docs/monitoring.md); a post is a JSON list of them: a worker sends
what happened in one tick as one post, so events cost one broker write per tick, not per
task. The broker keeps the last `event_keep` posts (a capped stream on Redis, a ring table
on SQLite), so a monitor that starts late replays the recent past; on RabbitMQ each monitor
has a capped queue of its own. Nothing waits for a monitor: a slow or absent one never
slows a worker, and a worker whose broker is down drops its oldest unsent events (counted)
instead of growing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from ._loops import flush_every
from .brokers.bus import Bus
from .exceptions import AiotqError, Transient

log = logging.getLogger("aiotq.events")

TOPIC = "events"
BUFFER_CAP = 10_000  # events waiting for the next post, at most
TASK_EVENTS = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-rejected", "task-revoked",
)  # fmt: skip
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")

_PRODUCER = f"producer@{socket.gethostname()}"
_encode = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(list[dict[str, Any]]).decode


def capped(value: Any, limit: int) -> Any:
    """`value` itself when its JSON is small (a monitor or dashboard can reuse real args),
    else its repr cut to `limit` characters (as Celery's argsrepr)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        if len(_encode(value)) <= limit:
            return value
    except (TypeError, msgspec.EncodeError):
        pass
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Dispatcher:
    """A worker's (or producer's) event sender: `send()` is cheap and never waits; `run()`
    posts what was sent, one post per interval."""

    def __init__(self, bus: Bus, hostname: str, *, keep: int, ttl_s: float) -> None:
        self.bus = bus
        self.hostname = hostname
        self.keep = keep
        self.ttl_s = ttl_s
        self.pid = os.getpid()
        self.utcoffset = -time.timezone // 3600
        self.clock = 0
        self.dropped = 0
        self._buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER_CAP)

    def stamp(self, type_: str, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` made an event: its type and the fields every event carries."""
        self.clock += 1
        fields["type"] = type_
        fields["hostname"] = self.hostname
        fields["timestamp"] = time.time()
        fields["clock"] = self.clock
        fields["pid"] = self.pid
        fields["utcoffset"] = self.utcoffset
        return fields

    def send(self, type_: str, fields: dict[str, Any]) -> None:
        self.put(self.stamp(type_, fields))

    def put(self, event: dict[str, Any]) -> None:
        """A stamped event, sent with the next post."""
        buffer = self._buffer
        if len(buffer) == BUFFER_CAP:
            self.dropped += 1
        buffer.append(event)

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            await self.bus.post(TOPIC, _encode(batch), keep=self.keep, ttl_s=self.ttl_s)
        except AiotqError as exc:
            self.dropped += len(batch)  # a monitor misses them; the worker goes on
            log.warning("could not send %d event(s): %s", len(batch), exc)

    async def run(self, interval_s: float) -> None:
        await flush_every(interval_s, self.flush)


def message_fields(message: Any, value_max: int) -> dict[str, Any]:
    """What task-sent and task-received say of a message (Celery's fields)."""
    return {
        "uuid": message.id, "name": message.task,
        "args": capped(message.args, value_max), "kwargs": capped(message.kwargs, value_max),
        "retries": message.retries, "eta": message.eta_at_s, "expires": message.expires_at_s,
        "root_id": message.root_id, "parent_id": message.parent_id,
    }  # fmt: skip


async def send_sent(bus: Bus, message: Any, *, keep: int, ttl_s: float, value_max: int) -> None:
    """The producer's `task-sent` (`task_send_sent_event`): one post per send, so a monitor
    sees a task from the moment it is queued (Flower's PENDING-forever complaint)."""
    event = message_fields(message, value_max)
    event.update({
        "type": "task-sent", "queue": message.queue,
        "routing_key": message.routing_key or message.queue,
        "hostname": _PRODUCER, "timestamp": time.time(), "pid": os.getpid(), "clock": 0,
    })  # fmt: skip
    try:
        await bus.post(TOPIC, _encode([event]), keep=keep, ttl_s=ttl_s)
    except AiotqError as exc:  # the task is sent; only its event is lost
        log.warning("could not send task-sent for %s: %s", message.id, exc)


async def receive(
    bus: Bus, *, replay: bool = False, idle_s: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every event from now on (with `replay`, first the ones the broker still keeps), in
    the order each worker sent them. Ends after `idle_s` without an event, if given."""
    subscription = await bus.subscribe(TOPIC, replay=replay)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        while True:
            try:
                posts = await subscription.next(1.0 if idle_s is None else min(idle_s, 1.0))
            except Transient as exc:  # the broker is away: wait and read on from where we were
                log.warning("cannot read events (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if not posts:
                if idle_s is not None and loop.time() - quiet_since >= idle_s:
                    return
                continue
            quiet_since = loop.time()
            for post in posts:
                try:
                    batch = _decode_batch(post)
                except msgspec.DecodeError:
                    log.warning("ignored a malformed event post (%d bytes)", len(post))
                    continue
                for event in batch:
                    yield event
    finally:
        await subscription.aclose()


class Events:
    """`app.events`: `receive()` is an async iterator of event dicts (Celery's fields)."""

    def __init__(self, bus: Callable[[], Bus]) -> None:
        self._bus = bus

    def receive(
        self, *, replay: bool = False, idle_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return receive(self._bus(), replay=replay, idle_s=idle_s)
