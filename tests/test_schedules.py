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
    (crontab(minute=0, hour="22-2"), "2026-03-10 02:30", "2026-03-10 22:00"),  # wraps midnight
    (crontab(minute=0, hour="22-2"), "2026-03-10 23:00", "2026-03-11 00:00"),
    (crontab(minute=0, hour=9, day_of_week="fri-mon"), "2026-03-10 12:00", "2026-03-13 09:00"),
    (crontab(minute=0, hour=0, month_of_year="nov-feb"), "2026-03-01", "2026-11-01 00:00"),
    (crontab.from_string("*/5 * * * *"), "2026-03-10 10:16", "2026-03-10 10:20"),
    (crontab.from_string("30 7 * * mon-fri"), "2026-03-13 08:00", "2026-03-16 07:30"),
    # Feb 29 on a Monday is 18 years away: found, not reported as never matching
    (
        crontab(0, 0, day_of_week="mon", day_of_month=29, month_of_year=2),
        "2026-01-01",
        "2044-02-29",
    ),
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


ALL_MINUTES = set(range(60))


@pytest.mark.parametrize(
    ("field", "spec", "expected"),
    [
        # Celery's t/unit/app/test_schedules.py parser and field-format cases
        ("minute", "*", ALL_MINUTES),
        ("minute", None, ALL_MINUTES),  # Celery's cronfield(None)
        ("minute", "1-10", set(range(1, 11))),
        ("minute", "0,15,30,45", {0, 15, 30, 45}),
        ("minute", "*/15", {0, 15, 30, 45}),
        ("minute", "*/3", {i * 3 for i in range(20)}),
        ("minute", "1-59/2", set(range(1, 60, 2))),
        ("minute", "2-9/5", {2, 7}),
        ("minute", "2-10/5", {2, 7}),
        ("minute", "2-11/5,3", {2, 3, 7}),
        ("minute", "1-9/2", {1, 3, 5, 7, 9}),
        (
            "minute",
            "2-4/3,*/5,0-21/4",
            {0, 2, 4, 5, 8, 10, 12, 15, 16, 20, 25, 30, 35, 40, 45, 50, 55},
        ),
        ("minute", "55-5/3", {55, 58, 1, 4}),  # a wrapped range, then its steps
        ("minute", "5/15", {5, 20, 35, 50}),  # value/step runs to the end of the field
        ("minute", "*/100", {0}),
        ("minute", " 1 , 2 ", {1, 2}),  # spaces around parts, as Celery's "1, 2"
        ("minute", 30, {30}),
        ("minute", "30", {30}),
        ("minute", (30, 40, 50), {30, 40, 50}),
        ("minute", iter([1, 2, 3]), {1, 2, 3}),
        ("minute", ["0-4", 30], {0, 1, 2, 3, 4, 30}),
        ("hour", "0-20", set(range(21))),
        ("hour", "*/4", {0, 4, 8, 12, 16, 20}),
        ("hour", "0,8-17/2", {0, 8, 10, 12, 14, 16}),
        ("hour", "22-2", {22, 23, 0, 1, 2}),
        ("hour", "22-2/2", {22, 0, 2}),
        ("hour", "5-5", {5}),
        ("day_of_week", "*", set(range(7))),
        ("day_of_week", 5, {5}),
        ("day_of_week", "fri", {5}),
        ("day_of_week", "SUN", {0}),
        ("day_of_week", "tuesday,sunday,fri", {0, 2, 5}),
        ("day_of_week", "tues,thurs", {2, 4}),
        ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
        ("day_of_week", "fri-mon", {5, 6, 0, 1}),
        ("day_of_week", "sat-sun", {6, 0}),
        ("day_of_week", "*/2", {0, 2, 4, 6}),
        ("day_of_week", "1, 2", {1, 2}),
        ("day_of_week", "7", {0}),  # Sunday as 7, as in cron (Celery takes 0 only)
        ("day_of_week", "5-7", {5, 6, 0}),
        ("day_of_week", "0-7", set(range(7))),
        ("day_of_month", "*", set(range(1, 32))),
        ("day_of_month", "2,4,6", {2, 4, 6}),
        ("day_of_month", "*/5", {1, 6, 11, 16, 21, 26, 31}),
        ("day_of_month", "*/15", {1, 16, 31}),
        ("day_of_month", "2-30/2", set(range(2, 31, 2))),
        ("day_of_month", "1-7,15-21", set(range(1, 8)) | set(range(15, 22))),
        ("day_of_month", "30-2", {30, 31, 1, 2}),
        ("month_of_year", "*", set(range(1, 13))),
        ("month_of_year", "feb", {2}),
        ("month_of_year", "Mar", {3}),
        ("month_of_year", "april", {4}),
        ("month_of_year", "sept", {9}),
        ("month_of_year", "may,jun,jul", {5, 6, 7}),
        ("month_of_year", "aug-oct", {8, 9, 10}),
        ("month_of_year", "nov-feb", {11, 12, 1, 2}),
        ("month_of_year", "*/2", {1, 3, 5, 7, 9, 11}),
        ("month_of_year", "2-12/2", {2, 4, 6, 8, 10, 12}),
        ("month_of_year", "*/3", {1, 4, 7, 10}),
    ],
)
def test_crontab_field_values(field: str, spec: object, expected: set[int]) -> None:
    assert getattr(crontab(**{field: spec}), field) == expected  # type: ignore[arg-type]  # Celery names


