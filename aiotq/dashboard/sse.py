"""Live updates: one server-sent-event stream per open page (`GET /events`).

It pushes a `summary` every SUMMARY_S (workers up, counts by state from the history), so
pages stay current without task events (workers without -E), and the workers' events as
they come, batched (`events`). One subscription to the broker's event bus is shared by
every open page and dropped when the last one closes; a page that reads slowly loses its
oldest events, never slows the others. The summary is computed once per interval for all
pages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..exceptions import AiotqError
from . import data

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("aiotq.dashboard")

SUMMARY_S = 2.0
BATCH_WAIT_S = 0.25  # events arriving this close together go out in one message
BATCH_MAX = 200
CLIENT_BUFFER = 1000
PASSED = frozenset({"worker-online", "worker-offline"})  # heartbeats: the summary has them
SLIM_FIELDS = ("type", "uuid", "name", "hostname", "timestamp", "runtime", "queue")


def slim(event: dict[str, Any]) -> dict[str, Any] | None:
    """What a page needs of an event (never the arguments or the result: the page reloads
    its parts from the server, which escapes and caps them)."""
    type_ = str(event.get("type", ""))
    if not (type_.startswith("task-") or type_ in PASSED):
        return None
    return {k: event[k] for k in SLIM_FIELDS if event.get(k) is not None}


def frame(kind: str, payload: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload, default=str)}\n\n"


class Live:
    """The shared summary and event subscription of one dashboard."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._summary: dict[str, Any] | None = None
        self._summary_at = 0.0
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._clients: set[asyncio.Queue[dict[str, Any]]] = set()
        self._pump: asyncio.Task[None] | None = None

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    async def summary(self, max_age_s: float = SUMMARY_S * 0.75) -> dict[str, Any]:
        """The summary, recomputed at most once per interval whatever the number of pages."""
        async with self._loop_lock():
            if self._summary is None or time.monotonic() - self._summary_at > max_age_s:
                self._summary = await data.summary(self.app)
                self._summary_at = time.monotonic()
            return self._summary

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(CLIENT_BUFFER)
        self._clients.add(queue)
        pump = self._pump
        if pump is None or pump.done() or pump.get_loop() is not asyncio.get_running_loop():
            self._pump = asyncio.create_task(self._read_events(), name="dashboard-events")
        try:
            yield queue
        finally:
            self._clients.discard(queue)
            if not self._clients and self._pump is not None:
                self._pump.cancel()
                self._pump = None

    async def _read_events(self) -> None:
        while True:
            try:
                async for event in self.app.events.receive():
                    item = slim(event)
                    if item is None:
                        continue
                    for queue in list(self._clients):
                        if queue.full():  # a slow page loses its oldest, nobody waits
                            queue.get_nowait()
                        queue.put_nowait(item)
            except AiotqError as exc:
                log.warning("dashboard: cannot read events (%s); retrying", exc)
            await asyncio.sleep(2.0)

    async def stream(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        yield "retry: 3000\n\n"
        async with self.subscribe() as queue:
            due = loop.time()
            while True:
                if loop.time() >= due:
                    yield frame("summary", await self.summary())
                    due = loop.time() + SUMMARY_S
                batch = await _batch(queue, max(0.0, due - loop.time()))
                if batch:
                    yield frame("events", batch)


async def _batch(queue: asyncio.Queue[dict[str, Any]], wait_s: float) -> list[dict[str, Any]]:
    """The events within `wait_s` (none: an empty list), gathered a little while more
    after the first so a burst makes one message."""
    try:
        first = await asyncio.wait_for(queue.get(), wait_s)
    except TimeoutError:
        return []
    batch = [first]
    deadline = asyncio.get_running_loop().time() + BATCH_WAIT_S
    while len(batch) < BATCH_MAX:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return batch


async def events_endpoint(request: Request) -> StreamingResponse:
    live: Live = request.app.state.dashboard.live
    return StreamingResponse(
        live.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
