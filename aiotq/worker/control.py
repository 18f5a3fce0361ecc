"""The worker's control listener: one coroutine that hears commands on the broker's bus
(aiotq/control.py sends them) and answers on the caller's reply topic.

It starts before the consumer, with the revokes still kept in the coordinator loaded, so
a revoked task that arrives is refused from the first message on; after a lost connection
it loads them again (a Redis subscriber also replays the commands it missed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from .._backoff import Backoff
from ..control import (
    REPLY_TTL_S,
    TOPIC,
    Command,
    Reply,
    decode_command,
    encode,
    revoked_ids,
)
from ..exceptions import AiotqError, MessageRejected, Transient
from ..mapping import BUILTIN
from ..protocol import Message, decode_message
from ..settings import parse_rate
from ..urls import mask_password

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..brokers.bus import Subscription
    from .execute import Executor
    from .worker import Worker

log = logging.getLogger("aiotq.worker")

SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key|private|signature|signing", re.I)
MASK = "********"


class ControlListener:
    def __init__(self, worker: Worker, executor: Executor) -> None:
        self.worker = worker
        self.executor = executor
        self.app = worker.app
        self.broker = worker.app.broker
        self.hostname = worker.hostname
        self.pid = os.getpid()
        self.started_at_s = time.time()
        self._subscription: Subscription | None = None
        self._handlers: dict[str, Callable[..., Awaitable[Any]]] = {
            name.removeprefix("_do_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("_do_")
        }

    async def start(self) -> None:
        """Subscribed, and the kept revokes loaded (the worker retries this while the
        broker or the coordinator is away)."""
        if self._subscription is None:
            self._subscription = await self.broker.subscribe(TOPIC)
        await self._load_revokes()

    async def _load_revokes(self) -> None:
        kept = await revoked_ids(self.app.producer)
        self.executor.revoked.update(kept)

    async def run(self) -> None:
        assert self._subscription is not None
        backoff = Backoff(initial=0.2, cap=5.0)
        reload = False
        try:
            while True:
                try:
                    bodies = await self._subscription.next(1.0)
                    if reload:
                        await self._load_revokes()
                        reload = False
                except Transient as exc:
                    delay = backoff.delay()
                    log.warning("control commands: %s; listening again in %.1fs", exc, delay)
                    reload = True  # revokes sent meanwhile may not reach us as commands
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                for body in bodies:
                    await self.handle(body)
        finally:
            await self._subscription.aclose()

    async def handle(self, body: bytes) -> None:
        try:
            command = decode_command(body)
        except msgspec.DecodeError as exc:
            log.warning("ignored a malformed control command (%d bytes): %s", len(body), exc)
            return
        if command.destination is not None and self.hostname not in command.destination:
            return
        if time.time() > command.expires_at_s:
            return  # heard late (a reconnect replayed it): its caller stopped waiting
        ok, error = await self._answer(command)
        if command.reply_to is not None:
            reply = Reply(ticket=command.ticket, hostname=self.hostname, pid=self.pid)
            reply.ok, reply.error = ok, error
            try:
                await self.broker.post(command.reply_to, encode(reply), keep=100,
                                       ttl_s=REPLY_TTL_S)  # fmt: skip
            except AiotqError as exc:
                log.warning("could not answer control command %r: %s", command.method, exc)
        if command.method == "shutdown" and error is None:
            log.warning("shutdown requested remotely: warm shutdown")
            self.worker.stop()

    async def _answer(self, command: Command) -> tuple[Any, str | None]:
        handler = self._handlers.get(command.method)
        if handler is None:
            return None, f"unknown control command {command.method!r}"
        try:
            return await handler(**command.arguments), None
        except Exception as exc:  # a bad argument: the caller reads why; we go on
            return None, f"{type(exc).__name__}: {exc}"

    # -- inspect -----------------------------------------------------------------------
    async def _do_ping(self) -> Any:
        return {"ok": "pong"}

    async def _do_active(self) -> Any:
        now = time.time()
        found = []
        for running in list(self.executor.active.values()):
            info = self._describe(running.accepted.message, running.delivery)
            info["time_start"] = running.started_at_s
            info["runtime_s"] = round(now - running.started_at_s, 3)
            info["acknowledged"] = running.delivery.settled
            found.append(info)
        return found

    async def _do_reserved(self) -> Any:
        found = []
        for delivery in self.worker.reserved():
            message = self._decoded(delivery.body, delivery.headers)
            if message is not None:
                found.append(self._describe(message, delivery))
        return found

    async def _do_scheduled(self) -> Any:
        found = []
        for due_s, body in await self.broker.scheduled(self.worker.queues):
            message = self._decoded(body, {})
            if message is None:
                continue
            found.append({
                "eta": datetime.fromtimestamp(due_s, UTC).isoformat(), "eta_s": due_s,
                "priority": message.priority, "request": self._describe(message, None),
            })  # fmt: skip
        return found

    async def _do_registered(self) -> Any:
        return sorted(name for name in self.app.tasks if not name.startswith(BUILTIN))

    async def _do_stats(self) -> Any:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counters = self.executor.counters
        worker = self.worker
        url = self.broker.url
        return {
            "hostname": self.hostname, "pid": self.pid,
            "uptime": round(time.time() - self.started_at_s),
            "broker": {"url": mask_password(url), "transport": url.split(":")[0]},
            "pool": {"implementation": "asyncio", "max-concurrency": worker.concurrency,
                     "threads": worker.threads, "processes": worker.processes,
                     "in_flight": len(self.executor.active)},
            "prefetch_count": worker.prefetch,
            "total": {"processed": counters.processed, "failed": counters.failed,
                      "retried": counters.retried},
            "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss},
            "loop": {"blocked": counters.loop_blocked, "lag_max_s": counters.loop_lag_max_s},
            "events": {"task_events": self.executor.events.publish,
                       "dropped": self.executor.events.dispatcher.dropped},
        }  # fmt: skip

    async def _do_active_queues(self) -> Any:
        return [{"name": q, "routing_key": q, "durable": True} for q in self.worker.queues]

    async def _do_revoked(self) -> Any:
        return sorted(self.executor.revoked)

    async def _do_conf(self) -> Any:
        settings = msgspec.structs.asdict(self.app.conf.settings)
        return {key: _masked(key, value) for key, value in settings.items()}

    async def _do_query_task(self, task_ids: list[str]) -> Any:
        found: dict[str, Any] = {}
        for task_id in task_ids:
            running = self.executor.active.get(task_id)
            if running is not None:
                message = running.accepted.message
                found[task_id] = ["active", self._describe(message, running.delivery)]
        for delivery in self.worker.reserved():
            if delivery.headers.get("id") in task_ids:
                waiting = self._decoded(delivery.body, delivery.headers)
                if waiting is not None:
                    found[waiting.id] = ["reserved", self._describe(waiting, delivery)]
        return found

    # -- control -----------------------------------------------------------------------
    async def _do_revoke(
        self, task_ids: list[str], terminate: bool = False, signal: str = "SIGTERM"
    ) -> Any:
        terminated = []
        for task_id in task_ids:
            self.executor.revoked[task_id] = terminate
            if terminate and self.executor.terminate(task_id):
                terminated.append(task_id)
        log.info("Tasks flagged as revoked: %s", ", ".join(task_ids))
        if terminated:
            return {"ok": f"terminating {', '.join(terminated)}; revoked {len(task_ids)} task(s)"}
        return {"ok": f"tasks {', '.join(task_ids)} flagged as revoked"}

    async def _do_rate_limit(self, task_name: str, rate_limit: str | None = None) -> Any:
        self._known(task_name)
        per_s = None if rate_limit in (None, "0", 0) else parse_rate(rate_limit)
        self.executor.rates[task_name] = per_s
        log.info("rate limit of %s set to %s", task_name, rate_limit or "none")
        return {"ok": "new rate limit set successfully" if per_s else "rate limit disabled"}

    async def _do_time_limit(
        self, task_name: str, soft: float | None = None, hard: float | None = None
    ) -> Any:
        self._known(task_name)
        self.executor.time_limits[task_name] = (soft, hard)
        log.info("time limits of %s set to soft=%s hard=%s", task_name, soft, hard)
        return {"ok": "time limits set successfully"}

    async def _do_add_consumer(self, queue: str, **_: Any) -> Any:
        if queue in self.worker.queues:
            return {"ok": f"already consuming from {queue!r}"}
        await self.broker.declare([queue])
        self.worker.change_queues([*self.worker.queues, queue])
        return {"ok": f"add consumer {queue}"}

    async def _do_cancel_consumer(self, queue: str) -> Any:
        if queue not in self.worker.queues:
            return {"ok": f"not consuming from {queue!r}"}
        if len(self.worker.queues) == 1:
            raise ValueError(f"{queue!r} is this worker's only queue (stop it instead)")
        self.worker.change_queues([q for q in self.worker.queues if q != queue])
        return {"ok": f"no longer consuming from {queue}"}

    async def _do_shutdown(self) -> Any:
        return {"ok": "shutting down"}  # the stop itself follows the reply (handle())

    async def _do_enable_events(self) -> Any:
        self.executor.events.set_publish(True)
        return {"ok": "task events enabled"}

    async def _do_disable_events(self) -> Any:
        self.executor.events.set_publish(False)
        return {"ok": "task events disabled"}

    # -- helpers -----------------------------------------------------------------------
    def _known(self, task_name: str) -> None:
        if task_name not in self.app.tasks:
            raise KeyError(f"unknown task {task_name!r} (not registered in this worker)")

    def _decoded(self, body: bytes, headers: Any) -> Message | None:
        try:
            return decode_message(
                body, headers.get("content-type"), frozenset(self.app.conf.settings.accept_content)
            )
        except MessageRejected:
            return None

    def _describe(self, message: Message, delivery: Delivery | None) -> dict[str, Any]:
        queue = delivery.queue if delivery is not None else message.queue
        return {
            "id": message.id, "name": message.task, "type": message.task,
            "args": message.args, "kwargs": message.kwargs, "retries": message.retries,
            "hostname": self.hostname, "worker_pid": self.pid,
            "delivery_info": {"queue": queue, "routing_key": message.routing_key or queue,
                              "redelivered": bool(delivery and delivery.redelivered)},
        }  # fmt: skip


def _masked(key: str, value: Any) -> Any:
    if value is None:
        return None
    if SECRET_NAME.search(key):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_password(value)
    if isinstance(value, dict):
        return {k: _masked(str(k), v) for k, v in value.items()}
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError):
        return repr(value)  # routes given as functions, Queue objects, schedules
    return value
