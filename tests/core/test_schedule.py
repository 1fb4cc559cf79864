"""Pure schedule maths: next slot, timezones, DST, margins. No server, no sleeps."""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo

import pytest

from job_processor.core.schedule import Schedule, local_to_utc, plan_slots

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def slots(schedule: Schedule, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    out = []
    t = schedule.next_after(start)
    while t < end:
        out.append(t)
        t = schedule.next_after(t)
    return out


def test_next_slot_is_strictly_after() -> None:
    s = Schedule("0 2 * * *")
    assert s.next_after(utc(2030, 1, 1, 1, 59)) == utc(2030, 1, 1, 2, 0)
    assert s.next_after(utc(2030, 1, 1, 2, 0)) == utc(2030, 1, 2, 2, 0)


def test_seconds_field_comes_first() -> None:
    s = Schedule("*/10 * * * * *")
    assert s.next_after(utc(2030, 1, 1, 0, 0, 0)) == utc(2030, 1, 1, 0, 0, 10)
    assert s.next_after(utc(2030, 1, 1, 0, 0, 55)) == utc(2030, 1, 1, 0, 1, 0)


def test_timezone_is_the_crons_own() -> None:
    s = Schedule("0 2 * * *", "Europe/Paris")
    assert s.next_after(utc(2030, 1, 1)) == utc(2030, 1, 1, 1, 0)  # CET = UTC+1
    assert s.next_after(utc(2030, 6, 30, 23)) == utc(2030, 7, 1, 0, 0)  # CEST = UTC+2


def test_spring_forward_0230_runs_once_at_0300() -> None:
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    s = Schedule("30 2 * * *", "Europe/Paris")
    got = slots(s, utc(2026, 3, 27), utc(2026, 3, 31))
    assert got == [
        utc(2026, 3, 27, 1, 30),  # 02:30 CET
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # the change itself: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    assert local_to_utc(dt.datetime(2026, 3, 29, 2, 30), PARIS) == utc(2026, 3, 29, 1, 0)


def test_fall_back_0230_runs_once_at_first_occurrence() -> None:
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    s = Schedule("30 2 * * *", "Europe/Paris")
    got = slots(s, utc(2026, 10, 24), utc(2026, 10, 27))
    assert got == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # first 02:30 (CEST); not again at 01:30 UTC
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_hourly_cron_across_both_changes_never_doubles() -> None:
    s = Schedule("0 * * * *", "Europe/Paris")
    spring = slots(s, utc(2026, 3, 28, 22, 59), utc(2026, 3, 29, 22))  # local day of 23 hours
    assert len(spring) == len(set(spring)) == 23
    fall = slots(s, utc(2026, 10, 24, 21, 59), utc(2026, 10, 25, 23))  # local day of 25 hours
    assert len(fall) == len(set(fall)) == 24  # the repeated 02:00 runs once
    assert fall == sorted(fall)


def test_slots_inside_the_gap_collapse_into_one() -> None:
    s = Schedule("*/20 * * * *", "Europe/Paris")
    got = slots(s, utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30))
    # 01:40 CET, then 02:00/02:20/02:40 (gap) -> 03:00 CEST once, then 03:20 CEST
    assert got == [utc(2026, 3, 29, 0, 40), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 20)]


def test_a_day_of_per_second_slots_is_fast() -> None:
    s = Schedule("* * * * * *")
    start = time.perf_counter()
    got = slots(s, utc(2030, 1, 1), utc(2030, 1, 1, 1))
    assert len(got) == 3599
    assert time.perf_counter() - start < 5


def test_plan_runs_within_margin_and_misses_older_slots() -> None:
    s = Schedule("* * * * *")  # every minute
    margin = dt.timedelta(minutes=5)
    now = utc(2030, 1, 1, 12, 10, 30)
    plan = plan_slots(s, utc(2030, 1, 1, 12, 0), now, margin)
    assert plan.missed == [utc(2030, 1, 1, 12, m) for m in range(0, 6)]
    assert plan.run == [utc(2030, 1, 1, 12, m) for m in range(6, 11)]
    assert plan.next_slot == utc(2030, 1, 1, 12, 11)
    assert not plan.more_missed


def test_plan_on_time_runs_one_slot() -> None:
    s = Schedule("*/5 * * * *")
    now = utc(2030, 1, 1, 12, 5, 0, 300000)
    plan = plan_slots(s, utc(2030, 1, 1, 12, 5), now, dt.timedelta(minutes=1))
    assert plan.run == [utc(2030, 1, 1, 12, 5)]
    assert plan.missed == []
    assert plan.next_slot == utc(2030, 1, 1, 12, 10)


def test_long_downtime_lists_a_bounded_number_and_jumps() -> None:
    s = Schedule("* * * * * *")  # every second, down for a day
    now = utc(2030, 1, 2)
    plan = plan_slots(s, utc(2030, 1, 1), now, dt.timedelta(seconds=30), max_listed=50)
    assert len(plan.missed) == 50
    assert plan.more_missed
    assert plan.run[0] == now - dt.timedelta(seconds=30)
    assert len(plan.run) == 31
    assert plan.next_slot == now + dt.timedelta(seconds=1)


