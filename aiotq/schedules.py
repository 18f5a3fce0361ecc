"""When periodic tasks fall due: `every(seconds)` and `crontab(...)`, in the app's timezone.

Both answer one question, `next_after(moment)`: the first run strictly after an aware
datetime. A crontab is matched on the wall clock of its timezone, each wall-clock minute at
most once, so daylight-saving changes neither skip nor double a run: a time that does not
exist on the spring-forward day (02:30 in Europe) runs at the moment the clock jumps past it
(03:30 local, the same instant), and a time that happens twice in the autumn runs at its first
occurrence only.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import ConfigurationError

# English whatever the locale (calendar.day_name follows LC_TIME); Sunday is 0, January 1
DAY_FULL_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTH_FULL_NAMES = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
DAY_NAMES = {name[:3]: number for number, name in enumerate(DAY_FULL_NAMES)}
MONTH_NAMES = {name[:3]: number for number, name in enumerate(MONTH_FULL_NAMES, 1)}
_LONGEST_MONTH = {month: calendar.monthrange(2000, month)[1] for month in range(1, 13)}  # Feb 29


class Schedule(Protocol):
    def next_after(self, moment: dt.datetime) -> dt.datetime: ...


class every:
    """A fixed interval, anchored on the last run (not drifting with the beat's lateness)."""

    def __init__(self, interval: float | dt.timedelta) -> None:
        seconds = interval.total_seconds() if isinstance(interval, dt.timedelta) else interval
        if not seconds > 0:
            raise ConfigurationError(f"a schedule interval must be positive, got {interval!r}")
        self.seconds = float(seconds)

    def __repr__(self) -> str:
        return f"every({self.seconds:g}s)"

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        return moment + dt.timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class _Field:
    """One crontab field: its name, its values, and the names it accepts besides numbers."""

    what: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # full names, the first one worth `low`
    sunday_is_seven: bool = False  # day_of_week: 7 is Sunday too, as in cron

    @property
    def top(self) -> int:
        """The largest number written (7 for Sunday), which may exceed `high`."""
        return 7 if self.sunday_is_seven else self.high


MINUTE = _Field("minute", 0, 59)
HOUR = _Field("hour", 0, 23)
DAY_OF_WEEK = _Field("day_of_week", 0, 6, DAY_FULL_NAMES, sunday_is_seven=True)
DAY_OF_MONTH = _Field("day_of_month", 1, 31)
MONTH_OF_YEAR = _Field("month_of_year", 1, 12, MONTH_FULL_NAMES)

# one comma-separated part: `*` or a value or a `first-last` range, then an optional `/step`
_PART = re.compile(
    r"(?:(?P<star>\*)|(?P<first>[^-/]+)(?:-(?P<last>[^-/]+))?)(?:(?P<slash>/)(?P<step>.*))?"
)
_VALUE = re.compile(r"[0-9]+|[a-z]+")  # ASCII digits only: int() would take "٣" too


def _parse_field(spec: object, field: _Field) -> frozenset[int]:
    """`*`, `*/15`, `1-5`, `22-2` (wraps around), `1-59/2`, `5/15`, `mon-fri`, `1,15`, an int,
    or an iterable of these, into the set of values; anything else is a one-line error naming
    the field and the text."""

    def fail(problem: str) -> ConfigurationError:
        return ConfigurationError(f"crontab {field.what}={spec!r}: {problem}")

    def number(value: int) -> int:
        if not field.low <= value <= field.top:
            raise fail(f"{value} is not in {field.low}-{field.top}")
        return value

    def token(text: str) -> int:
        if not _VALUE.fullmatch(text):
            raise fail(f"{text!r} is not a value")
        if text.isdigit():
            return number(int(text))
        # a name: its first three letters or more of it ("tue", "tues", "tuesday")
        for offset, name in enumerate(field.names):
            if len(text) >= 3 and name.startswith(text):
                return field.low + offset
        hint = f" (a number or a name like {field.names[1][:3]!r})" if field.names else ""
        raise fail(f"{text!r} is not a value{hint}")

    def span(first: int, last: int) -> list[int]:
        if first <= last:
            return list(range(first, last + 1))
        # wrap around the end of the field, as Celery does: hour 22-2 is 22, 23, 0, 1, 2
        return list(range(first, field.high + 1)) + list(range(field.low, last + 1))

    def part(text: str) -> list[int]:
        match = _PART.fullmatch(text)
        if match is None:
            raise fail(f"{text!r} is not a value, a range or a step (like 5, 1-5, */15, 1-59/2)")
        if match["slash"]:
            step_text = match["step"].strip()
            if not step_text:
                raise fail(f"empty step in {text!r}")
            if not re.fullmatch(r"[0-9]+", step_text) or int(step_text) < 1:
                raise fail(f"bad step {step_text!r} in {text!r} (a whole number from 1)")
        step = int(match["step"].strip()) if match["slash"] else 1
        if match["star"]:
            values = span(field.low, field.high)
        elif match["last"] is not None:
            values = span(token(match["first"]), token(match["last"]))
        else:
            first = token(match["first"])
            values = span(first, field.high) if match["slash"] else [first]  # 5/15: 5, 20, ...
        return values[::step]

    if spec is None:
        spec = "*"  # Celery's cronfield(None)
    if isinstance(spec, bool):
        raise fail("expected a string, an int or a list, not a bool")
    if isinstance(spec, int):
        values: set[int] = {number(spec)}
    elif isinstance(spec, str):
        if not spec.strip():
            raise fail("empty field (write '*' for every value)")
        values = set()
        for text in spec.lower().split(","):
            if not text.strip():
                raise fail("empty part between commas")
            values.update(part(text.strip()))
    elif isinstance(spec, Iterable) and not isinstance(spec, bytes | bytearray):
        items = list(spec)
        if not items:
            raise fail("an empty list matches nothing")
        values = set().union(*(_parse_field(item, field) for item in items))
    else:
        raise fail("expected a string, an int or a list")
    if field.sunday_is_seven and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key ("../etc")
        raise ConfigurationError(f"crontab tz={name!r}: no such timezone") from None


class crontab:
    """Celery's crontab: every field must match (minute, hour, day of week, day of month,
    month). `crontab()` is every minute; `crontab(minute=0, hour="*/3")`; `crontab(minute=30,
    hour=7, day_of_week="mon-fri")`; `crontab.from_string("30 7 * * mon-fri")`. Two crontabs
    that expand to the same values in the same timezone are equal (and hash alike)."""

    def __init__(
        self,
        minute: object = "*",
        hour: object = "*",
        day_of_week: object = "*",
        day_of_month: object = "*",
        month_of_year: object = "*",
        tz: str | dt.tzinfo | None = None,
    ) -> None:
        self.spec = tuple(
            "*" if s is None else s
            for s in (minute, hour, day_of_week, day_of_month, month_of_year)
        )
        self.minutes = sorted(_parse_field(minute, MINUTE))
        self.hours = sorted(_parse_field(hour, HOUR))
        self.days_of_week = _parse_field(day_of_week, DAY_OF_WEEK)
        self.days_of_month = _parse_field(day_of_month, DAY_OF_MONTH)
        self.months = _parse_field(month_of_year, MONTH_OF_YEAR)
        self.tz: dt.tzinfo | None = _zone(tz) if isinstance(tz, str) else tz
        self._sorted_days = sorted(self.days_of_month)
        self._sorted_months = sorted(self.months)
        if not any(
            day <= _LONGEST_MONTH[month] for month in self.months for day in self.days_of_month
        ):
            raise ConfigurationError(
                f"crontab day_of_month={self.spec[3]!r}, month_of_year={self.spec[4]!r}: "
                "no such date in any year"
            )

    @classmethod
    def from_string(cls, text: str, tz: str | dt.tzinfo | None = None) -> crontab:
        """A cron line's five fields, in cron's (and Celery's) order: minute hour day_of_month
        month_of_year day_of_week, e.g. `crontab.from_string("*/5 * * * *")`."""
        fields = text.split() if isinstance(text, str) else None
        if fields is None or len(fields) != 5:
            count = f"got {len(fields)}" if fields is not None else f"got {type(text).__name__}"
            raise ConfigurationError(
                f"crontab.from_string({text!r}): expected 5 fields "
                f"(minute hour day_of_month month_of_year day_of_week), {count}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    # Celery's attribute names, each the set of values a field matches
    @property
    def minute(self) -> frozenset[int]:
        return frozenset(self.minutes)

    @property
    def hour(self) -> frozenset[int]:
        return frozenset(self.hours)

    @property
    def day_of_week(self) -> frozenset[int]:
        return self.days_of_week

    @property
    def day_of_month(self) -> frozenset[int]:
        return self.days_of_month

    @property
    def month_of_year(self) -> frozenset[int]:
        return self.months

    def _key(self) -> tuple[frozenset[int], ...]:
        return self.minute, self.hour, self.days_of_week, self.days_of_month, self.months

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key() and self.tz == other.tz

    def __hash__(self) -> int:
        # not the timezone: with_timezone() sets it later on a crontab that may already be a key
        return hash(self._key())

    def __repr__(self) -> str:
        minute, hour, dow, dom, month = self.spec
        return f"<crontab: {minute} {hour} {dom} {month} {dow}>"

    def with_timezone(self, tz: dt.tzinfo) -> crontab:
        """The app's timezone, unless this crontab names its own."""
        if self.tz is None:
            self.tz = tz
        return self

    def _days_from(self, start: dt.date) -> Iterator[dt.date]:
        """The matching dates from `start` on. Any satisfiable spec matches within a 400-year
        Gregorian cycle (Feb 29 on a Monday can be 40 years away), so that bounds the search."""
        for year in range(start.year, min(start.year + 401, dt.MAXYEAR + 1)):
            for month in self._sorted_months:
                if (year, month) < (start.year, start.month):
                    continue
                length = calendar.monthrange(year, month)[1]
                for day_number in self._sorted_days:
                    if day_number > length:
                        break
                    day = dt.date(year, month, day_number)
                    # cron counts from Sunday = 0
                    if day >= start and day.isoweekday() % 7 in self.days_of_week:
                        yield day

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        tz = self.tz or dt.UTC
        local = moment.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
        for day in self._days_from(local.date()):
            for hour in self.hours:
                for minute in self.minutes:
                    wall = dt.datetime.combine(day, dt.time(hour, minute))
                    if wall < local:
                        continue
                    # fold=0: an hour that happens twice runs at its first occurrence
                    candidate = wall.replace(tzinfo=tz)
                    if candidate > moment:
                        return candidate.astimezone(dt.UTC).astimezone(tz)
        raise ConfigurationError(f"{self!r} never matches a date")


def schedule_of(value: object) -> Schedule:
    """What `beat_schedule[...]["schedule"]` may hold: seconds, a timedelta, a crontab."""
    if isinstance(value, crontab | every):
        return value
    if isinstance(value, int | float | dt.timedelta) and not isinstance(value, bool):
        return every(value)
    raise ConfigurationError(f"a schedule is seconds, a timedelta or a crontab(...), got {value!r}")


@dataclass
class Entry:
    """One periodic task: what to send (task name, arguments, options) and when."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
