"""The worker: one event loop, one TaskGroup of named coroutines.

    consumer ──► runner tasks (at most `concurrency` in flight) ──► result publisher
    scheduler tick: broker upkeep (due delayed messages, leases)

Signals only set events. Shutdown is one ordered path: stop fetching (what was fetched and
not started goes back), let in-flight tasks finish up to the shutdown timeout (a second
signal means now), cancel the rest (their messages go back), flush results, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from .._backoff import Backoff
from .._version import __version__
from ..beat import Beat
from ..brokers.base import SUSPECT_DELIVERIES, Consumer
from ..events import Dispatcher
from ..exceptions import AiotqError, ConfigurationError, Transient
from ..history import RunSink
from ..mapping import BUILTIN
from ..request import worker_loop
from ..signals import worker_init, worker_ready, worker_shutdown
from ..urls import mask_password
from .control import ControlListener
from .execute import Executor
from .outcome import Outcome, Settle
from .pools import apply_pool
from .presence import Announcer, rss_bytes
from .publisher import ResultPublisher
from .recorder import HistoryRecorder
from .taskevents import TaskEvents

if TYPE_CHECKING:
    from ..app import App
    from ..backends.base import ResultStore
    from ..brokers.base import Broker, Delivery
    from ..metrics import TaskMetrics

log = logging.getLogger("aiotq.worker")


class Worker:
    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        prefetch_multiplier: int | None = None,
        threads: int | None = None,
        processes: int | None = None,
        shutdown_timeout_s: float | None = None,
        hostname: str | None = None,
        handle_signals: bool = True,
        beat: bool = False,
        send_events: bool | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.app = app
        settings = app.finalize()
        # -B: beat is one more coroutine of this loop (entries checked now, before start)
        self.beat = Beat(app) if beat else None
        # Celery's default: every declared queue (task_queues), else the default queue
        self.queues = list(queues or app.topology.queues or [settings.task_default_queue])
        self.concurrency = concurrency or settings.worker_concurrency
        self.prefetch = self.concurrency * (
            prefetch_multiplier or settings.worker_prefetch_multiplier
        )
        # Celery's --pool / worker_pool: where sync tasks without an executor of their own run
        self.threads = threads or apply_pool(app, settings.worker_pool) or settings.worker_threads
        self.processes = processes or settings.worker_processes or os.cpu_count() or 1
        self.shutdown_timeout_s = (
            shutdown_timeout_s
            if shutdown_timeout_s is not None
            else settings.worker_shutdown_timeout_s
        )
        self.hostname = hostname or f"aiotq@{socket.gethostname()}"
        self.handle_signals = handle_signals
        # -E: task events from the start (worker events are always sent)
        self.send_events = settings.worker_send_task_events if send_events is None else send_events
        self.metrics_port = (
            metrics_port if metrics_port is not None else settings.worker_metrics_port
        )
        self.ready = asyncio.Event()
        self._resubscribe = asyncio.Event()  # add_consumer / cancel_consumer changed queues
        self._consumer: Consumer[Any] | None = None  # the broker's, for `inspect reserved`
        self._waiting: Delivery | None = None  # fetched, waiting for a free slot
        self._stop = asyncio.Event()
        self._cold = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)

    # -- control -----------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, cold: bool = False) -> None:
        """Warm stop (finish in-flight work); `cold=True` cancels it at once."""
        if cold or self._stop.is_set():
            self._cold.set()
        self._stop.set()

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning(
                "%s again: cold shutdown, cancelling in-flight tasks", signal.Signals(signum).name
            )
        else:
            log.warning("%s: warm shutdown (finishing %d task(s); again to stop now)",
                        signal.Signals(signum).name, len(self._inflight))  # fmt: skip
        self.stop()

    # -- the run -----------------------------------------------------------------------
    async def run(self) -> None:
        settings = self.app.conf.settings
        broker, backend = self.app.broker, self.app.backend
        worker_loop.set(asyncio.get_running_loop())  # inherited by every task and thread
        if worker_init.has_receivers():
            await worker_init.asend(sender=self)
        await self._connect(broker, settings.broker_connection_retry_on_startup)
        await self._connect(backend, settings.broker_connection_retry_on_startup)
        dispatcher = Dispatcher(broker, self.hostname, keep=settings.event_keep,
                                ttl_s=settings.event_ttl_s)  # fmt: skip
        history = self.app.history
        recorder = HistoryRecorder(history) if history is not None else None
        sinks: list[RunSink] = [recorder] if recorder is not None else []
        metrics = None
        if self.metrics_port:  # prometheus_client is imported only for a worker that serves
            from ..metrics import TaskMetrics

            metrics = TaskMetrics(self.hostname)
        if metrics is not None:
            sinks.append(metrics)
        task_events = TaskEvents(dispatcher, self.send_events, settings.event_value_max, sinks)
        executor = Executor(
            self.app, self.hostname, self.threads, self.processes, task_events, sender=self
        )
        metrics_server = self._serve_metrics(metrics, executor) if metrics is not None else None
        control = ControlListener(self, executor)
        publisher = ResultPublisher(
            backend, broker, settings.result_expires_s, capacity=self.prefetch
        )
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self._log_banner()
        try:
            async with asyncio.TaskGroup() as group:
                publishing = group.create_task(publisher.run(), name="result-publisher")
                sending = group.create_task(
                    dispatcher.run(settings.worker_tick_interval_s), name="event-sender"
                )
                recording = None
                if recorder is not None:
                    interval = settings.worker_tick_interval_s
                    recording = group.create_task(recorder.run(interval), name="history")
                folding = None
                if task_events.sinks:
                    folding = group.create_task(task_events.run(), name="task-steps")
                await self._retrying_start(control.start, "listen for control commands")
                listening = group.create_task(control.run(), name="control")
                ticking = group.create_task(self._tick(), name="scheduler-tick")
                beating = None
                if self.beat is not None:
                    beating = group.create_task(self.beat.run(), name="beat")
                watching = group.create_task(self._watch_loop(executor), name="loop-watch")
                announcer = self._announcer(executor)
                announcing = None
                if announcer is not None:
                    announcing = group.create_task(announcer.run(), name="presence")
                await self._retrying_start(partial(broker.declare, self.queues), "declare")
                subscribed = asyncio.Event()
                consumer = group.create_task(
                    self._consume(executor, publisher, subscribed.set), name="consumer"
                )
                # ready means subscribed: a task sent now is seen (a consumer that failed
                # to start ends the TaskGroup with its error instead)
                waiting = asyncio.ensure_future(subscribed.wait())
                try:
                    await asyncio.wait([consumer, waiting], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                if subscribed.is_set():
                    self.ready.set()
                    log.info("%s ready.", self.hostname)
                    self._worker_event(dispatcher, executor, "worker-online")
                    if worker_ready.has_receivers():
                        await worker_ready.asend(sender=self)
                heartbeats = group.create_task(
                    self._heartbeats(dispatcher, executor), name="heartbeat-events"
                )
                await self._stop.wait()
                if beating is not None:
                    beating.cancel()  # first: hand the lead over while the rest finishes
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
                await self._finish_inflight()
                await self._finish_publishing(publisher, publishing)
                ticking.cancel()
                watching.cancel()
                listening.cancel()
                heartbeats.cancel()
                self._worker_event(dispatcher, executor, "worker-offline")
                sending.cancel()  # it sends what is left first, briefly
                if folding is not None:
                    folding.cancel()
                task_events.fold()  # the last runs, before the history writes what is left
                if recording is not None:
                    recording.cancel()  # the same: what is left is written first
                if announcing is not None and announcer is not None:
                    announcing.cancel()  # a warm stop: gone from `aiotq status` at once
                    with contextlib.suppress(TimeoutError):  # else it lapses: never wait long
                        async with asyncio.timeout(1.0):
                            await announcer.withdraw()
        finally:
            # a part of the TaskGroup that failed skips the ordered stop above: no runner may
            # outlive the app's connections (their messages go back with the broker's close)
            stray = [runner for runner in self._inflight if not runner.done()]
            for runner in stray:
                runner.cancel()
            await asyncio.gather(*stray, return_exceptions=True)
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if worker_shutdown.has_receivers():  # tasks are done; connections still open
                await worker_shutdown.asend(sender=self)
            executor.close()
            if metrics_server is not None and metrics is not None:
                metrics.offline()
                metrics_server.shutdown()
            await self.app.aclose()
            log.info("%s stopped.", self.hostname)

    async def _connect(self, server: Broker | ResultStore, retry: bool) -> None:
        """Connect the broker or the backend. Only what may pass (unreachable, loading) is
        retried; a refusal of our credentials or vhost, or a bad URL, raises at once: the
        CLI prints its one line and exits instead of retrying what cannot succeed."""
        if retry:
            await self._retrying_start(server.connect, "connect")
        else:
            await server.connect()
        log.info("Connected to %s", mask_password(server.url))

    async def _retrying_start(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        """A start-up step, retried while its error may pass (until a stop is asked for)."""
        backoff = Backoff(initial=0.2, cap=10.0)
        while True:
            try:
                await step()
                return
            except Transient as exc:
                if self._stop.is_set():
                    raise
                delay = backoff.delay()
                log.warning("cannot %s (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)

    def reserved(self) -> list[Delivery]:
        """Fetched and not yet running: `inspect reserved`."""
        held = list(self._consumer.fetched) if self._consumer is not None else []
        return [self._waiting, *held] if self._waiting is not None else held

    def change_queues(self, queues: list[str]) -> None:
        """Consume from `queues` from now on (add_consumer / cancel_consumer): the consumer
        is made anew; running tasks go on, fetched ones go back first."""
        self.queues[:] = queues  # in place: presence shows the same list
        self._resubscribe.set()

    async def _consume(
        self, executor: Executor, publisher: ResultPublisher, on_ready: Callable[[], None]
    ) -> None:
        def subscribed(consumer: Consumer[Any]) -> None:
            self._consumer = consumer
            on_ready()

        while True:
            self._resubscribe.clear()
            feeding = asyncio.ensure_future(self._feed(executor, publisher, subscribed))
            changed = asyncio.ensure_future(self._resubscribe.wait())
            try:
                await asyncio.wait([feeding, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if not feeding.done():
                    feeding.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feeding
            if not self._resubscribe.is_set():
                feeding.result()  # it ended: with its error, if any
                return
            log.info("now consuming from: %s", ", ".join(self.queues))

    async def _feed(
        self,
        executor: Executor,
        publisher: ResultPublisher,
        on_ready: Callable[[Consumer[Any]], None],
    ) -> None:
        async for delivery in self.app.broker.consume(list(self.queues), self.prefetch, on_ready):
            suspect = delivery.delivery_count >= SUSPECT_DELIVERIES
            if suspect:  # it may kill us: run it with nothing else running beside it
                log.warning(
                    "message %s was delivered %d times without finishing; running it alone",
                    delivery.headers.get("id", "?"), delivery.delivery_count,
                )  # fmt: skip
                await self._quiesce(publisher)
            self._waiting = delivery
            try:
                await self._slots.acquire()
            except BaseException:
                # not ours to run now: back to the broker with the rest of what was fetched
                with contextlib.suppress(Exception):
                    await asyncio.shield(delivery.reject(requeue=True, reason="given back"))
                raise
            finally:
                self._waiting = None
            runner = asyncio.create_task(self._run_one(executor, publisher, delivery))
            self._inflight.add(runner)
            runner.add_done_callback(self._inflight.discard)
            if suspect:
                await self._quiesce(publisher)

    async def _quiesce(self, publisher: ResultPublisher) -> None:
        """Until every running task has finished and its result is stored and acked."""
        while self._inflight:
            await asyncio.wait(list(self._inflight))
        await publisher.flush()

    async def _run_one(
        self, executor: Executor, publisher: ResultPublisher, delivery: Delivery
    ) -> None:
        try:
            outcomes = await self._decided(executor, delivery)
        except asyncio.CancelledError:
            # cold stop: the message goes back to the broker before we let go
            with contextlib.suppress(Exception):
                await asyncio.shield(delivery.reject(requeue=True, reason="worker stopped"))
            raise
        except Exception as exc:  # a bug of ours must not lose the message or kill the loop
            log.exception("internal error running a message; returning it to the queue")
            outcomes = [Outcome(None, None, delivery, Settle.REQUEUE, f"internal error: {exc!r}")]
        finally:
            self._slots.release()
        for outcome in outcomes:
            await publisher.submit(outcome)
        # its result and ack are queued: the next message may be fetched meanwhile (a full
        # publisher queue blocks submit above, so unacknowledged ones stay bounded)
        delivery.finished()

    @staticmethod
    async def _decided(executor: Executor, delivery: Delivery) -> list[Outcome]:
        """The executor decides; the one thing acted on here is an ack on receipt (a task
        with acks_late=False), which must happen before it runs."""
        accepted = executor.accept(delivery)
        if isinstance(accepted, Outcome):
            if accepted.notify is not None:  # task_revoked for one that will not run
                await accepted.notify()
            return [accepted]
        if accepted.settle is Settle.NONE:
            await delivery.ack()
        return await executor.run(accepted, delivery)

    async def _finish_inflight(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout_s
        while self._inflight and not self._cold.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("shutdown timeout: cancelling %d task(s)", len(self._inflight))
                break
            cold = asyncio.ensure_future(self._cold.wait())
            try:
                await asyncio.wait([*self._inflight, cold], timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                cold.cancel()
        pending = list(self._inflight)
        for runner in pending:
            runner.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _finish_publishing(
        self, publisher: ResultPublisher, publishing: asyncio.Task[None]
    ) -> None:
        """Let the publisher store and ack what finished; a second signal stops it instead
        (a backend that stays down would hold a warm stop forever): the messages whose
        results were not stored stay unacknowledged and go back to the broker."""
        closing = asyncio.ensure_future(publisher.close())  # waits for room in a full queue
        cold = asyncio.ensure_future(self._cold.wait())
        try:
            await asyncio.wait([publishing, cold], return_when=asyncio.FIRST_COMPLETED)
        finally:
            cold.cancel()
            closing.cancel()
        if not publishing.done():
            log.warning("cold shutdown: results not yet stored; their messages go back")
            publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing

    def _serve_metrics(self, metrics: TaskMetrics, executor: Executor) -> Any:
        counters = executor.counters
        metrics.watch(
            active=lambda: len(executor.active), prefetched=lambda: len(self.reserved()),
            lag_max_s=lambda: counters.loop_lag_max_s, blocked=lambda: counters.loop_blocked,
        )  # fmt: skip
        assert self.metrics_port is not None
        try:
            server = metrics.serve(self.metrics_port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on port {self.metrics_port}: {exc}"
            ) from None
        log.info("metrics on http://0.0.0.0:%d/metrics", self.metrics_port)
        return server

    def _worker_event(self, dispatcher: Dispatcher, executor: Executor, kind: str) -> None:
        counters = executor.counters
        dispatcher.send(kind, {
            "freq": self.app.conf.settings.worker_heartbeat_s, "sw_ident": "aiotq",
            "sw_ver": __version__, "sw_sys": platform.system(),
            "active": len(executor.active), "processed": counters.processed,
            "loadavg": list(os.getloadavg()), "rss_bytes": rss_bytes(),
            "queues": list(self.queues), "concurrency": self.concurrency,
        })  # fmt: skip

    async def _heartbeats(self, dispatcher: Dispatcher, executor: Executor) -> None:
        interval = self.app.conf.settings.worker_heartbeat_s
        while True:
            await asyncio.sleep(interval)
            self._worker_event(dispatcher, executor, "worker-heartbeat")

    def _announcer(self, executor: Executor) -> Announcer | None:
        coordinator = self.app.coordinator
        if coordinator is None:  # rpc:// keeps nothing: no presence to write
            log.info("no coordinator (rpc:// results): this worker is not in `aiotq status`")
            return None
        return Announcer(
            coordinator, hostname=self.hostname, queues=self.queues,
            concurrency=self.concurrency, heartbeat_s=self.app.conf.settings.worker_heartbeat_s,
            counters=executor.counters, in_flight=lambda: len(self._inflight),
        )  # fmt: skip

    async def _watch_loop(self, executor: Executor) -> None:
        """The asyncio worker's silent killer is a task that does not await (time.sleep, CPU
        work, blocking IO): it stalls every task of the process. A timer that wakes late
        says so; the warning names what ran meanwhile."""
        settings = self.app.conf.settings
        interval, threshold = settings.worker_tick_interval_s, settings.worker_loop_lag_warn_s
        loop = asyncio.get_running_loop()
        counters = executor.counters
        while True:
            began = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - began - interval
            if lag < threshold:
                continue
            counters.loop_blocked += 1
            counters.loop_lag_max_s = max(counters.loop_lag_max_s, lag)
            suspects = executor.suspects(began)
            log.warning(
                "the event loop was blocked for %.2fs: every task waited. Running then: %s. A"
                " task that blocks (time.sleep, CPU work, blocking IO) belongs in"
                " executor='thread' or 'process'",
                lag, ", ".join(suspects[:10]) + (" ..." if len(suspects) > 10 else "") or "none",
            )  # fmt: skip

    async def _tick(self) -> None:
        interval = self.app.conf.settings.worker_tick_interval_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.app.broker.tick()
            except AiotqError as exc:
                log.warning("scheduler tick failed: %s", exc)
            except Exception:  # a bug of ours must not end the worker: the next tick tries again
                log.exception("scheduler tick failed")
            next_at += interval  # drift-free: the next tick is due on the grid, not after the work
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _log_banner(self) -> None:
        settings = self.app.conf.settings
        # Celery's banner leaves its built-ins (celery.map...) out; so does this one
        mine = sorted(name for name in self.app.tasks if not name.startswith(BUILTIN))
        tasks = "\n".join(f"  . {name}" for name in mine) or "  (none)"
        queues = "\n".join(f".> {q}" for q in self.queues)
        broker_url = mask_password(self.app.broker.url)
        backend_url = mask_password(self.app.backend.url)
        if settings.broker_url is None:
            broker_url += "  (the embedded default: no broker_url configured)"
        log.info(
            "\n -------------- %s v%s\n"
            "--- ***** ----- [config]\n"
            ".> app:         %s\n"
            ".> transport:   %s\n"
            ".> results:     %s\n"
            ".> concurrency: %d (asyncio; prefetch %d, threads %d, processes %d)\n"
            ".> serializer:  %s (accept %s)\n"
            " -------------- [queues]\n%s\n\n[tasks]\n%s\n",
            self.hostname, __version__, self.app.main, broker_url, backend_url,
            self.concurrency, self.prefetch, self.threads, self.processes,
            settings.task_serializer, ", ".join(settings.accept_content), queues, tasks,
        )  # fmt: skip
