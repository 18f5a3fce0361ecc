"""Beat: schedules declared like Celery, one leader among many, last runs kept."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from aiotq import App, ConfigurationError, Worker, crontab
from aiotq.beat import Beat, entries_of
from aiotq.testing import run_worker

from .conftest import async_wait_for, wait_for
from .workerproc import ROOT, WorkerProcess


def app_with_ticks(url: str = "memory://", **settings: object) -> tuple[App, list[float]]:
    app = App("beat", broker=url, **settings)  # type: ignore[arg-type]
    ran: list[float] = []

    @app.task(name="beat.tick")
    async def tick() -> None:
        ran.append(time.monotonic())

    @app.task(name="beat.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    return app, ran


async def test_seed_schedule_and_decorator_are_both_entries() -> None:
    app, _ = app_with_ticks()
    app.conf.beat_schedule = {
        "mul-every-30-seconds": {"task": "beat.mul", "schedule": 30.0, "args": (2, 2)},
        "mul-nightly": {"task": "beat.mul", "schedule": crontab(minute=0, hour=3), "args": (3, 3)},
    }

    @app.periodic(every=5)
    async def report() -> None: ...

    @app.periodic(crontab(minute="*/5"), name="cleanup-every-5-minutes")
    def cleanup() -> None: ...

    names = sorted(entry.name for entry in entries_of(app))
    assert names == [
        "cleanup-every-5-minutes", "mul-every-30-seconds", "mul-nightly", report.name,
    ]  # fmt: skip
    assert cleanup.name in app.tasks  # the decorator registered the task too


def test_bad_entries_fail_at_start_naming_them() -> None:
    app, _ = app_with_ticks()
    app.conf.beat_schedule = {"broken": {"task": "beat.mul", "schedule": 30, "args": (1,)}}
    with pytest.raises(ConfigurationError, match=r"beat entry 'broken'.*missing a required"):
        Worker(app, beat=True)
    app, _ = app_with_ticks()
    app.conf.beat_schedule = {"no-task": {"schedule": 30}}
    with pytest.raises(ConfigurationError, match="needs 'task' and 'schedule'"):
        entries_of(app)
    app, _ = app_with_ticks()
    app.conf.beat_schedule = {"typo": {"task": "beat.tick", "schedule": 1, "kwarg": {}}}
    with pytest.raises(ConfigurationError, match="unknown key.*kwarg"):
        entries_of(app)


async def test_embedded_beat_sends_on_schedule() -> None:
    app, ran = app_with_ticks()
    app.conf.beat_schedule = {"tick": {"task": "beat.tick", "schedule": 0.2}}
    async with run_worker(app, beat=True):
        await async_wait_for(lambda: len(ran) >= 6, 5)
    gaps = [b - a for a, b in itertools.pairwise(ran)]
    # each run is due a period after the last one's due time: a late run makes one gap
    # long and the next short, the average stays the period
    assert abs(sum(gaps) / len(gaps) - 0.2) < 0.05, gaps
    assert all(gap < 0.6 for gap in gaps), gaps


async def test_a_restarted_beat_neither_repeats_nor_skips(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/beat.db"
    app, ran = app_with_ticks(url)
    app.conf.beat_schedule = {"tick": {"task": "beat.tick", "schedule": 1.0}}
    async with run_worker(app, beat=True):
        await async_wait_for(lambda: len(ran) >= 1, 5)  # first run, one second in
    stopped = time.monotonic()
    async with run_worker(app, beat=True):  # restart at once: the next run is a second
        await async_wait_for(lambda: len(ran) >= 2, 5)  # after the last, not now
    assert ran[1] - stopped > 0.5, "the restarted beat fired at once"
    assert 0.8 < ran[1] - ran[0] < 1.3, ran


@pytest.mark.parametrize("policy", ["run_once", "skip"])
async def test_runs_missed_while_down_follow_the_policy(policy: str) -> None:
    app, ran = app_with_ticks(beat_missed_runs=policy)
    app.conf.beat_schedule = {"tick": {"task": "beat.tick", "schedule": 1.0}}
    app.finalize()
    down_since = time.time() - 5.5  # the last run was 5.5 s ago: 5 runs were missed
    last_run = time.monotonic() - 5.5  # the same instant, on the clock `ran` uses
    assert app.coordinator is not None
    await app.coordinator.put("aiotq.beat.last:tick", msgspec.json.encode(down_since), 60)
    async with run_worker(app, beat=True):
        began = time.monotonic()
        await async_wait_for(lambda: len(ran) >= 1, 5)
    if policy == "run_once":
        assert ran[0] - began < 0.3  # one catch-up run at once, not five
    else:  # nothing at once (5.5 s after the last); the next regular run, 6 s after it
        since_last = ran[0] - last_run  # (or 7 s after a start-up longer than 0.5 s)
        assert since_last > 5.8 and abs(since_last - round(since_last)) < 0.3, since_last
    assert len(ran) == 1


async def test_only_the_leader_sends_and_a_stop_hands_over() -> None:
    app, ran = app_with_ticks(beat_lease_s=5.0)
    app.conf.beat_schedule = {"tick": {"task": "beat.tick", "schedule": 0.1}}
    first, second = Beat(app), Beat(app)
    async with run_worker(app):
        beats = [asyncio.create_task(b.run()) for b in (first, second)]
        await async_wait_for(lambda: len(ran) >= 5, 5)
        assert [first.leading, second.leading].count(True) == 1
        leader = 0 if first.leading else 1
        beats[leader].cancel()  # a warm stop gives the lease up: no wait for it to lapse
        count = len(ran)
        await async_wait_for(lambda: len(ran) >= count + 3, 6)  # the next lease check: 1.7 s
        assert (second if leader == 0 else first).leading
        beats[1 - leader].cancel()
        await asyncio.gather(*beats, return_exceptions=True)


BEAT_ENV = {"E2E_BEAT_EVERY_S": "1", "E2E_BEAT_LEASE_S": "4"}
LEASE_LINE = re.compile(r"^\[(\S+ \S+): .*beat: \S+ (leads|lost the lead)$")


@pytest.fixture
def three_beats(redis_url: str) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(redis_url, "-B", env=BEAT_ENV) for _ in range(3)]
    for worker in workers:
        worker.ready()
    yield workers
    for worker in workers:
        worker.stop()


def runs(workers: list[WorkerProcess]) -> int:
    return sum(w.count(r"Task e2e\.now\[.*\] succeeded") for w in workers)


def took_the_lead_at(worker: WorkerProcess) -> str | None:
    """When its log last says it took the lead, or None if it last says it lost it."""
    said = [match for line in list(worker.lines) if (match := LEASE_LINE.match(line))]
    return said[-1][1] if said and said[-1][2] == "leads" else None


def test_three_workers_with_beat_send_each_run_once_and_survive_the_leader(
    three_beats: list[WorkerProcess],
) -> None:
    started = runs(three_beats)
    time.sleep(10)  # the span under test: a 1-second schedule for 10 s
    in_ten = runs(three_beats) - started
    assert 8 <= in_ten <= 12, in_ten  # 10, not 30
    leaders = [w for w in three_beats if took_the_lead_at(w)]
    assert leaders, [w.log for w in three_beats]
    leader = max(leaders, key=took_the_lead_at)  # the latest, if the lead ever moved
    leader.signal(signal.SIGKILL)
    leader.wait(10)
    survivors = [w for w in three_beats if w is not leader]
    before = runs(survivors)
    wait_for(lambda: runs(survivors) >= before + 3, 20)  # after the 4 s lease: runs go on
    assert sum(1 for w in survivors if took_the_lead_at(w)) == 1


def test_beat_alone_from_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/beat.db"
    env = {**os.environ, **BEAT_ENV, "AIOTQ_BROKER_URL": url}
    beat = subprocess.Popen(
        [sys.executable, "-m", "aiotq", "beat", "tests.apps:tq"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    worker = WorkerProcess(url).ready()  # no -B: the beat above sends, this runs
    try:
        wait_for(lambda: worker.count(r"Task e2e\.now\[.*\] succeeded") >= 2, 10)
    finally:
        beat.send_signal(signal.SIGTERM)
        _, log = beat.communicate(timeout=10)
        worker.stop()
    assert beat.returncode == 0, log
    assert "Scheduler: Sending due task tick (e2e.now)" in log and "beat stopped." in log
