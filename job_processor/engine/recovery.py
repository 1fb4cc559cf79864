"""Recovery: what dead workers (or a worker's failed writes) left behind, taken over exactly once.

- Running jobs of a dead worker: one compare-and-set per job on its run id, so several live
  workers sweeping at once recover each job exactly once. The outcome comes from
  `outcome.decide` (a crash counts as a failed attempt; killed if a kill was requested; a
  resumable job with attempts left is paused and resumes from its checkpoint).
- Running jobs of a live worker that does not run them (`reconcile`): the same, with the reason.
- on_job_exited hooks owed by processes that are gone (`HookRunner.recover`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from pymongo.errors import AutoReconnect, ConnectionFailure, PyMongoError

from ..core import retention as R
from ..core.clock import Clock, as_utc, sleep_or_wake
from ..core.coverage import recorded_timeout
from ..core.definitions import CronDef, JobDef
from ..core.log import EventLog
from ..core.outcome import Ending, Outcome, RunEnd, decide
from ..core.runs import NOT_RUN
from ..core.settings import Settings
from ..core.status import JobStatus
from ..storage import Storage
from ..storage.compat import id_key
from ..storage.transient import describe
from . import sentry
from .execution import claimed_too_late, policy_of
from .hooks import HookRunner
from .worker import Worker

#: Errors that mean MongoDB is unreachable (not a problem of one document).
CONNECTION = (AutoReconnect, ConnectionFailure)


Doc = dict[str, Any]
S = JobStatus
GAVE_UP = {
    "heartbeat_stale": "its worker gave the run up: it could not reach MongoDB for "
    "worker_timeout (no heartbeat), so others could recover the job",
    "worker_document_missing": "its worker gave the run up: it was declared dead (its "
    "heartbeat was late by worker_timeout)",
    "event_loop_blocked": "its worker gave the run up: its event loop was blocked (no "
    "heartbeat for worker_timeout), so others could recover the job",
    "": "its worker gave the run up",
}
"""The error of a run this process gave up (`Worker.abandon_all`), by its reason, when its
own sweep or reconciliation recovers the job (another worker's sweep says `runs.WORKER_SILENT`:
it cannot tell). "event_loop_blocked": the heartbeat's timer measured the block (`looplag`)."""
#: How often the full pass over other programs' jobs runs (unknown names, never-due jobs).
STRAYS_EVERY = dt.timedelta(minutes=5)
#: How old a bare insert (`{name, payload}`) must be to be adopted (a program inserting in two
#: steps has finished). The sweep's one query finds them: adopted 30 to 45 s after the insert
#: at the default sweep every 15 s.
BARE_AGE = dt.timedelta(seconds=30)
#: Bare inserts adopted per query, and at most per sweep (2,000 every 15 s at the defaults).
BARE_BATCH = 100
BARE_PER_SWEEP = 2000


def is_dead(last_seen: dt.datetime, now: dt.datetime, worker_timeout: float) -> bool:
    return last_seen < now - dt.timedelta(seconds=worker_timeout)


def claim_margin(settings: Settings) -> float:
    """Seconds before its lease ends from which a worker neither claims nor starts a claimed
    job (`Heartbeat.claimable`): a heartbeat interval, at most a quarter of the timeout."""
    return min(settings.heartbeat_interval, settings.worker_timeout / 4)


