"""Cron schedules: pure slot maths (timezones, DST, check-in margins) and the scheduler loop.

Every worker runs the scheduler. A slot's task is created when the slot is due, with a unique
`cron_slot_key` ("<cron name>|<slot in UTC>"), so however many replicas race, the database accepts
exactly one task per slot; the losers' inserts fail with a duplicate-key error and are ignored.

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

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from croniter import croniter
from pymongo.errors import PyMongoError

from . import documents as D
from . import retention as R
from . import sentry
from .clock import Clock, sleep_or_wake
from .definitions import CronDef
from .log import EventLog
from .models import JobStatus
from .retention import Retention
from .storage import Storage
from .telemetry import Telemetry

UTC = dt.UTC
MS = dt.timedelta(milliseconds=1)


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
            self.cron_string, local, second_at_beginning=self.has_seconds, ret_type=dt.datetime
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
                # jump over the rest of the downtime without walking every slot
                slot = schedule.next_after(now - margin - MS)
                continue
            plan.missed.append(slot)
        else:
            plan.run.append(slot)
        slot = schedule.next_after(slot)
    plan.next_slot = slot
    return plan


def margin_of(cron: CronDef) -> dt.timedelta:
    return dt.timedelta(minutes=cron.checkin_margin)


def schedule_of(cron: CronDef) -> Schedule:
    return Schedule(cron.cron_string, cron.timezone)


class CronScheduler:
    """Creates each due slot's task (once across replicas) and keeps the cron documents moving."""

    def __init__(
        self,
        storage: Storage,
        crons: Mapping[str, CronDef],
        clock: Clock,
        log: EventLog,
        on_task_created: Callable[[dict[str, Any]], None],
        refresh_interval: float = 30.0,
        retention: Retention | None = None,
    ) -> None:
        self.retention = retention or Retention()
        self.storage = storage
        self.crons = crons
        self.clock = clock
        self.log = log
        self.on_task_created = on_task_created
        self.refresh_interval = refresh_interval
        self.stop_event = asyncio.Event()
        self._docs: dict[str, dict[str, Any]] = {}
        self._refresh_at: dt.datetime | None = None
        self.telemetry = Telemetry()

    async def loop(self) -> None:
        if not self.crons:
            return
        while not self.stop_event.is_set():
            try:
                delay = await self.tick()
            except PyMongoError as exc:
                self.log.warning("cron_tick_failed", error=str(exc))
                delay = 1.0
            await sleep_or_wake(self.clock, self.stop_event, delay)

    async def tick(self) -> float:
        """Handle what is due; return the seconds until the next slot (or the next refresh)."""
        now = self.clock.now()
        due = [d for d in self._docs.values() if d["next_slot"] <= now]
        if due or self._refresh_at is None or now >= self._refresh_at:
            docs = await self.storage.crons.docs(list(self.crons))
            self._docs = {d["_id"]: d for d in docs}
            self._refresh_at = now + dt.timedelta(seconds=self.refresh_interval)
            await self.storage.jobs.expire_missed_cron_tasks(
                now, {name: self._skip_expiry(cron, now) for name, cron in self.crons.items()}
            )
        for doc in list(self._docs.values()):
            if doc["next_slot"] <= now and doc["_id"] in self.crons:
                await self.fire(doc, now)
        upcoming = [d["next_slot"] for d in self._docs.values()] + [self._refresh_at]
        wait: float = (min(upcoming) - self.clock.now()).total_seconds()
        return max(0.0, wait)

    def task_doc(self, name: str, slot: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        cron = self.crons[name]
        return D.cron_task(
            name,
            slot=slot,
            now=now,
            margin=margin_of(cron),
            tag=cron.tag,
            exclusive=cron.concurrency == "exclusive",
            max_attempts=cron.attempts,
            resumable=cron.resumable,
        )

    async def fire(self, doc: dict[str, Any], now: dt.datetime) -> None:
        name = doc["_id"]
        cron = self.crons[name]
        plan = plan_slots(schedule_of(cron), doc["next_slot"], now, margin_of(cron))
        for slot in plan.missed:
            missed = D.as_missed(self.task_doc(name, slot, now), now, self._skip_expiry(cron, now))
            if await self.storage.jobs.insert(missed) is not None:
                self.telemetry.cron_slot(name, "missed")
                self.log.warning(
                    "cron_slot_missed", job_name=name, slot=slot.isoformat(), now=now.isoformat()
                )
        if plan.more_missed:
            self.log.warning("cron_slots_missed_not_listed", job_name=name, until=now.isoformat())
        for slot in plan.run:
            task = await self.storage.jobs.insert(
                self.task_doc(name, slot, now), self._skip_expiry(cron, now)
            )
            if task is None:
                continue  # another replica created this slot's task
            if task["status"] == "skipped":
                self.telemetry.cron_slot(name, "skipped")
                await self._skipped(name, cron, task, slot)
            else:
                self.telemetry.cron_slot(name, "run")
                self.log.info(
                    "cron_task_created",
                    job_name=name,
                    job_id=str(task["_id"]),
                    slot=slot.isoformat(),
                )
            self.on_task_created(task)
        assert plan.next_slot is not None
        await self.storage.crons.advance(name, doc["next_slot"], plan.next_slot, now)
        doc["next_slot"] = plan.next_slot  # if another replica advanced it, the refresh corrects

    def _skip_expiry(self, cron: CronDef, now: dt.datetime) -> dt.datetime | None:
        keep = R.of(cron, self.retention)
        return keep.expires_at(JobStatus.SKIPPED, now) if keep else None

    async def _skipped(
        self, name: str, cron: CronDef, task: dict[str, Any], slot: dt.datetime
    ) -> None:
        """An exclusive slot skipped because the previous task is still active. That is fine
        while the previous task is running, up to STUCK_CRON_SLOTS skipped slots in a row (a
        long run; more looks hung: monitoring turns red); when it is pending or paused (stuck,
        or on a tag no live worker serves) nothing runs at all, and monitoring says so at once."""
        from .status import STUCK_CRON_SLOTS, skipped_in_a_row

        holder = await self.storage.jobs.get(task["conflicting_job_id"])
        holder_status = holder["status"] if holder else None
        running = holder_status == "running"
        if running:
            recent = await self.storage.jobs.recent_tasks(name, STUCK_CRON_SLOTS)
            running = skipped_in_a_row(recent, task["conflicting_job_id"]) < STUCK_CRON_SLOTS
        log = self.log.info if running else self.log.warning
        log(
            "cron_slot_skipped",
            job_name=name,
            job_id=str(task["_id"]),
            slot=slot.isoformat(),
            conflicting_job_id=str(task["conflicting_job_id"]),
            conflicting_status=holder_status,
        )
        sentry.checkin(name, cron, "ok" if running else "error")
