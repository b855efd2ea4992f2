"""Export slots and cron lines, checked against an oracle written straight from the schedule's definition."""

from __future__ import annotations

import time as clock
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsexport.api import Schedule
from dsexport.engine.schedule import (
    CronSchedule,
    NoSlotError,
    cron_schedule,
    export_slot,
    export_time_folder,
    next_slots,
    parse_export_time,
    slots,
)
from dsexport.errors import ConfigError

PROPERTIES = settings(max_examples=150, deadline=None)


def make(
    frequency: str,
    *,
    interval: int | None = None,
    at: str = "00:00",
    start: str | date | None = None,
    end: str | date | None = None,
) -> Schedule:
    document: dict[str, object] = {"frequency": frequency, "time": at}
    if interval is not None:
        document["interval"] = interval
    if start is not None:
        document["startDate"] = str(start)
    if end is not None:
        document["endDate"] = str(end)
    return Schedule.model_validate(document)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ the oracle


def clock_time(schedule: Schedule) -> tuple[int, int]:
    hour, minute = schedule.time.split(":")
    return int(hour), int(minute)


def is_slot(schedule: Schedule, instant: datetime) -> bool:
    """The definition of a slot, spelled out without any of the module's machinery."""
    instant = instant.astimezone(UTC)
    hour, minute = clock_time(schedule)
    if instant.second or instant.microsecond or instant.minute != minute:
        return False
    day = instant.date()
    if schedule.start_date is not None and day < date.fromisoformat(schedule.start_date):
        return False
    if schedule.end_date is not None and day > date.fromisoformat(schedule.end_date):
        return False
    if schedule.frequency == "daily":
        return instant.hour == hour
    if schedule.frequency == "hourly":
        assert schedule.interval is not None
        return instant.hour >= hour and (instant.hour - hour) % schedule.interval == 0
    assert schedule.start_date is not None
    return day == date.fromisoformat(schedule.start_date) and instant.hour == hour


def oracle_slots(schedule: Schedule, start: datetime, end: datetime) -> Iterator[datetime]:
    """Brute force over every hour in the range: only for short ranges."""
    _, minute = clock_time(schedule)
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour <= end:
        candidate = hour.replace(minute=minute)
        if start <= candidate <= end and is_slot(schedule, candidate):
            yield candidate
        hour += timedelta(hours=1)


def oracle_first_slot(schedule: Schedule) -> datetime | None:
    """Every day's first slot is at ``time``, so the first slot overall is startDate at ``time``."""
    if schedule.start_date is None:
        return None
    hour, minute = clock_time(schedule)
    return datetime.combine(date.fromisoformat(schedule.start_date), time(hour, minute), tzinfo=UTC)


def oracle_last_day(schedule: Schedule) -> date | None:
    if schedule.frequency == "once":
        assert schedule.start_date is not None
        return date.fromisoformat(schedule.start_date)
    return None if schedule.end_date is None else date.fromisoformat(schedule.end_date)


def cron_field(text: str, low: int, high: int) -> set[int] | None:
    """A cron field restricted to what the module may emit: ``*`` or a list of numbers (None means any)."""
    if text == "*":
        return None
    values = {int(value) for value in text.split(",")}
    assert all(low <= value <= high for value in values), text
    return values


def cron_matcher(expression: str) -> Callable[[datetime], bool]:
    fields = expression.split(" ")
    assert len(fields) == 5, expression
    minutes = cron_field(fields[0], 0, 59)
    hours = cron_field(fields[1], 0, 23)
    days = cron_field(fields[2], 1, 31)
    months = cron_field(fields[3], 1, 12)
    assert fields[4] == "*", expression

    def matches(instant: datetime) -> bool:
        return all(
            allowed is None or value in allowed
            for allowed, value in (
                (minutes, instant.minute),
                (hours, instant.hour),
                (days, instant.day),
                (months, instant.month),
            )
        )

    return matches


# ------------------------------------------------------------------------------------------------ strategies

DAYS = st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31))
TIMES = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


@st.composite
def schedules(draw: st.DrawFn, frequencies: tuple[str, ...] = ("daily", "hourly", "once")) -> Schedule:
    frequency = draw(st.sampled_from(frequencies))
    interval = draw(st.sampled_from([3, 6, 8, 9, 12])) if frequency == "hourly" else None
    start = draw(DAYS) if frequency == "once" else draw(st.none() | DAYS)
    end = None
    if draw(st.booleans()):
        end = (start or draw(DAYS)) + timedelta(days=draw(st.integers(1, 3 * 365)))
    return make(frequency, interval=interval, at=draw(TIMES), start=start, end=end)