class Recovery:
    def __init__(
        self,
        storage: Storage,
        worker: Worker,
        definitions: Mapping[str, JobDef],
        hooks: HookRunner,
        clock: Clock,
        log: EventLog,
    ) -> None:
        self.storage = storage
        self.worker = worker
        self.definitions = definitions
        self.hooks = hooks
        self.clock = clock
        self.log = log
        self.worker_timeout = worker.settings.worker_timeout
        self._strays_checked: dt.datetime | None = None
        self.flow_docs: list[dict[str, Any]] | None = None
        """The flows' documents this sweep's one query read (`Flows.sweep` uses them)."""
        self.live: list[dict[str, Any]] | None = None
        """The live workers' documents the last sweep read (None: it read none), this
        worker's among them (the registry's refresh compares them with the registry)."""
        self.sweeps: list[Callable[[dt.datetime], Awaitable[int]]] = []
        """Extension point: more owed side effects to complete at each sweep, after the jobs
        and hooks (the event bus adds its owed fan-outs)."""
        self.recovered: list[Callable[[Doc, Doc], Awaitable[None]]] = []
        """Extension point: called with a job's running document and what its recovery wrote,
        once the write is done (the webhook sender counts a delivery ended errored, its
        worker dead or lost track of its last attempt, against its endpoint)."""

    async def loop(self, stop_event: asyncio.Event, after: Any = None, paused: Any = None) -> None:
        """The sweep every `worker_timeout / 2`, in its own loop (never inside the heartbeat:
        a long sweep must not make this worker look dead). `after(now)`: the registry refresh,
        the retention pass. `paused()`: True while sweeps are skipped (a stop in progress).
        At a fixed rate: each pass is due a period after the previous one was due, so a pass's
        own time does not push the next one back (the period bounds recovery), but at least
        half a period after the previous one ended."""
        period = dt.timedelta(seconds=self.worker_timeout / 2)
        due = self.clock.now() + period
        while not stop_event.is_set():
            wait = (due - self.clock.now()).total_seconds()
            await sleep_or_wake(self.clock, stop_event, wait)
            if stop_event.is_set():
                return
            now = self.clock.now()
            if now < due:  # a wall clock set back: wait the rest, a period at the most
                due = min(due, now + period)
                continue
            due += period
            if due <= now:  # woken more than a period late (a frozen process): none owed
                due = now + period
            if paused is not None and paused():
                continue
            try:
                await self.sweep(now)
                if after is not None:
                    await after(now)
            except (PyMongoError, TimeoutError) as exc:  # an outage: the next pass retries
                self.log.warning(
                    "sweep_failed", worker_id=self.worker.worker_id, error=describe(exc)
                )
            finally:  # passes slower than the period (a loaded server) never run back to back
                due = max(due, self.clock.now() + period / 2)

    async def sweep(self, now: dt.datetime, definitions: bool = False) -> int:
        """Delete stale worker documents, recover their running jobs and owed hooks. Not while
        this worker may itself have been declared dead: it would record itself, under an id
        it is giving up, as the owner of what it recovers (asked again before each recovery
        and each hook taken: a lease that runs out mid-sweep, a freeze or an outage, leaves the
        rest to the next sweep). With `definitions` (at start), the live workers' documents in
        `self.live` also carry their names and definitions' digests (the same read, more
        fields)."""
        self.live = None
        if not self.worker.trusted():
            return 0
        cutoff = now - dt.timedelta(seconds=self.worker_timeout)
        me = self.worker.worker_id
        live: set[str] = set()
        live_docs: list[dict[str, Any]] = []
        dead: list[str] = []
        for w in await self.storage.workers.liveness(definitions):
            last_seen = w.get("last_seen")
            if not isinstance(last_seen, dt.datetime) and w["_id"] != me:
                # another program's, or a damaged, worker document: it shows no heartbeat
                # (removed, its jobs recovered), never a crash of every worker's sweep
                if await self.storage.workers.delete_unreadable(w["_id"], last_seen):
                    dead.append(w["_id"])
                    self.log.warning(
                        "worker_document_invalid",
                        worker_id=str(w["_id"]),
                        last_seen=repr(last_seen)[:100],
                        by=me,
                    )
                continue
            # each worker by its own worker_timeout (it gives its runs up at that age): in a
            # rolling deploy that changes it, a healthy worker is never declared dead early
            theirs = now - dt.timedelta(seconds=recorded_timeout(w, self.worker_timeout))
            if w["_id"] == me or as_utc(w["last_seen"]) >= theirs:
                live.add(w["_id"])
                live_docs.append(w)
            elif await self.storage.workers.delete_stale(w["_id"], theirs):
                dead.append(w["_id"])
                self.log.warning(
                    "worker_declared_dead",
                    worker_id=w["_id"],
                    hostname=w.get("hostname"),
                    instance_id=w.get("instance_id"),
                    last_seen=w["last_seen"].isoformat(),
                    by=me,
                )
            else:  # its heartbeat landed between the read and the delete (alive after all),
                live.add(w["_id"])  # or another sweeper deleted it and recovers its jobs
                live_docs.append(w)
        self.live = live_docs
        recovered = 0
        # one query: running jobs whose run started before the cutoff, and owed hooks
        found = await self.storage.jobs.needing_attention(cutoff, now, now - BARE_AGE)
        running, owed, self.flow_docs = list(found.running), found.owed, found.flows
        seen = {id_key(doc["_id"]) for doc in running}  # another program's may be a document
        for worker_id in dead:  # with the jobs claimed since its last heartbeat (not older than
            # the cutoff): recovered now, not a sweep later (the bound: guide.md, recovery)
            later = await self.storage.jobs.running_on(worker_id)
            running += [doc for doc in later if id_key(doc["_id"]) not in seen]
        requeued: set[str] = set()  # a batch claim's jobs share one run id: kept till the end
        for doc in running:
            if doc.get("run_id") in self.worker.unstarted and not self.worker.owns(doc):
                await self.reconcile(doc, started=False)  # claimed here, never started
                requeued.add(str(doc.get("run_id")))
                continue
            if doc.get("worker_id") == me and me:
                if not self.worker.owns(doc):  # ours by the database, not running here
                    started = doc.get("run_id") not in self.worker.unstarted
                    written = await self.reconcile(doc, started=started)
                    # trust lost meanwhile: left to the sweep under the id registered
                    # afresh, with the reason it was given up
                    if written is not None or self.worker.trusted():
                        requeued.add(str(doc.get("run_id")))
                continue
            if doc.get("worker_id") in live:
                continue
            if not self.worker.trusted():  # its lease ran out mid-sweep (a freeze, an outage):
                break  # left to the sweep under the id it registers afresh, as at the start
            kill = bool(doc.get("kill_requested_at"))
            why = self.worker.gave_up.get(str(doc.get("run_id")))
            if why is not None:  # this process gave the run up: it knows why
                end = RunEnd(
                    Ending.LOST_TRACK, error=GAVE_UP.get(why, GAVE_UP[""]), kill_requested=kill
                )
            else:
                end = RunEnd(Ending.CRASHED, kill_requested=kill)
            if await self.recover(doc, end) is not None:
                recovered += 1
                requeued.add(str(doc.get("run_id")))
        self.worker.unstarted.difference_update(requeued)
        for run_id in requeued:
            self.worker.gave_up.pop(run_id, None)
        mine = {str(run.doc.get("run_id")) for run in self.worker.runs.values()}
        if await self.worker.limiter.release_strays(now, cutoff, live, mine, me):
            self.worker.wake.set()  # a job waiting for a slot given back starts now, not at a poll
        if found.bare or found.full:  # the same query found some (or could not list them all)
            await self.adopt_bare(now)
        if self._strays_checked is None or now - self._strays_checked >= STRAYS_EVERY:
            self._strays_checked = now
            await self.error_unknown_names(now)
        await self.hooks.recover(now, live, self.worker_timeout, owed, self.worker.trusted)
        try:
            for extra in self.sweeps:
                await extra(now)
        finally:
            self.flow_docs = None
        return recovered

    async def adopt_bare(self, now: dt.datetime) -> int:
        """Bare inserts (`{name, payload}`) `BARE_AGE` old, made claimable (the sweep's query
        finds them): in batches of `BARE_BATCH` while batches are read full, up to
        `BARE_PER_SWEEP` read a sweep (a burst waits for the next sweep beyond that). A batch
        that other workers' sweeps adopted in part meanwhile is no end: more may follow it."""
        bare = read = 0
        while read < BARE_PER_SWEEP:
            found, adopted = await self.storage.jobs.adopt_bare(now - BARE_AGE, now, BARE_BATCH)
            read += found
            bare += adopted
            if found < BARE_BATCH:
                break
        if bare:
            self.log.warning("bare_jobs_adopted", count=bare, by=self.worker.worker_id)
        return bare

    async def error_unknown_names(self, now: dt.datetime) -> int:
        """Jobs other programs inserted, every five minutes: those under a name no worker
        defines (none in the registry, nor here) are errored with the reason once
        `unknown_name_grace` has passed (time for a rolling deploy to start the workers that
        define a new job), and those of the names this process defines whose due time can
        never come are errored with the reason (and their `keep_failed`); an on_job_exited
        owed that long by a job of such a name is given up (recorded as failed, saying
        why)."""
        known = {str(d["_id"]) for d in await self.storage.definitions.all()}
        known |= set(self.definitions)
        grace = dt.timedelta(seconds=self.worker.settings.unknown_name_grace)
        errored = await self.storage.jobs.error_unknown(sorted(known), now - grace, now)
        if errored:
            self.log.warning("unknown_jobs_errored", count=errored, by=self.worker.worker_id)
        seconds = self.worker.settings.unknown_name_grace
        hooks = await self.storage.jobs.give_up_unknown(known, now - grace, now, seconds)
        if hooks:  # e.g. a typo's job killed from the CLI: its hook would hold it for ever
            self.log.warning("unknown_hooks_given_up", count=hooks, by=self.worker.worker_id)
        minute = now - dt.timedelta(minutes=1)  # a program inserting in two steps has finished
        # of the names defined here: errored with their retention (a name another worker
        # defines is left to its pass, which knows it: errored here, it would be kept for ever)
        undue = await self.storage.jobs.error_undue(sorted(self.definitions), minute, now)
        if undue:
            self.log.warning("undue_jobs_errored", count=undue, by=self.worker.worker_id)
        return errored + undue

    async def reconcile(
        self, doc: Doc, started: bool = True, why: str = "its claim's reply was lost"
    ) -> Doc | None:
        """A job the database says this live worker runs, but it does not: its final write
        failed (a lost attempt), or (`started=False`) it was claimed but never ran, `why`
        (re-queued, no attempt used). A run this process gave up says why (`GAVE_UP`).
        A started run while this worker cannot trust its registration (its lease ran out: it
        may be declared dead, and is giving its id up) is left alone: it writes nothing for
        its runs then, and its sweep, once registered afresh, recovers it under the new id
        (ended under the old one, its hook was recorded as owed by a dead worker, and so
        called twice: by this worker, and by another's sweep)."""
        if started and not self.worker.trusted():
            return None
        run_id = str(doc.get("run_id"))
        gave_up = self.worker.gave_up.get(run_id) if started else None
        if gave_up is not None:
            error = GAVE_UP.get(gave_up, GAVE_UP[""])
        elif started:
            error = "its worker lost track of the run (the final write failed or a reply was lost)"
        else:
            error = f"{why}{NOT_RUN}"
        end = RunEnd(
            Ending.LOST_TRACK if started else Ending.UNSTARTED,
            kill_requested=bool(doc.get("kill_requested_at")),
            error=error,
        )
        written = await self.recover(doc, end, event="job_reconciled")
        if written is not None and gave_up is not None:
            self.worker.gave_up.pop(run_id, None)
        return written

    async def recover(self, doc: Doc, end: RunEnd, event: str = "job_recovered") -> Doc | None:
        """Exactly once per run: the final write is a compare-and-set on the run id. A document
        this cannot handle (a bug, a field another program wrote) is logged and left for the
        next pass: it never stops the sweep, the heartbeat or the other jobs' recovery."""
        try:
            return await self._recover(doc, end, event)
        except CONNECTION:
            raise  # MongoDB unreachable: the loop's own handling (the next pass retries)
        except Exception:
            self.log.exception(
                "job_recovery_failed", job_id=str(doc.get("_id")), job_name=doc.get("name")
            )
            return None

    async def _recover(self, doc: Doc, end: RunEnd, event: str) -> Doc | None:
        with self.hooks.pending(doc["_id"]):  # the hook it may owe is started below, not swept
            return await self._end_run(doc, end, event)

    async def _end_run(self, doc: Doc, end: RunEnd, event: str) -> Doc | None:
        definition = self.definitions.get(str(doc.get("name")))
        policy = policy_of(definition, doc, self.worker.settings.retention)
        now = self.clock.now()
        # a cron task claimed past its check-in margin never started (its worker records it
        # missed before running anything): missed, never a crashed attempt run again late
        claimed_at = doc.get("run_started_at")
        late = isinstance(claimed_at, dt.datetime) and claimed_too_late(doc, as_utc(claimed_at))
        keep = R.of(definition, self.worker.settings.retention)
        missed = Outcome(S.SKIPPED, expires_at=keep.expires_at(S.SKIPPED, now) if keep else None)
        if late:
            end = RunEnd(Ending.UNSTARTED, kill_requested=end.kill_requested)
        for _ in range(2):
            outcome = missed if late and not end.kill_requested else decide(doc, policy, end, now)
            written = await self.storage.jobs.end_run(
                doc, outcome, now, writer=self.worker.worker_id, budget=self.worker_timeout
            )
            if not written.kill_requested:
                break
            end = replace(end, kill_requested=True)
        if written.doc is None:
            return None  # another sweeper (or the owner) got there first
        started = end.how is not Ending.UNSTARTED  # put back unstarted: its start goes too
        await self.worker.limiter.release(doc, self.worker, started=started)  # in the same step
        if self.worker.on_ended is not None:  # the jobs waiting on it
            await self.worker.on_ended(written.doc)
        self.worker.telemetry.recovered(doc, written.doc)
        if outcome is missed:
            self.worker.telemetry.cron_slot(str(doc.get("name")), "missed")
            self.log.warning(
                "cron_slot_missed",
                slot=as_utc(doc["scheduled_for"]).isoformat(),
                now=now.isoformat(),
                job_id=str(doc["_id"]),
                job_name=doc.get("name"),
                worker_id=doc.get("worker_id"),
            )
        if outcome is not missed:  # not a crash: the slot was never started
            sentry.recovered(doc, written.doc, self.worker.worker_id)
            name = str(doc.get("name"))
            used = (written.doc.get("failures") or 0) > (doc.get("failures") or 0)
            paused = written.doc["status"] == S.PAUSED.value
            if doc.get("trigger") is not None and started and (used or not paused):
                # a cron task's crashed attempt ends its check-in in error, as a failed
                # attempt's does (a resumable one's too: paused to resume, its attempt used; not
                # a claim put back unstarted), whichever worker recovers it, one that defines
                # the cron or not (then without its monitor_config); its id died with the worker
                cron = (
                    self.worker.cron_followed(name, definition)
                    if isinstance(definition, CronDef)
                    else None
                )
                sentry.checkin(name, cron, "error")
        self.log.warning(
            event,
            job_id=str(doc["_id"]),
            job_name=doc.get("name"),
            worker_id=doc.get("worker_id"),
            status=written.doc["status"],
            error=outcome.error,
            by=self.worker.worker_id,
        )
        if written.doc["status"] in (S.PAUSED, S.PENDING):
            self.worker.expect(str(doc.get("name")))
            if outcome.retry_at is not None:
                self.worker.wake_at(outcome.retry_at)
            else:
                self.worker.wake.set()
        else:  # in the background: the sweep (and the heartbeat) never wait for a hook
            self.hooks.start(definition, written.doc)
        for then in self.recovered:
            await then(doc, written.doc)
        return written.doc
