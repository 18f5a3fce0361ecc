"""The worker's side of presence (aiotq/presence.py): its counters, and the coroutine that
renews its record every heartbeat and withdraws it on a warm stop."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from .._version import __version__
from ..backends.base import Coordinator
from ..exceptions import AiotqError
from ..presence import PREFIX, TTL_HEARTBEATS, Presence

log = logging.getLogger("aiotq.worker")


@dataclass(slots=True)
class Counters:
    """What a worker did since it started (incremented on the per-task path: ints only)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    loop_blocked: int = 0  # times the event loop was blocked past worker_loop_lag_warn_s
    loop_lag_max_s: float = 0.0


def rss_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Announcer:
    """The worker's presence coroutine: `run()` until cancelled, `withdraw()` on a warm stop."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        hostname: str,
        queues: list[str],
        concurrency: int,
        heartbeat_s: float,
        counters: Counters,
        in_flight: Callable[[], int],
    ) -> None:
        self.coordinator = coordinator
        self.key = f"{PREFIX}{hostname}:{os.getpid()}"
        self.hostname = hostname
        self.queues = queues
        self.concurrency = concurrency
        self.heartbeat_s = heartbeat_s
        self.counters = counters
        self.in_flight = in_flight
        self.started_at_s = time.time()

    def record(self) -> Presence:
        counters = self.counters
        return Presence(
            hostname=self.hostname, pid=os.getpid(), version=__version__, queues=self.queues,
            concurrency=self.concurrency, in_flight=self.in_flight(),
            processed=counters.processed, failed=counters.failed, retried=counters.retried,
            started_at_s=self.started_at_s, heartbeat_s=self.heartbeat_s, seen_at_s=time.time(),
            loadavg=list(os.getloadavg()), rss_bytes=rss_bytes(),
            loop_blocked=counters.loop_blocked, loop_lag_max_s=counters.loop_lag_max_s,
        )  # fmt: skip

    async def run(self) -> None:
        ttl_s = self.heartbeat_s * TTL_HEARTBEATS
        while True:
            try:
                await self.coordinator.put(self.key, msgspec.json.encode(self.record()), ttl_s)
            except AiotqError as exc:  # the store is down: the record lapses, we go on
                log.warning("could not write this worker's presence: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def withdraw(self) -> None:
        try:
            await self.coordinator.delete(self.key)
        except AiotqError as exc:
            log.warning("could not remove this worker's presence (%s); it lapses", exc)