@st.composite
def instants(draw: st.DrawFn, schedule: Schedule) -> datetime:
    """Anywhere across several years, or close to one of the schedule's edges, where the mistakes live."""
    anchors = [utc(2025, 6, 15)]
    first = oracle_first_slot(schedule)
    if first is not None:
        anchors += [first, first.replace(hour=0, minute=0)]
    if schedule.end_date is not None:
        anchors.append(datetime.combine(date.fromisoformat(schedule.end_date), time(), tzinfo=UTC))
        anchors.append(anchors[-1] + timedelta(days=1))
    near = st.builds(
        lambda anchor, minutes, seconds: anchor + timedelta(minutes=minutes, seconds=seconds),
        st.sampled_from(anchors),
        st.integers(-3 * 1440, 3 * 1440),
        st.sampled_from([0, 0, 0, 1, 59]),
    )
    anywhere = st.datetimes(min_value=datetime(2018, 1, 1), max_value=datetime(2035, 12, 31), timezones=ZONES)
    return draw(near | anywhere)


@st.composite
def schedule_and_instant(draw: st.DrawFn) -> tuple[Schedule, datetime]:
    schedule = draw(schedules())
    return schedule, draw(instants(schedule))


# ---------------------------------------------------------------------------------------------- cron examples


@pytest.mark.parametrize(
    ("schedule", "expression"),
    [
        (make("daily", at="09:30"), "30 9 * * *"),
        (make("daily"), "0 0 * * *"),
        (make("hourly", interval=6, at="09:30"), "30 9,15,21 * * *"),
        (make("hourly", interval=9, at="01:00"), "0 1,10,19 * * *"),
        (make("hourly", interval=3, at="00:05"), "5 0,3,6,9,12,15,18,21 * * *"),
        (make("hourly", interval=12, at="23:59"), "59 23 * * *"),
        (make("hourly", interval=8, at="15:00", start="2026-01-01", end="2026-02-01"), "0 15,23 * * *"),
        (make("once", at="09:30", start="2026-12-01"), "30 9 1 12 *"),
        (make("once", at="00:00", start="2028-02-29", end="2028-03-01"), "0 0 29 2 *"),
    ],
)
def test_cron_schedule_examples(schedule: Schedule, expression: str) -> None:
    assert cron_schedule(schedule) == CronSchedule(expression=expression, time_zone="Etc/UTC")


# ---------------------------------------------------------------------------------------------- slot examples


def test_hourly_slots_stay_within_the_day_and_the_end_date_is_inclusive() -> None:
    schedule = make("hourly", interval=6, at="09:30", start="2026-12-01", end="2026-12-02")
    found = list(slots(schedule, start=utc(2026, 1, 1), end=utc(2027, 12, 31)))
    assert found == [
        utc(2026, 12, 1, 9, 30),
        utc(2026, 12, 1, 15, 30),
        utc(2026, 12, 1, 21, 30),
        utc(2026, 12, 2, 9, 30),
        utc(2026, 12, 2, 15, 30),
        utc(2026, 12, 2, 21, 30),
    ]


def test_slots_bounds_are_inclusive() -> None:
    schedule = make("daily", at="09:30")
    assert list(slots(schedule, start=utc(2026, 3, 1, 9, 30), end=utc(2026, 3, 2, 9, 30))) == [
        utc(2026, 3, 1, 9, 30),
        utc(2026, 3, 2, 9, 30),
    ]
    assert list(slots(schedule, start=utc(2026, 3, 2), end=utc(2026, 3, 1))) == []


def test_once_has_exactly_one_slot() -> None:
    schedule = make("once", at="09:30", start="2026-12-01", end="2027-12-01")
    assert list(slots(schedule, start=utc(2020, 1, 1), end=utc(2030, 1, 1))) == [utc(2026, 12, 1, 9, 30)]
    assert export_slot(schedule, utc(2029, 5, 5)) == utc(2026, 12, 1, 9, 30)
    assert next_slots(schedule, after=utc(2026, 12, 1, 9, 29), count=5) == [utc(2026, 12, 1, 9, 30)]
    assert next_slots(schedule, after=utc(2026, 12, 1, 9, 30), count=5) == []


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2026, 12, 1, 9, 30), utc(2026, 12, 1, 9, 30)),
        (utc(2026, 12, 1, 14, 0), utc(2026, 12, 1, 9, 30)),
        (utc(2026, 12, 1, 15, 30), utc(2026, 12, 1, 15, 30)),
        (utc(2026, 12, 2, 3, 0), utc(2026, 12, 1, 21, 30)),
        (utc(2026, 12, 5, 23, 59), utc(2026, 12, 5, 21, 30)),
        (utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 31, 21, 30)),
        (utc(2031, 6, 1), utc(2026, 12, 31, 21, 30)),
        (datetime(2026, 12, 1, 16, 0, tzinfo=timezone(timedelta(hours=1))), utc(2026, 12, 1, 9, 30)),
    ],
)
def test_export_slot_examples(at: datetime, expected: datetime) -> None:
    schedule = make("hourly", interval=6, at="09:30", start="2026-12-01", end="2026-12-31")
    slot = export_slot(schedule, at)
    assert slot == expected
    assert slot.utcoffset() == timedelta(0)