def test_a_long_downtime_jump_ends_for_margins_and_times_finer_than_a_millisecond() -> None:
    """The jump over a long downtime lands on the first slot within the margin, to the
    microsecond: it once landed on a slot missed by less than a millisecond, over and over (the
    loop never ended: the event loop froze)."""
    s = Schedule("* * * * * *")
    start = utc(2030, 1, 1)
    for now, margin in [
        (start + dt.timedelta(minutes=10, microseconds=500), dt.timedelta(minutes=1)),
        (
            start + dt.timedelta(minutes=10, seconds=7, milliseconds=408),
            dt.timedelta(minutes=0.123456),
        ),
        (start + dt.timedelta(minutes=10), dt.timedelta(minutes=1 / 7)),
    ]:
        plan = plan_slots(s, start, now, margin, max_listed=50)
        assert plan.more_missed and len(plan.missed) == 50
        assert plan.run, "the slots within the margin run"
        assert all(now - slot <= margin for slot in plan.run)
        assert now - (plan.run[0] - dt.timedelta(seconds=1)) > margin, "the first one within it"
        assert plan.next_slot is not None and plan.next_slot > now


@pytest.mark.parametrize(
    ("cron_string", "expected"),
    [
        ("5-5 * * * *", [utc(2030, 1, 1, 0, 5), utc(2030, 1, 1, 1, 5), utc(2030, 1, 1, 2, 5)]),
        ("0 3-3 * * *", [utc(2030, 1, 1, 3), utc(2030, 1, 2, 3), utc(2030, 1, 3, 3)]),
        ("0 0 15-15 * *", [utc(2030, 1, 15), utc(2030, 2, 15), utc(2030, 3, 15)]),
        ("0 0 * * 3-3", [utc(2030, 1, 2), utc(2030, 1, 9), utc(2030, 1, 16)]),  # Wednesdays
        ("0 0 * * 7-7", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),  # 7 is Sunday
        ("0 0 * * 7-sun", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),  # 7 to 0
        ("0 0 * * 7-0", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),
        ("0 0 * * 07-0", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),
        ("0 0 * * 07-sun", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),
        ("0 0 * * 7-00", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),
        ("0 0 * * wed-wed", [utc(2030, 1, 2), utc(2030, 1, 9), utc(2030, 1, 16)]),
        ("0 5-5 * * * *", [utc(2030, 1, 1, 0, 5), utc(2030, 1, 1, 1, 5), utc(2030, 1, 1, 2, 5)]),
        ("10-10/5 * * * *", [utc(2030, 1, 1, 0, 10), utc(2030, 1, 1, 1, 10)]),
        ("1,5-5,7 0 * * *", [utc(2030, 1, 1, 0, 1), utc(2030, 1, 1, 0, 5), utc(2030, 1, 1, 0, 7)]),
    ],
)
def test_a_range_of_a_single_value_matches_that_value_only(
    cron_string: str, expected: list[dt.datetime]
) -> None:
    """'5-5' is minute 5 (as in cron(8)), not every minute: croniter reads a range whose ends
    are equal as '*', so such a cron fired 60x (minutes), 24x (hours) or 7x (weekdays) too
    often."""
    got = slots(Schedule(cron_string), utc(2030, 1, 1), expected[-1] + dt.timedelta(seconds=1))
    assert got == expected


def test_wrapped_and_ordinary_ranges_are_read_as_before() -> None:
    assert slots(Schedule("0 22-1 * * *"), utc(2029, 12, 31, 23, 59), utc(2030, 1, 2)) == [
        utc(2030, 1, 1, 0),
        utc(2030, 1, 1, 1),
        utc(2030, 1, 1, 22),
        utc(2030, 1, 1, 23),
    ]
    assert slots(Schedule("0 2-4 * * *"), utc(2030, 1, 1), utc(2030, 1, 1, 5)) == [
        utc(2030, 1, 1, 2),
        utc(2030, 1, 1, 3),
        utc(2030, 1, 1, 4),
    ]


@pytest.mark.parametrize(
    ("cron_string", "expected"),
    [
        # the same value written two ways: cron(8) reads each as that one value
        ("05-5 * * * *", [utc(2030, 1, 1, 0, 5), utc(2030, 1, 1, 1, 5), utc(2030, 1, 1, 2, 5)]),
        ("0 0 * * sun-0", [utc(2030, 1, 6), utc(2030, 1, 13), utc(2030, 1, 20)]),  # Sundays
        ("0 0 1 jan-1 *", [utc(2030, 1, 1), utc(2031, 1, 1)]),  # January only
    ],
)
def test_a_range_of_one_value_spelt_two_ways_matches_that_value_only(
    cron_string: str, expected: list[dt.datetime]
) -> None:
    """croniter_form collapsed 'a-a' only when both ends were the same text: '05-5', 'sun-0'
    and 'jan-1' still reached croniter, which reads them as '*' (60x, 7x, 12x too often)."""
    start = utc(2029, 12, 31, 23, 59)
    got = slots(Schedule(cron_string), start, expected[-1] + dt.timedelta(seconds=1))
    assert got == expected


def test_sunday_as_0_and_7_stays_a_range_of_every_day() -> None:
    assert len(slots(Schedule("0 0 * * 0-7"), utc(2029, 12, 31, 23, 59), utc(2030, 1, 7, 1))) == 7


@pytest.mark.parametrize("cron_string", ["R 3 * * *", "0 R * * *", "0 0 * * r", "R(0-5)/2 * * * *"])
def test_a_random_R_field_is_refused_naming_it(cron_string: str) -> None:
    """croniter's 'R' is drawn again each time a croniter is built (each call of next_after,
    on each replica): '0 R * * *' never ran (each fire found its stored slot off schedule)."""
    from job_processor.core.cron_text import check_cron_string

    with pytest.raises(ValueError, match=r"uses 'R', a value drawn at random"):
        check_cron_string(cron_string)
    check_cron_string("0 0 * mar fri")  # names holding an R are names
