"""Export slots: the instants a DatasetExport's schedule runs at, and the cron line that fires them.

A slot is both when a run starts and which ``exportTime`` folder it writes to. Everything that needs a
slot (the CronJob, a manual ``--at`` run, a retry, the status' next export time) derives it from here, so
that a run and its retry always agree on the folder. Everything is UTC: naive datetimes are refused rather
than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from dsexport.api import Frequency, Schedule
from dsexport.errors import ConfigError

CRON_TIME_ZONE = "Etc/UTC"

_ONE_DAY = timedelta(days=1)
_FOLDER = re.compile(r"[0-9]{12}")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


class NoSlotError(ConfigError):
    """There is no slot at or before the requested instant, so there is no export time to attribute it to."""

    reason = "BeforeFirstSlot"

    def __init__(self, at: datetime, first_slot: datetime | None) -> None:
        self.at = at
        self.first_slot = first_slot
        if first_slot is None:
            message = f"no export slot at or before {_show(at)}: the schedule's active window has no slots"
        else:
            message = (
                f"no export slot at or before {_show(at)}: the schedule's first slot is {_show(first_slot)}; "
                "exports start there"
            )
        super().__init__(message)


@dataclass(frozen=True)
class CronSchedule:
    """What goes into a CronJob's ``spec.schedule`` and ``spec.timeZone``."""

    expression: str
    time_zone: str


@dataclass(frozen=True)
class _Plan:
    """A schedule reduced to "these times of day, on these days", which covers all three frequencies.

    ``once`` is a daily schedule whose window is the single day ``startDate``, so one code path serves all.
    """

    minute: int
    hours: tuple[int, ...]
    first_day: date | None
    last_day: date | None

    def at(self, day: date, hour: int) -> datetime:
        return datetime.combine(day, time(hour, self.minute), tzinfo=UTC)


def cron_schedule(schedule: Schedule) -> CronSchedule:
    """The CronJob schedule that fires at every slot of each day, in UTC.

    Cron has no notion of years or of ``startDate``/``endDate``: the expression fires every day, and for
    ``once`` on that day and month of every year. The active window is therefore not enforced here: whoever
    owns the CronJob keeps it suspended outside the window, and for ``once`` the operator suspends it after
    its single run so it does not fire again a year later.
    """
    plan = _plan(schedule)
    hours = ",".join(str(h) for h in plan.hours)
    if schedule.frequency == Frequency.once:
        assert plan.first_day is not None  # guaranteed by _plan
        expression = f"{plan.minute} {hours} {plan.first_day.day} {plan.first_day.month} *"
    else:
        expression = f"{plan.minute} {hours} * * *"
    return CronSchedule(expression=expression, time_zone=CRON_TIME_ZONE)


def describe(schedule: Schedule) -> str:
    """The schedule for people, as ``kubectl get`` shows it: ``daily at 09:30 UTC from 2026-12-01``."""
    if schedule.frequency == Frequency.once:
        return f"once on {schedule.start_date} at {schedule.time} UTC"
    if schedule.frequency == Frequency.hourly:
        text = f"every {schedule.interval}h from {schedule.time} UTC"
    else:
        text = f"daily at {schedule.time} UTC"
    if schedule.start_date:
        text += f" from {schedule.start_date}"
    if schedule.end_date:
        text += f" until {schedule.end_date}"
    return text


def active_window(schedule: Schedule) -> tuple[datetime | None, datetime | None]:
    """When a schedule may fire: from midnight UTC of ``startDate`` to its last slot (None: unbounded).

    Cron cannot say this (see ``cron_schedule``), so whoever owns the CronJob suspends it outside the window;
    opening at midnight rather than at the first slot leaves the whole day for the CronJob to be resumed in time.
    """
    plan = _plan(schedule)
    opens = datetime.combine(plan.first_day, time(0), tzinfo=UTC) if plan.first_day else None
    closes = plan.at(plan.last_day, plan.hours[-1]) if plan.last_day else None
    return opens, closes