def test_export_slot_before_the_first_slot_names_it() -> None:
    schedule = make("hourly", interval=6, at="09:30", start="2026-12-01")
    with pytest.raises(NoSlotError) as raised:
        export_slot(schedule, utc(2026, 11, 30, 10, 0))
    assert str(raised.value) == (
        "no export slot at or before 2026-11-30T10:00Z: the schedule's first slot is 2026-12-01T09:30Z; "
        "exports start there"
    )
    assert isinstance(raised.value, ConfigError)
    assert raised.value.permanent
    with pytest.raises(NoSlotError, match="first slot is 2026-12-01T09:30Z"):
        export_slot(schedule, utc(2026, 12, 1, 9, 29, 59))


def test_export_slot_is_direct_even_far_from_the_start_date() -> None:
    schedule = make("hourly", interval=3, at="00:00", start="2000-01-01")
    for year in (2500, 5000, 9999):
        began = clock.perf_counter()
        assert export_slot(schedule, utc(year, 12, 31, 23, 59)) == utc(year, 12, 31, 21, 0)
        assert clock.perf_counter() - began < 0.25


def test_next_slots_examples() -> None:
    schedule = make("daily", at="09:30", end="2026-12-03")
    assert next_slots(schedule, after=utc(2026, 12, 1, 9, 30), count=3) == [
        utc(2026, 12, 2, 9, 30),
        utc(2026, 12, 3, 9, 30),
    ]
    assert next_slots(schedule, after=utc(2026, 11, 1), count=0) == []
    with pytest.raises(ValueError, match="count"):
        next_slots(schedule, after=utc(2026, 11, 1), count=-1)


NAIVE = datetime(2026, 12, 1, 9, 30)
AWARE = utc(2026, 12, 1, 9, 30)
DAILY = make("daily", at="09:30")


@pytest.mark.parametrize(
    "call",
    [
        lambda: export_slot(DAILY, NAIVE),
        lambda: list(slots(DAILY, start=NAIVE, end=AWARE)),
        lambda: list(slots(DAILY, start=AWARE, end=NAIVE)),
        lambda: next_slots(DAILY, after=NAIVE, count=1),
        lambda: export_time_folder(NAIVE),
    ],
    ids=["export_slot", "slots-start", "slots-end", "next_slots", "export_time_folder"],
)
def test_naive_datetimes_are_rejected(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


def test_dates_that_match_the_pattern_but_not_the_calendar_are_rejected() -> None:
    schedule = make("once", at="09:30", start="2026-02-31")
    with pytest.raises(ValueError, match="startDate '2026-02-31' is not a calendar date"):
        export_slot(schedule, AWARE)
    with pytest.raises(ValueError, match="startDate"):
        cron_schedule(schedule)


# ------------------------------------------------------------------------------------------- folder examples


def test_export_time_folder_examples() -> None:
    assert export_time_folder(utc(2026, 12, 1, 9, 30)) == "202612010930"
    plus_one = timezone(timedelta(hours=1))
    assert export_time_folder(datetime(2026, 12, 1, 0, 5, tzinfo=plus_one)) == "202611302305"
    assert parse_export_time("202612010930") == utc(2026, 12, 1, 9, 30)
    with pytest.raises(ValueError, match="whole minute"):
        export_time_folder(utc(2026, 12, 1, 9, 30, 1))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20261201093",
        "2026120109300",
        "2026-12-01T09",
        "202613010930",
        "202602300930",
        "202612012400",
        "\uff12\uff10\uff12\uff1612010930",  # fullwidth digits: str.isdigit() would let them through
    ],
)
def test_parse_export_time_rejects_what_is_not_a_folder(text: str) -> None:
    with pytest.raises(ValueError, match="not an export time folder"):
        parse_export_time(text)


# ------------------------------------------------------------------------------------------------ properties


@PROPERTIES
@given(schedule_and_instant())
def test_export_slot_is_the_latest_slot_at_or_before(case: tuple[Schedule, datetime]) -> None:
    schedule, at = case
    first = oracle_first_slot(schedule)
    try:
        slot = export_slot(schedule, at)
    except NoSlotError as error:
        assert first is not None
        assert at < first
        assert f"first slot is {first:%Y-%m-%dT%H:%M}Z" in str(error)
        return
    assert first is None or at >= first
    assert slot <= at
    assert slot.utcoffset() == timedelta(0)
    assert is_slot(schedule, slot)
    assert list(slots(schedule, start=slot, end=at)) == [slot]
    horizon = min(at, slot + timedelta(days=2))
    assert list(oracle_slots(schedule, slot, horizon)) == [slot]
    if at > horizon:
        # Two slot-less days after a slot only happen once the window is over.
        last_day = oracle_last_day(schedule)
        assert last_day is not None
        assert slot.date() == last_day
        assert next_slots(schedule, after=slot, count=1) == []


