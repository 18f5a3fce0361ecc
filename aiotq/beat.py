"""Beat: sends periodic tasks when they fall due, with exactly one leader among many beats.

Any number of beats may run (`aiotq worker -B` on every host, `aiotq beat`); they compete for
a lease in the app's coordinator (Redis, SQLite, or memory within one process). The holder sends
due runs and renews the lease every third of its length; the others check as often, so when
the leader dies another takes over within the lease time.

The last run of each entry is kept in the coordinator's key-value, so a restarted beat (or
a new leader) continues from it: it neither repeats a run nor skips one. Runs missed while no
beat was up are sent once on return (`beat_missed_runs = "run_once"`, Celery's behaviour) or dropped
(`"skip"`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import msgspec

from .exceptions import AiotqError, ConfigurationError
from .schedules import Entry, crontab, schedule_of

if TYPE_CHECKING:
    from .app import App
    from .backends.base import Coordinator

log = logging.getLogger("aiotq.beat")

LEADER_LEASE = "beat-leader"
LAST_RUN_TTL_S = 400 * 86400.0
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})


def entries_of(app: App) -> list[Entry]:
    """`beat_schedule` (Celery's dict form) plus `@app.periodic` tasks, checked now: a bad
    schedule or arguments that cannot fit the task fail at start, naming the entry."""
    settings = app.conf.settings
    tz = ZoneInfo(settings.timezone)
    entries = list(app.periodic_entries.values())
    for name, spec in settings.beat_schedule.items():
        if not isinstance(spec, dict) or "task" not in spec or "schedule" not in spec:
            raise ConfigurationError(f"beat_schedule[{name!r}] needs 'task' and 'schedule'")
        unknown = set(spec) - ENTRY_KEYS
        if unknown:
            raise ConfigurationError(
                f"beat_schedule[{name!r}]: unknown key(s) {', '.join(sorted(unknown))}"
            )
        entries.append(
            Entry(
                name, spec["task"], schedule_of(spec["schedule"]), tuple(spec.get("args", ())),
                dict(spec.get("kwargs") or {}), dict(spec.get("options") or {}),
            )
        )  # fmt: skip
    for entry in entries:
        if isinstance(entry.schedule, crontab):
            entry.schedule.with_timezone(tz)
        task = app.tasks.get(entry.task)
        if task is not None:
            try:
                task.check_call(entry.args, entry.kwargs)
            except TypeError as exc:
                raise ConfigurationError(f"beat entry {entry.name!r}: {exc}") from None
    return entries


def last_run_key(name: str) -> str:
    """Where an entry's last run is kept in the coordinator (also read by the dashboard)."""
    return f"aiotq.beat.last:{name}"


class Beat:
    def __init__(self, app: App, *, holder: str | None = None) -> None:
        self.app = app
        settings = app.conf.settings
        self.lease_s = settings.beat_lease_s
        self.missed = settings.beat_missed_runs
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        coordinator = app.coordinator
        if coordinator is None:
            raise ConfigurationError(
                "beat keeps its leader lease and last runs in the result backend: "
                "use redis:// or sqlite://, not rpc://"
            )
        self.coordinator: Coordinator = coordinator
        self.entries = entries_of(app)
        self.leading = False
        self._next: dict[str, dt.datetime] = {}

    async def run(self) -> None:
        """Until cancelled: hold or wait for the lease, send what is due. The lease is given
        up on the way out, so a warm stop hands over at once."""
        names = ", ".join(e.name for e in self.entries) or "none"
        log.info("beat: %d entries (%s); lease %gs", len(self.entries), names, self.lease_s)
        try:
            while True:  # noqa: ASYNC110 - a timer by design: due times and lease renewals
                await asyncio.sleep(await self._step())
        finally:
            if self.leading:
                await asyncio.shield(self._release())

    async def _step(self) -> float:
        """One round; returns seconds until the next."""
        renew_s = self.lease_s / 3
        try:
            leading = await self.coordinator.lease(LEADER_LEASE, self.holder, self.lease_s)
            if leading and not self.leading:
                log.info("beat: %s leads", self.holder)
                await self._load()
            elif self.leading and not leading:
                log.warning("beat: %s lost the lead", self.holder)
            self.leading = leading
            if leading:
                await self._send_due()
        except AiotqError as exc:  # the backend is unreachable: nobody sends meanwhile
            log.warning("beat: %s; trying again", exc)
            self.leading = False
            return min(renew_s, 1.0)
        if not self.leading or not self._next:
            return renew_s
        until_due = (min(self._next.values()) - dt.datetime.now(dt.UTC)).total_seconds()
        return max(0.0, min(renew_s, until_due))

    async def _load(self) -> None:
        """The next run of each entry, from its last run (kept by whichever beat led)."""
        now = dt.datetime.now(dt.UTC)
        for entry in self.entries:
            data = await self.coordinator.fetch(last_run_key(entry.name))
            if data is None:
                self._next[entry.name] = entry.schedule.next_after(now)
            else:
                last = dt.datetime.fromtimestamp(msgspec.json.decode(data, type=float), dt.UTC)
                self._next[entry.name] = entry.schedule.next_after(last)

    async def _send_due(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for entry in self.entries:
            due = self._next[entry.name]
            if due > now:
                continue
            latest, following, missed = due, entry.schedule.next_after(due), 0
            while following <= now:  # runs missed while no beat was up
                latest, following, missed = (
                    following,
                    entry.schedule.next_after(following),
                    missed + 1,
                )
            late_s = (now - latest).total_seconds()
            on_time = missed == 0 and late_s <= min(5.0, (following - latest).total_seconds() / 2)
            if on_time or self.missed == "run_once":
                await self._send(entry, missed)
            else:
                log.warning("beat: %s missed %d run(s) while down; skipped", entry.name, missed + 1)
            await self.coordinator.put(
                last_run_key(entry.name), msgspec.json.encode(latest.timestamp()), LAST_RUN_TTL_S
            )
            self._next[entry.name] = following

    async def _send(self, entry: Entry, missed: int) -> None:
        try:
            result = await self.app.asend_task(
                entry.task, entry.args, entry.kwargs, **entry.options
            )
        except (TypeError, ValueError, ConfigurationError) as exc:
            log.error("beat: cannot send %s (%s): %s", entry.name, entry.task, exc)
            return
        extra = f" (once for {missed + 1} missed runs)" if missed else ""
        log.info(
            "Scheduler: Sending due task %s (%s) %s%s", entry.name, entry.task, result.id, extra
        )

    async def _release(self) -> None:
        try:
            await self.coordinator.release(LEADER_LEASE, self.holder)
        except AiotqError as exc:
            log.warning("beat: could not give up the lease: %s", exc)
        self.leading = False
