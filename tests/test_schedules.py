"""Crontab and interval schedules: next-run times against known cases, DST included."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from aiotq import ConfigurationError, crontab
from aiotq.schedules import every, schedule_of

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(text: str, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz)


CASES = [
    # (crontab, now (UTC unless tz), expected next, local wall clock)
    (crontab(), "2026-03-10 10:15:30", "2026-03-10 10:16"),
    (crontab(minute="*/15"), "2026-03-10 10:15:00", "2026-03-10 10:30"),
    (crontab(minute="*/15"), "2026-03-10 10:59:59", "2026-03-10 11:00"),
    (crontab(minute=0, hour="*/3"), "2026-03-10 10:00", "2026-03-10 12:00"),
    (crontab(minute=30, hour=7, day_of_week="mon-fri"), "2026-03-13 08:00", "2026-03-16 07:30"),
    (crontab(minute=0, hour=0, day_of_week="sun"), "2026-03-10 00:00", "2026-03-15 00:00"),
    (crontab(minute=0, hour=0, day_of_week=7), "2026-03-10 00:00", "2026-03-15 00:00"),
    (crontab(minute="1-5", hour=9), "2026-03-10 09:03", "2026-03-10 09:04"),
    (crontab(minute="1-5", hour=9), "2026-03-10 09:05", "2026-03-11 09:01"),
    (crontab(minute="0,30", hour="9-17/4"), "2026-03-10 13:31", "2026-03-10 17:00"),
    (crontab(minute=0, hour=12, day_of_month=31), "2026-04-01 00:00", "2026-05-31 12:00"),
    (
        crontab(minute=0, hour=0, day_of_month=29, month_of_year="feb"),
        "2026-01-01",
        "2028-02-29 00:00",
    ),
    (crontab(minute=0, hour=0, month_of_year="jan,jul"), "2026-02-01", "2026-07-01 00:00"),
    (crontab(minute=[5, 10], hour=[1]), "2026-03-10 01:07", "2026-03-10 01:10"),
]


@pytest.mark.parametrize(("schedule", "now", "expected"), CASES, ids=lambda c: str(c))
def test_crontab_next_run(schedule: crontab, now: str, expected: str) -> None:
    assert schedule.next_after(at(now)) == at(expected)


def test_spring_forward_neither_skips_nor_doubles() -> None:
    """Paris, 2026-03-29: 02:00 jumps to 03:00. A 02:30 daily job runs once, at the jump."""
    daily = crontab(minute=30, hour=2).with_timezone(PARIS)
    runs = [daily.next_after(at("2026-03-27 12:00", PARIS))]
    for _ in range(3):
        runs.append(daily.next_after(runs[-1]))
    local = [run.astimezone(PARIS).strftime("%m-%d %H:%M %Z") for run in runs]
    assert local == ["03-28 02:30 CET", "03-29 03:30 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]
    assert len({run.astimezone(PARIS).date() for run in runs}) == 4  # one run each day


def test_fall_back_runs_a_repeated_time_once() -> None:
    """New York, 2026-11-01: 02:00 goes back to 01:00, so 01:30 happens twice: one run."""
    daily = crontab(minute=30, hour=1).with_timezone(NEW_YORK)
    first = daily.next_after(at("2026-10-31 12:00", NEW_YORK))
    second = daily.next_after(first)
    third = daily.next_after(second)
    assert [r.astimezone(NEW_YORK).strftime("%m-%d %H:%M %Z") for r in (first, second, third)] == [
        "11-01 01:30 EDT", "11-02 01:30 EST", "11-03 01:30 EST",
    ]  # fmt: skip
    hourly = crontab(minute=0).with_timezone(NEW_YORK)
    runs = [hourly.next_after(at("2026-11-01 00:30", NEW_YORK))]
    while runs[-1] < at("2026-11-01 04:00", NEW_YORK):
        runs.append(hourly.next_after(runs[-1]))
    walls = [r.astimezone(NEW_YORK).strftime("%H:%M") for r in runs]
    assert walls == ["01:00", "02:00", "03:00", "04:00"]  # each wall-clock hour once


def test_crontab_in_the_apps_timezone_and_its_own() -> None:
    seven = crontab(minute=0, hour=7).with_timezone(PARIS)
    assert seven.next_after(at("2026-06-01 00:00")) == at("2026-06-01 05:00")  # 07:00 CEST
    own = crontab(minute=0, hour=7, tz="America/New_York").with_timezone(PARIS)
    assert own.next_after(at("2026-06-01 00:00")) == at("2026-06-01 11:00")  # 07:00 EDT


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"minute": "61"}, "61 is not in 0-59"),
        ({"hour": "5-2"}, "runs backwards"),
        ({"day_of_week": "funday"}, "'funday' is not a value"),
        ({"minute": "*/0"}, "bad step"),
        ({"month_of_year": 13}, "13 is not in 1-12"),
    ],
)
def test_bad_crontab_fields_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        crontab(**fields)  # type: ignore[arg-type]


def test_intervals() -> None:
    assert schedule_of(30.0).next_after(at("2026-01-01 00:00")) == at("2026-01-01 00:00:30")
    assert schedule_of(dt.timedelta(minutes=5)).next_after(at("2026-01-01")) == at(
        "2026-01-01 00:05"
    )
    with pytest.raises(ConfigurationError, match="positive"):
        every(0)
    with pytest.raises(ConfigurationError, match="seconds, a timedelta or a crontab"):
        schedule_of("every minute")