@pytest.mark.parametrize(
    ("field", "spec", "message"),
    [
        ("minute", "", "empty field"),
        ("minute", " ", "empty field"),
        ("minute", "1,,2", "empty part"),
        ("minute", "1,", "empty part"),
        ("minute", ",1", "empty part"),
        ("minute", "*/", "empty step in '\\*/'"),
        ("minute", "1-5/", "empty step in '1-5/'"),
        ("minute", "*/0", "bad step '0'"),
        ("minute", "*/x", "bad step 'x'"),
        ("minute", "*/-1", "bad step '-1'"),
        ("minute", "*/1/2", "bad step '1/2'"),
        ("minute", "-20", "'-20' is not a value, a range or a step"),
        ("minute", "1--2", "'1--2' is not a value, a range or a step"),
        ("minute", "1-2-3", "'1-2-3' is not a value, a range or a step"),
        ("minute", "*-5", "'\\*' is not a value"),
        ("minute", "1.5", "'1.5' is not a value"),
        ("minute", "mon", "'mon' is not a value"),  # names only where they mean something
        ("minute", 60, "60 is not in 0-59"),
        ("minute", -1, "-1 is not in 0-59"),
        ("minute", "0-100", "100 is not in 0-59"),
        ("minute", "61-0", "61 is not in 0-59"),
        ("minute", [5, 61], "61 is not in 0-59"),
        ("minute", [], "empty list"),
        ("minute", True, "not a bool"),
        ("minute", 1.5, "expected a string, an int or a list"),
        ("minute", object(), "expected a string, an int or a list"),
        ("hour", 24, "24 is not in 0-23"),
        ("hour", "0-30", "30 is not in 0-23"),
        ("day_of_week", "fooday-barday", "'fooday' is not a value"),
        ("day_of_week", "1,4,foo", "'foo' is not a value"),
        ("day_of_week", "monkey", "'monkey' is not a value"),
        ("day_of_week", "mo", "'mo' is not a value"),
        ("day_of_week", "8", "8 is not in 0-7"),
        ("day_of_week", "12", "12 is not in 0-7"),
        ("day_of_week", "jan", "'jan' is not a value"),
        ("day_of_month", 0, "0 is not in 1-31"),
        ("day_of_month", "0-10", "0 is not in 1-31"),
        ("day_of_month", "12-0", "0 is not in 1-31"),
        ("day_of_month", 32, "32 is not in 1-31"),
        ("day_of_month", "31,32", "32 is not in 1-31"),
        ("month_of_year", 0, "0 is not in 1-12"),
        ("month_of_year", "0-5", "0 is not in 1-12"),
        ("month_of_year", "12,13", "13 is not in 1-12"),
        ("month_of_year", "jaan", "'jaan' is not a value"),
        ("month_of_year", "sebtember", "'sebtember' is not a value"),
        ("month_of_year", "mon", "'mon' is not a value"),
    ],
)
def test_bad_crontab_field_is_one_line_naming_field_and_text(
    field: str, spec: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        crontab(**{field: spec})  # type: ignore[arg-type]
    text = str(caught.value)
    assert text.startswith(f"crontab {field}=")
    assert "\n" not in text
    if isinstance(spec, str):
        assert repr(spec) in text


def test_a_date_that_never_exists_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="day_of_month=31, month_of_year=4: no such date"):
        crontab(day_of_month=31, month_of_year=4)
    with pytest.raises(ConfigurationError, match="no such date"):
        crontab(day_of_month="30-31", month_of_year="feb")
    assert crontab(day_of_month=29, month_of_year="feb")  # leap years have one
    with pytest.raises(ConfigurationError, match="tz='Mars/Base': no such timezone"):
        crontab(tz="Mars/Base")


