"""Worker presence: each worker keeps a record with a TTL in the app's coordinator, renewed
every heartbeat, so anyone can list the live workers at once (no broadcast, no waiting for
replies that may not come). A warm stop deletes the record; a killed worker's record runs
out after a few heartbeats. Remote control reads it to know whom to wait for.

    presence:<hostname>:<pid>    JSON: hostname, pid, version, queues, concurrency,
                                 in flight, processed / failed / retried, started at,
                                 loadavg, RSS, heartbeat
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .backends.base import Coordinator

PREFIX = "presence:"
TTL_HEARTBEATS = 3  # a record outlives this many missed heartbeats, no more


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
