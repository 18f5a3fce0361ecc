"""When periodic tasks fall due: `every(seconds)` and `crontab(...)`, in the app's timezone.

Both answer one question, `next_after(moment)`: the first run strictly after an aware
datetime. A crontab is matched on the wall clock of its timezone, each wall-clock minute at
most once, so daylight-saving changes neither skip nor double a run: a time that does not
exist on the spring-forward day (02:30 in Europe) runs at the moment the clock jumps past it
(03:30 local, the same instant), and a time that happens twice in the autumn runs at its first
occurrence only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from .exceptions import ConfigurationError

DAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}


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


def _field(
    spec: object, low: int, high: int, names: dict[str, int] | None, what: str
) -> frozenset[int]:
    """`*`, `*/15`, `1-5`, `1-10/2`, `mon-fri`, `1,15` or ints, into the set of values."""
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        if isinstance(spec, Iterable):
            return frozenset().union(*(_field(part, low, high, names, what) for part in spec))
        raise ConfigurationError(f"crontab {what}={spec!r}: expected a string, int or list")

    def value(token: str) -> int:
        token = token.strip().lower()
        if names and token[:3] in names:
            return names[token[:3]]
        try:
            number = int(token)
        except ValueError:
            raise ConfigurationError(f"crontab {what}={spec!r}: {token!r} is not a value") from None
        if what == "day_of_week" and number == 7:
            return 0  # Sunday, either way
        if not low <= number <= high:
            raise ConfigurationError(f"crontab {what}={spec!r}: {number} is not in {low}-{high}")
        return number

    values: set[int] = set()
    for part in spec.split(","):
        part, _, step_text = part.partition("/")
        step = 1
        if step_text:
            step = int(step_text) if step_text.strip().isdigit() else 0
            if step < 1:
                raise ConfigurationError(f"crontab {what}={spec!r}: bad step {step_text!r}")
        if part.strip() in ("*", ""):
            start, end = low, high
        elif "-" in part:
            first, last = part.split("-", 1)
            start, end = value(first), value(last)
            if end < start:
                raise ConfigurationError(f"crontab {what}={spec!r}: range {part!r} runs backwards")
        else:
            start = value(part)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


class crontab:
    """Celery's crontab: every field must match (minute, hour, day of week, day of month,
    month). `crontab()` is every minute; `crontab(minute=0, hour="*/3")`; `crontab(minute=30,
    hour=7, day_of_week="mon-fri")`."""

    def __init__(
        self,
        minute: object = "*",
        hour: object = "*",
        day_of_week: object = "*",
        day_of_month: object = "*",
        month_of_year: object = "*",
        tz: str | dt.tzinfo | None = None,
    ) -> None:
        self.spec = (minute, hour, day_of_week, day_of_month, month_of_year)
        self.minutes = sorted(_field(minute, 0, 59, None, "minute"))
        self.hours = sorted(_field(hour, 0, 23, None, "hour"))
        self.days_of_week = _field(day_of_week, 0, 6, DAY_NAMES, "day_of_week")
        self.days_of_month = _field(day_of_month, 1, 31, None, "day_of_month")
        self.months = _field(month_of_year, 1, 12, MONTH_NAMES, "month_of_year")
        self.tz: dt.tzinfo | None = ZoneInfo(tz) if isinstance(tz, str) else tz

    def __repr__(self) -> str:
        minute, hour, dow, dom, month = self.spec
        return f"<crontab: {minute} {hour} {dom} {month} {dow}>"

    def with_timezone(self, tz: dt.tzinfo) -> crontab:
        """The app's timezone, unless this crontab names its own."""
        if self.tz is None:
            self.tz = tz
        return self

    def _day_matches(self, day: dt.date) -> bool:
        weekday = (day.weekday() + 1) % 7  # cron counts from Sunday = 0
        return (
            day.month in self.months
            and day.day in self.days_of_month
            and weekday in self.days_of_week
        )

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        tz = self.tz or dt.UTC
        local = moment.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
        day = local.date()
        for _ in range(366 * 8):  # enough for any satisfiable spec (Feb 29 on a weekday)
            if self._day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        wall = dt.datetime.combine(day, dt.time(hour, minute))
                        if wall < local:
                            continue
                        # fold=0: an hour that happens twice runs at its first occurrence
                        candidate = wall.replace(tzinfo=tz)
                        if candidate > moment:
                            return candidate.astimezone(dt.UTC).astimezone(tz)
            day += dt.timedelta(days=1)
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
