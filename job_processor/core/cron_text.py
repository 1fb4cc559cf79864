"""Cron strings as text: their checks, how they are read, and the form croniter is given.

Pure (no I/O). `CronDef` validates with `check_cron_string` and `check_timezone`;
`schedule.Schedule` computes slots from `croniter_form`; the processor warns with
`cron_reading` and `cron_step_reading`.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

from croniter import CroniterBadDateError, croniter

#: A range part of a cron field, "a-b" or "a-b/n" (a, b numbers or names).
_RANGE = re.compile(r"^(\w+)-(\w+)(/\d+)?$", re.ASCII)
#: croniter's random value of a field: "R", "R(0-5)", "R/10".
_RANDOM = re.compile(r"^R(\(.*\))?(/\d+)?$", re.ASCII | re.IGNORECASE)


#: Names a month or a day of week field may use, as numbers (by field, minute = 0).
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {
    3: {m: str(n) for n, m in enumerate(_MONTHS, 1)},
    4: {d: str(n) for n, d in enumerate(_DAYS)},
}


def croniter_form(cron_string: str) -> str:
    """The cron string as croniter is given it: a range whose two ends are the same value
    ("5-5", "05-5", "wed-wed", "sun-0", "jan-1", "7-7", "10-10/5") is that one value, as in
    cron(8) (croniter reads it as "*": every minute, hour, day or month); everything else as
    written. (0 and 7, both Sunday: "7-0" and "7-sun" are Sunday; "0-7" stays every day.)"""
    fields = cron_string.split()
    minute = len(fields) - 5  # the minute field's index (6 fields: seconds first)

    def part(p: str, i: int) -> str:
        m = _RANGE.match(p)
        if m is None:
            return p
        names = _NAMES.get(i - minute, {})
        a, b = (names.get(x.lower(), x.lower()) for x in (m.group(1), m.group(2)))
        same = a == b or (a.isdigit() and b.isdigit() and int(a) == int(b))
        numbers = a.isdigit() and b.isdigit()  # 7-sun, 07-0: Sunday to Sunday
        same = same or (i - minute == 4 and numbers and (int(a), int(b)) == (7, 0))
        return m.group(1) if same else p

    return " ".join(",".join(part(p, i) for p in f.split(",")) for i, f in enumerate(fields))


def check_cron_string(v: str) -> str:
    """`v` when it is a cron string this package runs; else ValueError saying what is wrong."""
    fields = v.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron_string {v!r} must have 5 fields (minute hour day month weekday) "
            "or 6 with seconds first"
        )
    for f in fields:  # croniter's "R": a value drawn again each time the string is read
        if any(_RANDOM.match(p) for p in f.split(",")):
            raise ValueError(
                f"cron_string {v!r}: its field {f!r} uses 'R', a value drawn at random each "
                "time the schedule is read (replicas, and each slot, would draw another): "
                "write a fixed value"
            )
    read = croniter_form(v)
    seconds_first = len(fields) == 6
    # both: what is written ("1-1/0" is no cron string, even if "1" is) and what is read
    if not (
        croniter.is_valid(v, second_at_beginning=seconds_first)
        and croniter.is_valid(read, second_at_beginning=seconds_first)
    ):
        seconds = f" ({SIX_FIELDS}; a year field is not supported)" if len(fields) == 6 else ""
        raise ValueError(
            f"cron_string {v!r} is not a valid cron expression{bad_field(fields)}{seconds}"
        )
    day, weekday = read.split()[-3], read.split()[-1]
    if not {"*", "?"} & {day, weekday} and (
        "W" in day.upper() or any(c in weekday.upper() for c in "#L")
    ):
        # croniter drops one of the two (or finds no date): refused, whatever it answers
        raise ValueError(
            f"cron_string {v!r}: a day of month ({day!r}) cannot be combined with a day "
            f"of week ({weekday!r}) when the day uses W or the weekday # or L: make one of "
            "them '*' (or '?')"
        )
    try:  # valid fields that no date satisfies ("0 0 30 2 *"): croniter searches ~50 years
        croniter(read, _SOME_DAY, second_at_beginning=len(fields) == 6).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"cron_string {v!r} never matches a date (its day of month does not exist in "
            "its month(s)); check the day and month fields"
        ) from None
    return v


#: Zone names zoneinfo loads that are not IANA zones: the host's own zone ("localtime" is
#: /etc/localtime, another zone on each host: replicas would run a slot at different instants)
#: and the compiled variants' folders.
_HOST_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def check_timezone(v: str) -> str:
    if v in _HOST_ZONES or v.startswith(("posix/", "right/")):
        raise ValueError(
            f"timezone {v!r} is not an IANA zone name (it depends on the host's files, so "
            "replicas could read it differently): use one such as 'Europe/Paris' or 'UTC'"
        )
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:  # a folder, too long
        raise ValueError(
            f"unknown timezone {v!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from exc
    return v


_SOME_DAY = dt.datetime(2000, 1, 1)


def cron_step_reading(cron_string: str) -> str | None:
    """A step larger than its field's span ("*/90" minutes) does not carry over to the next
    hour: it is read as the field's first value only (minute 0 of every hour). How such a
    string is read, to warn; None when no step is that large."""
    fields = cron_string.split()
    named = ([("second", 60)] if len(fields) == 6 else []) + [
        ("minute", 60),
        ("hour", 24),
        ("day of month", 31),
        ("month", 12),
        ("day of week", 7),
    ]
    for (name, span), field in zip(named, fields, strict=False):
        for part in field.split(","):
            step = part.partition("/")[2]
            if step.isdigit() and int(step) >= span:
                return (
                    f"the {name} field {field!r} has a step of {step}, not less than the "
                    f"field's {span} values: it matches only the first value of its range, "
                    f"once per larger unit (a step does not carry over)"
                )
    return None


#: How a six-field cron string is read (croniter's seconds-first form).
SIX_FIELDS = "6 fields: the first is seconds, then minute hour day month weekday"


def cron_reading(cron_string: str) -> str | None:
    """For a six-field cron string, how each field is read (an easy one to misread: the
    sixth field is the day of week, not a year or seconds); None for five fields."""
    fields = cron_string.split()
    if len(fields) != 6:
        return None
    names = ("second", "minute", "hour", "day", "month", "weekday")
    parts = " ".join(f"{n}={f}" for n, f in zip(names, fields, strict=True))
    return f"{SIX_FIELDS}: {parts}"


#: Each cron field's name and range, in order (with seconds first when there are six).
_CRON_FIELDS = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 (0 and 7 are Sunday) or sun-sat"),
]


def bad_field(fields: list[str]) -> str:
    """Which field of an invalid cron string is wrong, and its range (each tried alone)."""
    seconds = len(fields) == 6
    named = ([("second", "0-59")] if seconds else []) + _CRON_FIELDS
    for i, (name, allowed) in enumerate(named):
        alone = ["*"] * len(fields)
        alone[i] = fields[i]
        if not croniter.is_valid(" ".join(alone), second_at_beginning=seconds):
            return (
                f": its {name} field {fields[i]!r} is not valid ({name}: {allowed}; also *, "
                "lists a,b, ranges a-b, steps */n)"
            )
    return ""
