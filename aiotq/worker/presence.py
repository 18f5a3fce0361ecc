"""Worker presence: each worker keeps a record with a TTL in the app's coordinator, renewed
every heartbeat, so anyone can list the live workers at once (no broadcast, no waiting for
replies that may not come). A warm stop deletes the record; a killed worker's record runs
out after a few heartbeats.

    presence:<hostname>:<pid>    JSON: hostname, pid, version, queues, concurrency,
                                 in flight, processed / failed / retried, started at,
                                 loadavg, RSS, heartbeat
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from .._version import __version__
from ..backends.base import Coordinator
from ..exceptions import AiotqError

log = logging.getLogger("aiotq.worker")

PREFIX = "presence:"
TTL_HEARTBEATS = 3  # a record outlives this many missed heartbeats, no more


@dataclass(slots=True)
class Counters:
    """What a worker did since it started (incremented on the per-task path: ints only)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    loop_blocked: int = 0  # times the event loop was blocked past worker_loop_lag_warn_s
    loop_lag_max_s: float = 0.0


class Presence(msgspec.Struct, kw_only=True):
    hostname: str
    pid: int
    version: str
    queues: list[str]
    concurrency: int
    in_flight: int
    processed: int
    failed: int
    retried: int
    started_at_s: float
    heartbeat_s: float
    seen_at_s: float
    loadavg: list[float]
    rss_bytes: int
    loop_blocked: int = 0
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


async def live_workers(coordinator: Coordinator) -> list[Presence]:
    """Every live worker's latest record, by hostname then pid."""
    found: list[Presence] = []
    for data in (await coordinator.scan(PREFIX)).values():
        try:
            found.append(msgspec.json.decode(data, type=Presence))
        except msgspec.DecodeError:  # a record of another version: not ours to show
            continue
    return sorted(found, key=lambda p: (p.hostname, p.pid))


def describe(workers: list[Presence], now_s: float | None = None) -> list[dict[str, Any]]:
    """The rows `aiotq status` prints."""
    now = time.time() if now_s is None else now_s
    return [
        {
            "hostname": p.hostname, "pid": p.pid, "version": p.version,
            "queues": ",".join(p.queues), "concurrency": p.concurrency, "in_flight": p.in_flight,
            "processed": p.processed, "failed": p.failed, "retried": p.retried,
            "up_s": round(now - p.started_at_s), "seen_s_ago": round(now - p.seen_at_s, 1),
            "loadavg": p.loadavg, "rss_mb": round(p.rss_bytes / 2**20, 1),
            "loop_blocked": p.loop_blocked, "loop_lag_max_s": round(p.loop_lag_max_s, 3),
        }
        for p in workers
    ]  # fmt: skip
