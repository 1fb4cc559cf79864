"""Cron schedules: pure slot maths (timezones, DST, check-in margins), no I/O.

A slot's task is created when the slot is due (see `engine.crons`), with a unique
`cron_slot_key` ("<cron name>|<slot in UTC>"), so however many replicas race, the database accepts
exactly one task per slot.

DST rules (computed on the cron's wall clock, then converted to UTC):
- spring forward (a local time that does not exist, e.g. 02:30 in Europe/Paris on the last Sunday
  of March): the slot runs once, at the first instant after the gap (03:00 local). Several slots
  inside the gap collapse into that one run.
- fall back (a local time that happens twice, e.g. 02:30 on the last Sunday of October): the slot
  runs once, at its first occurrence (02:30 CEST); the repeated wall-clock hour does not run the
  slots again.
Each wall-clock slot therefore runs at most once and is never silently dropped.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from croniter import croniter

from .cron_text import croniter_form
from .definitions import CronDef

UTC = dt.UTC
US = dt.timedelta(microseconds=1)


def local_to_utc(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """Map a wall-clock time in `tz` to the UTC instant a slot at that time runs (rules above)."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists; for an ambiguous time, fold=0 is the first occurrence
    # Does not exist (DST gap): run at the transition, the first instant after the gap.
    lo = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)  # a valid instant before the gap
    hi = first  # a valid instant after it
    if lo > hi:
        lo, hi = hi, lo
    after_offset = hi.astimezone(tz).utcoffset()
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


@dataclass(frozen=True)
class Schedule:
    cron_string: str
    timezone: str = "UTC"

    @cached_property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @cached_property
    def has_seconds(self) -> bool:
        return len(self.cron_string.split()) == 6

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first slot strictly after `after` (aware), as aware UTC."""
        local = after.astimezone(self.tz).replace(tzinfo=None)
        it = croniter(
            croniter_form(self.cron_string),
            local,
            second_at_beginning=self.has_seconds,
            ret_type=dt.datetime,
        )
        for _ in range(100_000):  # bounded: only DST folds make it loop more than once
            slot = local_to_utc(it.get_next(dt.datetime), self.tz)
            if slot > after:
                return slot
        raise RuntimeError(f"no slot found after {after} for {self.cron_string!r}")

    def local(self, instant: dt.datetime) -> dt.datetime:
        return instant.astimezone(self.tz)


@dataclass
class SlotPlan:
    """What to do for the slots that are due: run these, record those as missed, move on."""

    run: list[dt.datetime] = field(default_factory=list)
    missed: list[dt.datetime] = field(default_factory=list)
    more_missed: bool = False
    """More slots were missed than listed (long downtime): the rest are not recorded one by one."""
    next_slot: dt.datetime | None = None


def plan_slots(
    schedule: Schedule,
    next_slot: dt.datetime,
    now: dt.datetime,
    margin: dt.timedelta,
    max_listed: int = 50,
) -> SlotPlan:
    """Pure: the due slots from `next_slot` up to `now`. A slot older than `margin` is missed
    (never run late); one within the margin runs, late. `next_slot` of the plan is the first
    slot in the future."""
    plan = SlotPlan()
    slot = next_slot
    while slot <= now:
        if now - slot > margin:
            if len(plan.missed) >= max_listed:
                plan.more_missed = True
                # jump over the rest of the downtime without walking every slot, to the first
                # slot within the margin (at or after now - margin, to the microsecond: a
                # margin or a `now` finer than a millisecond must not land on a missed slot
                # again); always forward, so that the loop ends whatever the inputs
                jump = schedule.next_after(now - margin - US)
                slot = jump if jump > slot else schedule.next_after(slot)
                continue
            plan.missed.append(slot)
        else:
            plan.run.append(slot)
        slot = schedule.next_after(slot)
    plan.next_slot = slot
    return plan


def on_schedule(schedule: Schedule, slot: dt.datetime) -> dt.datetime:
    """Pure: `slot` if it is one of the schedule's slots, else the schedule's next slot after
    it (a next slot written by a replica that followed another schedule)."""
    return schedule.next_after(slot - US)


def margin_of(cron: CronDef) -> dt.timedelta:
    return dt.timedelta(minutes=cron.checkin_margin)


def schedule_of(cron: CronDef) -> Schedule:
    return Schedule(cron.cron_string, cron.timezone)


def task_slot(doc: dict[str, Any]) -> dt.datetime | None:
    """A cron task's slot: the one its `cron_slot_key` names ("<cron>|<slot UTC>"; a retry
    moves `scheduled_for`, never the slot), else (a manual run) when it was made; None when
    the document says neither (another program's insert: see ops.status.task_row)."""
    key = doc.get("cron_slot_key")
    if isinstance(key, str) and "|" in key:
        try:
            return dt.datetime.fromisoformat(key.rsplit("|", 1)[1]).astimezone(dt.UTC)
        except ValueError:
            pass
    for when in (doc.get("created_at"), doc.get("scheduled_for")):
        if isinstance(when, dt.datetime):
            return when
    return None


def local_time(cron_string: str, tz: str, instant: Any) -> dt.datetime | None:
    """`instant` in the cron's time zone; None when there is none, or when this process cannot
    evaluate that zone (another version registered it: the listings still show the cron)."""
    if not isinstance(instant, dt.datetime):
        return None
    try:
        return Schedule(cron_string, tz).local(instant)
    except (ValueError, KeyError, OSError):  # not found (a KeyError), malformed, a folder
        return None


#: An exclusive cron whose last slots were all skipped behind one job: past this many in a row
#: behind a running job, monitoring turns red (a run that long looks hung).
STUCK_CRON_SLOTS = 3
#: How many of a cron's latest tasks are read to find its last STUCK_CRON_SLOTS slots: a
#: manual trigger refused behind the same run is a task, not a slot.
STUCK_CRON_READ = 10


def skipped_in_a_row(
    recent: list[dict[str, Any]], holder_id: Any, holder: dict[str, Any] | None = None
) -> int:
    """How many of a cron's latest tasks (newest first) were skipped behind `holder_id`. Given
    the `holder`, a skip made before its run started, or as it started (a catch-up's later
    slots, created with it) does not count: it says nothing of a long run; nor does a manual
    trigger (`trigger_cron`, "Trigger now"): it is no slot."""
    started = (holder or {}).get("run_started_at") or (holder or {}).get("started_at")
    n = 0
    for t in recent:
        if t.get("trigger") == "manual":
            continue
        if t.get("skip_reason") != "exclusive" or t.get("conflicting_job_id") != holder_id:
            break
        made = t.get("created_at")
        if isinstance(started, dt.datetime) and isinstance(made, dt.datetime) and made <= started:
            continue
        n += 1
    return n
