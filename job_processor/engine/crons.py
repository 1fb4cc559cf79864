"""The cron scheduler: creates each due slot's task, once across replicas.

Every worker runs it. A slot's task is created when the slot is due, with a unique
`cron_slot_key`, so however many replicas race, the database accepts exactly one task per slot;
the losers' inserts fail with a duplicate-key error and are ignored. The slot maths (time
zones, DST, margins, missed slots) are pure functions in `core.schedule`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core import retention as R
from ..core.clock import Clock, as_utc, sleep_or_wake
from ..core.definitions import CronDef
from ..core.log import EventLog
from ..core.retention import Retention
from ..core.schedule import (
    STUCK_CRON_READ,
    STUCK_CRON_SLOTS,
    Schedule,
    margin_of,
    on_schedule,
    plan_slots,
    schedule_of,
    skipped_in_a_row,
)
from ..core.status import JobStatus
from ..core.telemetry import Telemetry
from ..storage import Storage
from ..storage.transient import describe
from . import sentry


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
        self._differs: dict[str, tuple[Any, Any]] = {}
        """Crons whose stored schedule differs from this process's (said once each)."""
        self._left: set[str] = set()
        """Crons whose stored schedule this process cannot evaluate, left to the other replicas
        until the next refresh (their documents stay: `followed` declares them to Sentry)."""
        self.telemetry = Telemetry()

    async def loop(self) -> None:
        if not self.crons:
            return
        while not self.stop_event.is_set():
            try:
                delay = await self.tick()
            except PyMongoError as exc:
                self.log.warning("cron_tick_failed", error=describe(exc))
                delay = 1.0
            await sleep_or_wake(self.clock, self.stop_event, delay)

    async def tick(self) -> float:
        """Handle what is due; return the seconds until the next slot (or the next refresh)."""
        now = self.clock.now()
        due = [d for d in self._fired_docs() if d["next_slot"] <= now]
        if due or self._refresh_at is None or now >= self._refresh_at:
            docs = await self.storage.crons.docs(list(self.crons))
            self._docs = {d["_id"]: d for d in docs}
            self._left.clear()
            self._refresh_at = now + dt.timedelta(seconds=self.refresh_interval)
            expired = await self.storage.jobs.expire_missed_by_name(
                now, {name: self._skip_expiry(cron, now) for name, cron in self.crons.items()}
            )
            for name, count in expired.items():  # no worker started them within the margin
                for _ in range(count):
                    self.telemetry.cron_slot(name, "missed")
                self.log.warning("cron_tasks_missed", job_name=name, count=count)
        for doc in self._fired_docs():
            if doc["next_slot"] <= now and doc["_id"] in self.crons:
                await self.fire(doc, now)
        upcoming = [d["next_slot"] for d in self._fired_docs()] + [self._refresh_at]
        wait: float = (min(upcoming) - self.clock.now()).total_seconds()
        return max(0.0, wait)

    def _fired_docs(self) -> list[dict[str, Any]]:
        """The cron documents this scheduler fires (not those it leaves to the others)."""
        return [d for d in self._docs.values() if d["_id"] not in self._left]

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
        schedule = self._schedule(name, cron, doc)
        if schedule is None:  # left to the replicas that can evaluate it, until the refresh
            self._left.add(name)  # its document stays: what `followed` declares to Sentry
            return
        first = on_schedule(schedule, doc["next_slot"])
        if first != doc["next_slot"]:  # an older release's replica moved it to its own slot
            self.log.warning(
                "cron_slot_off_schedule",
                job_name=name,
                slot=doc["next_slot"].isoformat(),
                next_slot=first.isoformat(),
                hint="not a slot of the stored schedule: skipped (a replica of an older "
                "release follows its own schedule until it is replaced)",
            )
        plan = plan_slots(schedule, first, now, margin_of(cron))
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
            new = self.task_doc(name, slot, now)
            if cron.concurrency == "exclusive" and slot == plan.run[0] and len(plan.run) > 1:
                # a catch-up's oldest late slot stands for the later ones, which skip behind
                # it: it may start until the last one's margin ends (missed at its own, the
                # nearest, none of them would run: a worker busy for a while is enough)
                new["start_deadline"] = plan.run[-1] + margin_of(cron)
            task = await self.storage.jobs.insert(new, self._skip_expiry(cron, now))
            if task is None:
                continue  # another replica created this slot's task
            if task["status"] == "skipped":
                self.telemetry.cron_slot(name, "skipped")
                await self._skipped(name, cron, task, slot, plan.run)
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
        if not await self.storage.crons.advance(name, doc["next_slot"], plan.next_slot, now, doc):
            await self._withdraw_if_pruned(name)
        doc["next_slot"] = plan.next_slot  # if another replica advanced it, the refresh corrects

    async def _withdraw_if_pruned(self, name: str) -> None:
        """A cron removed (`prune_crons`) between this replica's read of it and its move to the
        next slot: the tasks it has just inserted are deleted as the prune deleted the others
        (pending ones only: one already claimed runs)."""
        if await self.storage.crons.docs([name]):
            return  # another replica advanced it, or a deploy changed its schedule
        self._docs.pop(name, None)
        withdrawn = await self.storage.jobs.delete_pending_tasks_of([name], self.clock.now())
        self.log.info("cron_tasks_withdrawn", job_name=name, count=withdrawn)

    def followed(self, name: str, cron: CronDef) -> CronDef:
        """`cron` as every replica follows it, with the stored schedule, time zone, check-in
        margin and max runtime (the last definition registered): what its Sentry check-ins
        declare, so that an old replica's check-ins during a rolling deploy never set the
        monitor back to its own (the stored schedule is declared even when this process cannot
        evaluate it: Sentry may)."""
        doc = self._docs.get(name)
        if doc is None or not all(isinstance(doc.get(f), str) for f in ("cron_string", "timezone")):
            return cron
        update = {f: doc[f] for f in ("cron_string", "timezone")}
        margin, runtime = doc.get("checkin_margin"), doc.get("max_runtime_in_minutes")
        if isinstance(margin, int | float) and not isinstance(margin, bool):
            update["checkin_margin"] = margin
        if runtime is None or (isinstance(runtime, int | float) and not isinstance(runtime, bool)):
            update["max_runtime_in_minutes"] = runtime
        if all(getattr(cron, f) == v for f, v in update.items()):
            return cron
        return cron.model_copy(update=update)

    def _schedule(self, name: str, cron: CronDef, doc: dict[str, Any]) -> Schedule | None:
        """The schedule the cron's document holds: the last definition registered (a rolling
        deploy's new one), which every replica follows, an old one too (its own would fire
        the old schedule's slots beside the new ones). Said once per definition."""
        stored = (doc.get("cron_string"), doc.get("timezone"))
        if not all(isinstance(v, str) for v in stored) or stored == (
            cron.cron_string,
            cron.timezone,
        ):
            return schedule_of(cron)
        schedule = Schedule(str(stored[0]), str(stored[1]))
        error = ""
        try:  # a newer process's schedule this one cannot evaluate (its tzdata, its croniter)
            schedule.next_after(as_utc(doc.get("next_slot") or self.clock.now()))
            usable = True
        except Exception as exc:  # any failure of croniter or zoneinfo
            usable, error = False, describe(exc)
        if self._differs.get(name) != stored:
            self._differs[name] = stored
            if usable:
                self.log.warning(
                    "cron_definition_differs",
                    job_name=name,
                    stored=f"{stored[0]} ({stored[1]})",
                    here=f"{cron.cron_string} ({cron.timezone})",
                    hint="another process registered this cron with another schedule: "
                    "it is followed",
                )
            else:
                self.log.error(
                    "cron_stored_schedule_unusable",
                    job_name=name,
                    stored=f"{stored[0]} ({stored[1]})",
                    here=f"{cron.cron_string} ({cron.timezone})",
                    error=error,
                    hint="this process cannot evaluate the schedule another one registered "
                    "(update its time zone data or job-processor): it leaves this cron to "
                    "the replicas that can",
                )
        return schedule if usable else None

    def _skip_expiry(self, cron: CronDef, now: dt.datetime) -> dt.datetime | None:
        keep = R.of(cron, self.retention)
        return keep.expires_at(JobStatus.SKIPPED, now) if keep else None

    async def _skipped(
        self,
        name: str,
        cron: CronDef,
        task: dict[str, Any],
        slot: dt.datetime,
        catching_up: list[dt.datetime] | None = None,
    ) -> None:
        """An exclusive slot skipped because the previous task is still active. That is fine
        while the previous task is running, up to STUCK_CRON_SLOTS skipped slots in a row (a
        long run; more looks hung: monitoring turns red), and behind the task of another slot
        of the same catch-up (`catching_up`: after a downtime the late slots run one at a
        time, the oldest first, so the later ones skip behind it, whichever replica created
        it); when it is pending or paused (stuck, or on a tag no live worker serves) nothing
        runs at all, and monitoring says so at once."""
        holder = await self.storage.jobs.get(task["conflicting_job_id"])
        holder_status = holder["status"] if holder else None
        slots = {as_utc(s) for s in catching_up or []}
        held_by = holder.get("scheduled_for") if holder else None
        caught_up = (
            holder is not None
            and holder.get("name") == name
            and isinstance(held_by, dt.datetime)
            and as_utc(held_by) in slots
        )
        running = holder_status == "running" or caught_up
        if holder_status == "running" and not caught_up:
            recent = await self.storage.jobs.recent_tasks(name, STUCK_CRON_READ)
            in_a_row = skipped_in_a_row(recent, task["conflicting_job_id"], holder)
            running = in_a_row < STUCK_CRON_SLOTS
        log = self.log.info if running else self.log.warning
        log(
            "cron_slot_skipped",
            job_name=name,
            job_id=str(task["_id"]),
            slot=slot.isoformat(),
            conflicting_job_id=str(task["conflicting_job_id"]),
            conflicting_status=holder_status,
        )
        sentry.checkin(name, self.followed(name, cron), "ok" if running else "error")