def test_from_string_uses_cron_field_order() -> None:
    assert crontab.from_string("* * * * *") == crontab()
    assert crontab.from_string("* * * * SUN") == crontab(day_of_week="SUN")
    assert crontab.from_string("0 8 5 * *") == crontab(minute=0, hour=8, day_of_month=5)
    fields = crontab.from_string("1 2 3 4 5")  # minute hour day_of_month month_of_year day_of_week
    assert (fields.minute, fields.hour, fields.day_of_month) == ({1}, {2}, {3})
    assert (fields.month_of_year, fields.day_of_week) == ({4}, {5})
    assert crontab.from_string(" 0\t8  5 * * ") == crontab(minute=0, hour=8, day_of_month=5)
    assert crontab.from_string("0 7 * * *", tz="America/New_York").tz == NEW_YORK
    assert repr(crontab.from_string("*/5 * * * *")) == "<crontab: */5 * * * *>"


@pytest.mark.parametrize("text", ["*", "* * * *", "* * * * * *", ""])
def test_from_string_needs_five_fields(text: str) -> None:
    count = len(text.split())
    with pytest.raises(ConfigurationError, match=rf"expected 5 fields .*got {count}$"):
        crontab.from_string(text)


def test_from_string_errors_name_the_field() -> None:
    with pytest.raises(ConfigurationError, match="crontab hour='25': 25 is not in 0-23"):
        crontab.from_string("0 25 * * *")
    with pytest.raises(ConfigurationError, match="crontab day_of_week='fooday'"):
        crontab.from_string("0 0 * * fooday")
    with pytest.raises(ConfigurationError, match="expected 5 fields"):
        crontab.from_string(None)  # type: ignore[arg-type]


def test_crontab_equality_and_hash() -> None:
    # Celery's test_eq: equal when the fields expand to the same values
    assert crontab(day_of_week="1, 2") == crontab(day_of_week="1-2")
    assert crontab(day_of_month="1, 16, 31") == crontab(day_of_month="*/15")
    assert crontab(day_of_week="sun") == crontab(day_of_week=7) == crontab(day_of_week=0)
    same = {"minute": "1", "hour": "2", "day_of_week": "5", "day_of_month": "10"}
    assert crontab(**same, month_of_year="5") == crontab(**same, month_of_year="may")
    assert crontab(minute="1") != crontab(minute="2")
    assert crontab(month_of_year="1") != crontab(month_of_year="2")
    assert crontab(minute="1") != object()
    assert object() != crontab(minute="1")
    assert crontab(minute="1") != every(60)
    assert crontab(hour=7, tz="Europe/Paris") != crontab(hour=7, tz="America/New_York")
    # usable as dict keys and in sets
    runs = {crontab(minute="*/15"): "quarterly", crontab(minute=0, hour="22-2"): "nightly"}
    assert runs[crontab(minute="0,15,30,45")] == "quarterly"
    assert runs[crontab(minute=0, hour=[22, 23, 0, 1, 2])] == "nightly"
    assert len({crontab(), crontab.from_string("* * * * *"), crontab(minute="0-59")}) == 1
    # the app's timezone set later (by beat) leaves the hash, so a crontab key is still found
    key = crontab(minute=5)
    table = {key: 1}
    key.with_timezone(PARIS)
    assert table[key] == 1