@PROPERTIES
@given(schedule_and_instant())
def test_export_slot_is_idempotent(case: tuple[Schedule, datetime]) -> None:
    schedule, at = case
    try:
        slot = export_slot(schedule, at)
    except NoSlotError:
        return
    assert export_slot(schedule, slot) == slot
    assert export_time_folder(export_slot(schedule, parse_export_time(export_time_folder(slot)))) == (
        export_time_folder(slot)
    )


@PROPERTIES
@given(schedule_and_instant(), st.integers(0, 4 * 24 * 60))
def test_slots_are_exactly_the_oracles_slots(case: tuple[Schedule, datetime], minutes: int) -> None:
    schedule, start = case
    end = start + timedelta(minutes=minutes)
    found = list(slots(schedule, start=start, end=end))
    assert found == list(oracle_slots(schedule, start, end))
    assert found == sorted(set(found))


@PROPERTIES
@given(schedules(frequencies=("daily", "hourly")), st.data())
def test_cron_fires_exactly_at_the_slots_within_the_window(schedule: Schedule, data: st.DataObject) -> None:
    cron = cron_schedule(schedule)
    assert cron.time_zone == "Etc/UTC"
    matches = cron_matcher(cron.expression)
    low = date.fromisoformat(schedule.start_date) if schedule.start_date else date(2020, 1, 1)
    high = date.fromisoformat(schedule.end_date) if schedule.end_date else low + timedelta(days=3 * 365)
    day = data.draw(st.dates(min_value=low, max_value=high))
    midnight = datetime.combine(day, time(), tzinfo=UTC)
    expected = set(slots(schedule, start=midnight, end=midnight + timedelta(days=1, microseconds=-1)))
    assert expected
    minutes = (midnight + timedelta(minutes=m) for m in range(24 * 60))
    fired = {instant for instant in minutes if matches(instant)}
    assert fired == expected


@settings(max_examples=40, deadline=None)
@given(schedules(frequencies=("once",)))
def test_cron_for_once_fires_only_at_the_slot_in_its_year(schedule: Schedule) -> None:
    cron = cron_schedule(schedule)
    assert cron.time_zone == "Etc/UTC"
    matches = cron_matcher(cron.expression)
    [slot] = list(slots(schedule, start=utc(2000, 1, 1), end=utc(2040, 1, 1)))
    day = date(slot.year, 1, 1)
    while day.year == slot.year:
        midnight = datetime.combine(day, time(), tzinfo=UTC)
        minutes = range(24 * 60) if day == slot.date() else [slot.hour * 60 + slot.minute]
        fired = [midnight + timedelta(minutes=m) for m in minutes if matches(midnight + timedelta(minutes=m))]
        assert fired == ([slot] if day == slot.date() else [])
        day += timedelta(days=1)


@PROPERTIES
@given(schedule_and_instant(), st.integers(0, 30))
def test_next_slots_are_the_consecutive_slots_after(case: tuple[Schedule, datetime], count: int) -> None:
    schedule, after = case
    found = next_slots(schedule, after=after, count=count)
    assert len(found) <= count
    assert all(slot > after for slot in found)
    assert all(is_slot(schedule, slot) for slot in found)
    assert found == sorted(set(found))
    if found:
        assert list(slots(schedule, start=found[0], end=found[-1])) == found
        try:
            previous = export_slot(schedule, found[0] - timedelta(microseconds=1))
        except NoSlotError:
            previous = None
        assert previous is None or previous <= after
    if len(found) < count:
        last_day = oracle_last_day(schedule)
        assert last_day is not None
        end_of_window = datetime.combine(last_day, time.max, tzinfo=UTC)
        tail_start = found[-1] if found else after
        assert [s for s in slots(schedule, start=tail_start, end=end_of_window) if s > tail_start] == []
        assert [s for s in oracle_slots(schedule, tail_start, end_of_window) if s > tail_start] == []


MINUTES = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC)
)


@PROPERTIES
@given(MINUTES, MINUTES)
def test_export_time_folders_roundtrip_and_sort_in_time_order(first: datetime, second: datetime) -> None:
    folder = export_time_folder(first)
    assert len(folder) == 12
    assert folder.isdigit()
    assert parse_export_time(folder) == first
    assert export_time_folder(parse_export_time(folder)) == folder
    assert (folder < export_time_folder(second)) == (first < second)