def slots(schedule: Schedule, *, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every slot in ``[start, end]``, ascending, so callers can list or backfill a range in order."""
    plan = _plan(schedule)
    start = _utc(start, "start")
    end = _utc(end, "end")
    for slot in _slots_from(plan, start):
        if slot > end:
            return
        yield slot


def export_slot(schedule: Schedule, at: datetime) -> datetime:
    """The slot a run at ``at`` belongs to: the latest slot at or before it.

    A run that starts late, or a retry hours later, still writes to the folder of the slot it was fired for,
    which is what makes re-running an export idempotent. Computed directly, not by walking from ``startDate``.
    """
    plan = _plan(schedule)
    at = _utc(at, "at")
    latest = _latest_at_or_before(plan, at)
    if latest is None:
        raise NoSlotError(at, _first_slot(plan))
    return latest


def next_slots(schedule: Schedule, *, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` slots strictly after ``after``; fewer once the active window runs out."""
    if count < 0:
        raise ValueError(f"count must be zero or more, got {count}")
    plan = _plan(schedule)
    after = _utc(after, "after")
    found: list[datetime] = []
    if count == 0:
        return found
    for slot in _slots_from(plan, after):
        if slot == after:
            continue
        found.append(slot)
        if len(found) == count:
            break
    return found


def export_time_folder(slot: datetime) -> str:
    """The ``exportTime`` folder name, ``YYYYMMDDHHMM`` in UTC, which sorts in time order as plain text.

    Seconds are refused rather than dropped: two instants in one minute would otherwise share a folder.
    """
    slot = _utc(slot, "slot")
    if slot.second or slot.microsecond:
        raise ValueError(f"an export slot falls on a whole minute, got {slot.isoformat()}")
    return f"{slot.year:04d}{slot.month:02d}{slot.day:02d}{slot.hour:02d}{slot.minute:02d}"


def parse_export_time(text: str) -> datetime:
    """The slot an ``exportTime`` folder name stands for, so existing folders can be matched to slots."""
    if not _FOLDER.fullmatch(text):
        raise ValueError(f"not an export time folder: {text!r} (expected YYYYMMDDHHMM in UTC, e.g. 202612010930)")
    try:
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]), tzinfo=UTC)
    except ValueError as error:
        raise ValueError(f"not an export time folder: {text!r} ({error})") from None


# ------------------------------------------------------------------------------------------------- internals


def _plan(schedule: Schedule) -> _Plan:
    hour, minute = _parse_time(schedule.time)
    start = _parse_date(schedule.start_date, "startDate")
    end = _parse_date(schedule.end_date, "endDate")
    if schedule.frequency == Frequency.daily:
        return _Plan(minute=minute, hours=(hour,), first_day=start, last_day=end)
    if schedule.frequency == Frequency.hourly:
        if schedule.interval is None:
            raise ValueError("interval is required when frequency is hourly")
        hours = tuple(range(hour, 24, schedule.interval))
        return _Plan(minute=minute, hours=hours, first_day=start, last_day=end)
    if start is None:
        raise ValueError("startDate is required when frequency is once")
    last = start if end is None else min(start, end)
    return _Plan(minute=minute, hours=(hour,), first_day=start, last_day=last)


def _parse_time(text: str) -> tuple[int, int]:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"schedule time must be HH:MM in UTC (00:00 to 23:59), got {text!r}")
    return int(match[1]), int(match[2])


def _parse_date(text: str | None, field: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a calendar date (expected YYYY-MM-DD)") from None


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware UTC, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _show(instant: datetime) -> str:
    if instant.microsecond:
        spec = "microseconds"
    elif instant.second:
        spec = "seconds"
    else:
        spec = "minutes"
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _latest_at_or_before(plan: _Plan, at: datetime) -> datetime | None:
    """At most two days are looked at: every day of the window has a slot."""
    day = at.date()
    if plan.last_day is not None and day > plan.last_day:
        day, at = plan.last_day, datetime.combine(plan.last_day, time.max, tzinfo=UTC)
    if plan.first_day is not None and day < plan.first_day:
        return None
    same_day = [h for h in plan.hours if plan.at(day, h) <= at]
    if same_day:
        return plan.at(day, same_day[-1])
    if day == date.min or (plan.first_day is not None and day <= plan.first_day):
        return None
    return plan.at(day - _ONE_DAY, plan.hours[-1])


def _slots_from(plan: _Plan, start: datetime) -> Iterator[datetime]:
    """Slots at or after ``start``, ascending, until the window (or the calendar) ends."""
    day = start.date()
    if plan.first_day is not None and day < plan.first_day:
        day = plan.first_day
    while plan.last_day is None or day <= plan.last_day:
        for hour in plan.hours:
            slot = plan.at(day, hour)
            if slot >= start:
                yield slot
        if day == date.max:
            return
        day += _ONE_DAY


def _first_slot(plan: _Plan) -> datetime | None:
    begin = datetime.combine(plan.first_day or date.min, time.min, tzinfo=UTC)
    return next(_slots_from(plan, begin), None)
