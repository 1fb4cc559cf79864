"""Claim loop and per-job execution: abort signals, max runtime, grace then cancel, final writes.

Every run ends in a recorded status: the handler's end is turned into an outcome by
`outcome.decide`, written by `JobStore.end_run` (compare-and-set on the run), and when that write
cannot be made the run is either recorded as errored with the reason (a result too large, an
invalid document) or left to recovery (the database unreachable for longer than `worker_timeout`,
after which this worker's own reconciliation or another worker's sweep recovers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core import foreign as FD
from ..core import retention as R
from ..core.clock import Clock, monotonic_of
from ..core.definitions import CronDef, JobDef
from ..core.log import EventLog
from ..core.masking import log_text
from ..core.models import Processor
from ..core.outcome import Ending, Outcome, RunEnd, decide
from ..core.settings import Settings
from ..core.status import JobStatus
from ..core.telemetry import Telemetry
from ..storage import Storage
from ..storage.compat import is_motor
from ..storage.jobs import EndItem, LostClaim
from ..storage.transient import TRANSIENT, describe, ride_out
from . import sentry
from .checkpoint import save_checkpoint
from .execution import (
    Run,
    build_job,
    claimed_too_late,
    describe_error,
    eligible_names,
    invalid_document,
    logged_values,
    paths_of,
    policy_of,
)
from .finals import FinalWrites
from .handler import run_handler
from .hooks import HookRunner
from .limiter import Limiter
from .notes import RunNotes
from .quiet import QuietNames
from .unstarted import UnstartedClaims
from .wakeup import DueTimes

S = JobStatus
Doc = dict[str, Any]
#: Seconds a worker with a backlog waits for more of its slots to free before claiming.
BATCH_WINDOW = 0.02
#: Why a claim released unstarted near or past the end of its lease was not run.
UNSTARTED_LEASE = "claimed while its worker was being declared dead"


class Worker:
    """Runs jobs for one processor: the claim loop (when started) and run_job executions."""

    def __init__(
        self,
        storage: Storage,
        definitions: Mapping[str, JobDef],
        worker_tags: list[str] | None,
        clock: Clock,
        log: EventLog,
        settings: Settings,
        hooks: HookRunner,
    ) -> None:
        self.storage = storage
        self.jobs = storage.jobs
        self._threaded = is_motor(storage.db)
        """Motor runs each command on a thread that a cut does not stop (`claim_bound`)."""
        self.definitions = definitions
        self.names = eligible_names(definitions, worker_tags)
        self.clock = clock
        self.log = log
        self.settings = settings
        self.hooks = hooks
        self.processor: Processor | None = None
        self.on_ended: Callable[[Doc], Awaitable[None]] | None = None
        """Called after a final write, with the job as written (the runtime settles the jobs
        waiting on it: `engine.flows.Flows.ended`)."""
        """What `job.processor` returns in a handler (set by the JobProcessor)."""
        self.worker_id = ""
        self.runs: dict[str, Run] = {}
        self.wake = asyncio.Event()
        self._rearm = asyncio.Event()
        self.due = DueTimes()
        self.idle = asyncio.Event()
        """Set while the last claim found nothing: only then is a wake-up source worth reading."""
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[Doc | None]] = set()
        self.stream_blocking: Callable[[], bool] = lambda: False
        """Set by the processor: is a blocking change stream watching for this worker?"""
        self._claimed = 0
        """Jobs taken by the claim loop (run_job executions do not use its slots)."""
        self._backlog = False
        """The last claim found a job: the next one claims a whole batch (free slots)."""
        self.claims = UnstartedClaims(log)
        """Claims taken but not started, put back unstarted (`engine.unstarted`)."""
        self.unstarted = self.claims.run_ids
        """Run ids of claims not started (`UnstartedClaims.run_ids`): a job running under one
        of them here never started (reconciliation re-queues it, no attempt used)."""
        self.gave_up: dict[str, str] = {}
        """run id -> why this process gave the run up (`abandon_all`): when its own sweep
        recovers the job, the error says so instead of `runs.WORKER_SILENT`."""
        self.trusted: Callable[[], bool] = lambda: True
        """Set by the heartbeat: False while others may have declared this worker dead (its
        last heartbeat is older than worker_timeout, or it is registering afresh). Nothing
        is claimed then, and a claim that returns then is not started."""
        self.claimable: Callable[[], bool] = lambda: True
        """`trusted` with a margin before the lease's end (`Heartbeat.claimable`): what claims
        and starts go by."""
        self.lease_left: Callable[[], float] = lambda: settings.worker_timeout
        """Set by the heartbeat: seconds until others may declare this worker dead."""
        self.loop_blocked: Callable[[], str | None] = lambda: None
        """Set by the heartbeat: why runs were probably lost ("event loop blocked for N s:
        heartbeat missed"), said by `job_lost` and `job_abandoned`; None if nothing explains it."""
        self.claims_held = False
        """A claim was skipped because the registration could not be trusted."""
        self.ignoring_cancel: set[asyncio.Task[Any]] = set()
        """Handlers that swallowed their cancellation (kept referenced until they end)."""
        self.cron_followed: Callable[[str, CronDef], CronDef] = lambda name, cron: cron
        """A cron as every replica follows it (`CronScheduler.followed`): its check-ins."""
        self._limited_first = False
        self.finals = FinalWrites(storage.jobs, settings.worker_timeout)
        self.limiter = Limiter(storage, definitions, self.names, log)
        self.paused: frozenset[str] = frozenset()
        """Names paused by an operator (read by the heartbeat): left out of claims."""
        self.quiet = QuietNames(self.names, storage.jobs, clock, settings.poll_interval)
        """Built-in names few use (the webhook delivery): left out of a busy worker's claims
        until a job of theirs is seen (`engine.quiet`)."""
        self._found_in_row = 0
        """Claims in a row that found a job (the quiet names are left out from two on)."""
        self._narrow = False
        """This round's claims leave the quiet names out."""
        self.telemetry = Telemetry()
        """Metrics hook (the processor's): one call per run end."""

    # ---- claim loop --------------------------------------------------------------------

    def idle_wait(self) -> float:
        """Seconds an idle worker waits before polling again: `poll_interval`, stretched to
        `idle_poll_interval` while a blocking change stream will wake it."""
        return (
            self.settings.idle_poll_interval
            if self.stream_blocking()
            else self.settings.poll_interval
        )

    async def claim_loop(self) -> None:
        self.log.info("worker_started", worker_id=self.worker_id, jobs=self.names)
        while not self.stopping.is_set():
            if self._claimed >= self.settings.concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()  # a run's end, or stop(), sets it
                continue
            await self._gather_free_slots()
            self.wake.clear()
            try:
                # before claiming more: a release that failed is retried
                await self.claims.release_pending()
                got = await self.claim_batch()
                await self.claims.release_pending()
            except LostClaim as lost:
                self.claims.lost_claim(lost.run_id, monotonic_of(self.clock))
                self.log.warning("claim_reply_lost", worker_id=self.worker_id, run_id=lost.run_id)
                got = 0
            except PyMongoError as exc:
                self.log.warning("claim_failed", worker_id=self.worker_id, error=describe(exc))
                got = 0
            if not got:
                self._found_in_row = 0  # idle (or failed): the next claim carries every name
                self.idle.set()
                await self._sleep_until_due()
            else:
                self.idle.clear()

    async def _gather_free_slots(self) -> None:
        """Under a backlog with few slots free, give the other runs BATCH_WINDOW seconds to end
        too, so that their slots are claimed together (fewer commands per job). A micro-batching
        delay in real time, not a schedule: it never waits for the clock."""
        want = self.settings.concurrency // 2
        if want < 2:
            return  # nothing to gather with fewer than four slots
        deadline = asyncio.get_running_loop().time() + BATCH_WINDOW
        while (
            self._backlog
            and self.settings.concurrency - self._claimed < want
            and not self.stopping.is_set()
        ):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), remaining)

    async def _sleep_until_due(self) -> None:
        """Idle: sleep until woken, the earliest known due time, or the poll interval."""
        deadline = self.clock.now().timestamp() + self.idle_wait()
        while not (self.wake.is_set() or self.stopping.is_set()):
            now = self.clock.now()
            if self.due.passed(now):
                self.due.next_after(now)
                return
            nxt = self.due.next_after(now)
            until = deadline if nxt is None else min(deadline, nxt.timestamp())
            if until <= now.timestamp():
                return
            self._rearm.clear()
            waiters = {
                asyncio.ensure_future(self.wake.wait()),
                asyncio.ensure_future(self._rearm.wait()),
                asyncio.ensure_future(self.clock.sleep(until - now.timestamp())),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    def claimable_names(self) -> list[str]:
        """Names claimed without a limit (those with one go through the limiter), less the
        quiet names in a busy worker's round (see `engine.quiet`)."""
        names = [n for n in self.names if n not in self.paused] if self.paused else self.names
        if self._narrow:
            names = [n for n in names if n not in self.quiet.names]
        return self.limiter.unlimited(names)

    def expect(self, name: str) -> None:
        """A job of `name` exists (made or re-queued in this process, or claimed): a quiet
        name is claimed in every claim from now on."""
        self.quiet.expect(name)

    def may_claim(self, worker_id: str) -> bool:
        return bool(worker_id) and worker_id == self.worker_id and self.claimable()

    def claim_bound(self) -> float | None:
        """Seconds a claim's commands may take on Motor: until the lease ends (a second at
        least, as a stop waits for the claim loop), the driver's own bound (a claim a stop cut
        short was sent later by Motor's thread, once MongoDB was back: `storage.driver_bound`).
        None on PyMongo's async client, whose cut ends the command itself: no `maxTimeMS`
        added to every claim (bytes on the hot path)."""
        return max(self.lease_left(), 1.0) if self._threaded else None

    def start_claimed(self, doc: Doc) -> bool:
        """Start a job the claim loop took; False when it is not started (see `trusted`), nor
        once a stop has begun (a claim whose reply came after stop(): no new run starts)."""
        stopping = self.stopping.is_set()
        if stopping or not self.may_claim(str(doc.get("worker_id") or "")):
            # claimed while this worker was declared dead, or under the id it gave up: the
            # recovery of that id could run it a second time, so it never starts here
            if stopping:
                why, text = "worker_stopping", "claimed while its worker was stopping"
            elif self.trusted():
                why, text = "lease_ending", UNSTARTED_LEASE
            else:
                why, text = "worker_declared_dead", UNSTARTED_LEASE
            self.claims.keep(doc, text)
            fields = self._fields(doc) | {"worker_id": doc.get("worker_id")}
            self.log.warning("claim_released", reason=why, **fields)
            return False
        self._claimed += 1
        if self.quiet.names:
            self.expect(str(doc.get("name")))
        self.spawn(doc, claimed=True)
        return True

    async def claim_once(self) -> Doc | None:
        """Claim the best due job and start it (one command)."""
        names, me = self.claimable_names(), self.worker_id
        if not names or not self.may_claim(me) or self.stopping.is_set():
            return None
        doc = await self.jobs.claim_next(
            names,
            me,
            self.clock.now(),
            budget=self.settings.worker_timeout,
            bound=self.claim_bound(),
        )
        return doc if doc is not None and self.start_claimed(doc) else None

    async def claim_batch(self) -> int:
        """Fill the free slots. The best job is claimed alone first (one command: the same
        latency as a single claim when the queue is nearly empty); when the previous claim
        found work too (a backlog), the other free slots are filled in two more commands.
        Then the limited names fill what is left, key by key (see `limiter`)."""
        me = self.worker_id
        if not self.may_claim(me):
            self.claims_held = True  # the heartbeat wakes the loop once it may claim again
            return 0
        free = self.settings.concurrency - self._claimed
        got = 0
        # limited names go first every other time, so a backlog of unlimited ones never
        # starves them (nor do they starve the others: a full limit claims nothing)
        self._limited_first = not self._limited_first
        if self._limited_first and self.limiter.groups:
            got = await self.limiter.claim(self, free)
            free -= got
            if free <= 0:
                return got
        self._narrow = bool(self.quiet.left_out(self._found_in_row))
        if self._narrow:
            self._narrow = await self.quiet.probe(self.paused)
        doc = await self.claim_once()
        if doc is None and self._narrow:
            self._narrow = False  # the backlog is over: at once, a claim of every name
            doc = await self.claim_once()
        self._found_in_row = 0 if doc is None else self._found_in_row + 1
        if doc is None:
            self._backlog = False
        else:
            got += 1
            # a find + an update_many pay from two jobs up
            if self._backlog and free > 2 and self.may_claim(me) and not self.stopping.is_set():
                more = await self.jobs.claim_more(
                    self.claimable_names(),
                    me,
                    self.clock.now(),
                    free - 1,
                    budget=self.settings.worker_timeout,
                    bound=self.claim_bound(),
                )
                got += sum(self.start_claimed(other) for other in more)
            self._backlog = True
        left = self.settings.concurrency - self._claimed
        if not self._limited_first and self.limiter.groups and left > 0:
            got += await self.limiter.claim(self, left)
        return got

    def spawn(self, doc: Doc, claimed: bool = False) -> asyncio.Task[Doc | None]:
        """Run a job this process owns. The run is registered at once (before its task starts),
        so reconciliation never mistakes it for a stray."""
        misnamed = D.misnamed(doc)  # another program's: errored, never run as another job
        run = Run(
            doc=doc, definition=None if misnamed else self.definitions.get(str(doc.get("name")))
        )
        self.runs[str(doc["_id"])] = run
        task = asyncio.create_task(self.execute(run), name=f"job-{doc['_id']}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Doc | None]) -> None:
            self._tasks.discard(t)
            if claimed:
                self._claimed -= 1
            self._slot_freed.set()

        task.add_done_callback(done)
        return task

    def wake_at(self, when: dt.datetime) -> None:
        """Wake the claim loop when `when` comes (a retry, a job scheduled for later)."""
        if when <= self.clock.now():
            self.wake.set()
        elif self.due.add(when):
            self._rearm.set()

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self._slot_freed.set()

    async def drain(self) -> None:
        """Abort running jobs with reason 'shutdown' and wait until each has written its status."""
        for run in list(self.runs.values()):
            if run.signal.abort("shutdown"):
                self.log.info("job_abort_requested", reason="shutdown", **self._fields(run.doc))
        if self._tasks:  # shielded: a stop() cancelled by its caller never cuts a run half-way
            await asyncio.shield(asyncio.gather(*self._tasks, return_exceptions=True))

    def abort(self, job_id: str, reason: Any) -> bool:
        """Fire a running job's abort signal; True if this call fired it."""
        run = self.runs.get(job_id)
        if run is None or not run.signal.abort(reason):
            return False
        self.log.info("job_abort_requested", reason=reason, **self._fields(run.doc))
        return True

    def abandon_all(self, why: str) -> None:
        """This worker may have been declared dead: its jobs now belong to the recovery. Their
        handlers are cancelled at once (no shutdown grace: another worker may be running them
        already), and nothing more is written for them."""
        cause: dict[str, str] | None = None
        for run in list(self.runs.values()):
            if run.lost:
                continue
            if cause is None:
                said = self.loop_blocked()
                cause = {"cause": said} if said else {}
            run.give_up()
            run.signal.abort("shutdown")
            if len(self.gave_up) >= 1000:  # those recovered elsewhere stay: the oldest goes
                del self.gave_up[next(iter(self.gave_up))]
            # what its own recovery will say (`recovery.GAVE_UP`): a measured block, if one
            self.gave_up[str(run.doc.get("run_id"))] = "event_loop_blocked" if cause else why
            self.log.warning("job_abandoned", reason=why, **cause, **self._fields(run.doc))

    def owns(self, doc: Doc) -> bool:
        """Is this process really running that run of the job?"""
        run = self.runs.get(str(doc["_id"]))
        return run is not None and run.doc.get("run_id") == doc.get("run_id")

    # ---- executing one job -----------------------------------------------------------

    def _fields(self, doc: Doc) -> dict[str, Any]:
        """A run's log fields: the worker id is the one it runs under (after a new
        registration, a run of the old one still says the old)."""
        worker_id = doc.get("worker_id") or self.worker_id
        return {"job_id": str(doc["_id"]), "job_name": doc.get("name"), "worker_id": worker_id}

    async def execute(self, run: Run) -> Doc | None:
        """Run a claimed job to its end and write the outcome. Never raises (but CancelledError).

        Returns the final document, or None when the job was lost to another process.
        """
        doc = run.doc
        fields = self._fields(doc)
        trace = None
        try:
            trace = sentry.start_run(doc, self.worker_id)  # None without Sentry
            if run.definition is None:  # another program wrote a bad name: record why
                error = FD.bad_name(doc)
                end = RunEnd(Ending.INVALID, error=error)
                final = await asyncio.shield(self._finish(run, end, None))
                sentry.run_ended(trace, final, None)
                return final
            if FD.incomplete(doc):  # inserted by another program: fill in the rest
                missing = FD.completion(doc, run.definition, self.clock.now())
                run.doc = doc = doc | missing
                job_id, run_id, budget = doc["_id"], doc["run_id"], self.settings.worker_timeout
                try:  # an outage is ridden out, as for a final write; past it: recovery takes it
                    await ride_out(lambda: self.jobs.complete(job_id, run_id, missing), budget)
                except TRANSIENT as exc:
                    run.give_up()
                    self.log.error("job_status_write_failed", error=describe(exc), **fields)
                    return None
            if claimed_too_late(doc, self.clock.now()):
                return await asyncio.shield(self._skip_missed(run))
            try:
                job = build_job(doc, run.definition)
            except Exception as exc:
                error = f"invalid job document: {invalid_document(exc, run.definition)}"
                end = RunEnd(Ending.INVALID, error=error)
                final = await asyncio.shield(self._finish(run, end, None))
                sentry.run_ended(trace, final, exc)
                return final
            job._checkpointer = lambda state: self._checkpoint(run, state)
            job._loop = asyncio.get_running_loop()  # checkpoint_sync from a handler's thread
            job._processor = self.processor
            job._notes = run.notes = RunNotes(run, self.jobs, self.clock, self.log, fields)
            check_in = self._checkin(run, "in_progress")
            self.log.info(
                "job_started",
                attempt=doc.get("attempt"),
                failures=doc.get("failures", 0),
                from_checkpoint=doc.get("state") is not None,
                **fields,
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            end = await run_handler(
                run,
                job,
                self.clock,
                self.log,
                self.settings.shutdown_grace,
                self.ignoring_cancel,
                fields,
            )
            duration_ms = int((loop.time() - t0) * 1000)
            final = await asyncio.shield(self._finish(run, end, duration_ms))
            sentry.run_ended(trace, final, run.exc)
            interrupted = (
                final is not None
                and final["status"] == S.PENDING
                and int(final.get("failures") or 0) <= int(doc.get("failures") or 0)
            )
            if final is not None and final["status"] != S.PAUSED and not interrupted:
                # an attempt that failed (retried: pending again) closes its check-in too; one
                # interrupted by a shutdown (no attempt used) says nothing, as a pause
                ok = "ok" if final["status"] == S.FINISHED else "error"
                self._checkin(run, ok, check_in, duration_ms / 1000)
            return final
        except Exception as exc:  # a bug of ours: record it on the job, never kill the worker
            self.log.exception("job_execution_failed", **fields)
            end = RunEnd(Ending.INVALID, error=f"internal error: {describe_error(exc)}")
            with contextlib.suppress(Exception):
                final = await asyncio.shield(self._finish(run, end, None))
                sentry.run_ended(trace, final, exc)
                return final
            return None
        finally:
            sentry.finish_run(trace)
            if self.runs.get(str(doc["_id"])) is run:
                del self.runs[str(doc["_id"])]

    def _lost_reason(self) -> dict[str, str]:
        """`job_lost`'s reason when a blocked event loop explains it (the run was given up, or
        its final write found the job recovered elsewhere)."""
        reason = self.loop_blocked()
        return {"reason": reason} if reason else {}

    async def _skip_missed(self, run: Run) -> Doc | None:
        now = self.clock.now()
        keep = R.of(run.definition, self.settings.retention)
        skipped = Outcome(S.SKIPPED, expires_at=keep.expires_at(S.SKIPPED, now) if keep else None)
        written = await self.jobs.end_run(
            run.doc, skipped, now, writer=self.worker_id, budget=self.settings.worker_timeout
        )
        if written.kill_requested:  # a kill landed first: it wins here too (never ran: killed)
            return await self._finish(run, RunEnd(Ending.UNSTARTED, kill_requested=True), None)
        await self.limiter.release(run.doc, self, started=False)  # never ran: no start
        if written.doc is not None:
            if self.on_ended is not None:  # the jobs waiting on it, at once (engine.flows)
                await self.on_ended(written.doc)
            self.telemetry.cron_slot(str(run.doc.get("name")), "missed")
            self.log.warning(
                "cron_slot_missed",
                slot=run.doc["scheduled_for"].isoformat(),
                now=now.isoformat(),
                **self._fields(run.doc),
            )
        return written.doc

    def _checkin(
        self, run: Run, status: str, check_in_id: str | None = None, duration: float | None = None
    ) -> str | None:
        if run.doc.get("type") != "cron_task" or not isinstance(run.definition, CronDef):
            return None
        name = str(run.doc.get("name"))
        cron = self.cron_followed(name, run.definition)
        return sentry.checkin(name, cron, status, check_in_id, duration)

    async def _checkpoint(self, run: Run, state: dict[str, Any]) -> dict[str, Any]:
        fields = self._fields(run.doc)
        budget = self.settings.worker_timeout
        return await save_checkpoint(self.jobs, self.clock, self.log, budget, fields, run, state)

    async def _finish(self, run: Run, end: RunEnd, duration_ms: int | None) -> Doc | None:
        """Decide the outcome and write it. A write that cannot be stored is replaced by an
        errored outcome saying why; a kill requested meanwhile makes us decide again."""
        if run.lost:
            self.log.warning("job_lost", **self._lost_reason(), **self._fields(run.doc))
            return None
        with self.hooks.pending(run.doc["_id"]):  # its hook is this process's to call
            return await self._write_end(run, end, duration_ms)

    async def _write_end(self, run: Run, end: RunEnd, duration_ms: int | None) -> Doc | None:
        fields = self._fields(run.doc)
        policy = policy_of(run.definition, run.doc, self.settings.retention)
        notes = await run.notes.close(self.settings.worker_timeout) if run.notes else None
        written = None
        for _ in range(4):  # at most: unrecordable, without its notes, a kill requested meanwhile
            if run.lost:  # given up (its lease ended) while its writes settled: nothing more
                self.log.warning("job_lost", **self._lost_reason(), **fields)  # is sent for it
                return None
            now = self.clock.now()
            outcome = decide(run.doc, policy, end, now)
            try:
                written = await self.finals.write(
                    EndItem(
                        run.doc,
                        outcome,
                        now,
                        self.worker_id,
                        duration_ms,
                        notes,
                        stop=run.writes_stop,  # no try once the run is given up
                    ),
                    alone=len(self.runs) <= 1,
                )
            except TRANSIENT as exc:  # unreachable past worker_timeout: recovery takes it
                if run.lost:  # its retries stopped when the lease ended
                    self.log.warning("job_lost", **self._lost_reason(), **fields)
                    return None
                run.give_up()
                self.log.error(
                    "job_status_write_failed",
                    status=outcome.status.value,
                    error=describe(exc),
                    **fields,
                )
                return None
            except Exception as exc:  # e.g. DocumentTooLarge: record why, without the result
                if end.how == Ending.UNRECORDABLE:
                    if notes:  # the progress or lines it carried may be why: the end first
                        self.log.error("job_notes_failed", error=describe(exc), **fields)
                        notes = None
                        continue
                    self.log.exception("job_status_write_failed", **fields)
                    return None
                why = f"{type(exc).__name__}: {str(exc)[:500]}"
                self.log.error("job_outcome_unrecordable", error=why, **fields)
                end = RunEnd(
                    Ending.UNRECORDABLE,
                    error=f"could not record the run's outcome ({outcome.status.value}): {why}",
                    kill_requested=end.kill_requested,  # a kill already found still wins
                )
                continue
            if written.kill_requested:
                end = replace(end, kill_requested=True)
                continue
            break
        if written is None or written.doc is None:
            # someone else moved the job first (we were declared dead): their state stands
            self.log.warning(
                "job_lost", status=outcome.status.value, **self._lost_reason(), **fields
            )
            return None
        final = written.doc
        self._log_outcome(outcome, run, fields, duration_ms)
        self.telemetry.run_ended(run.doc, final, duration_ms)
        if outcome.status == S.PENDING and outcome.retry_at is not None:
            self.wake_at(outcome.retry_at)
        started = end.how is not Ending.UNSTARTED  # a kill before its start: no start either
        await self.limiter.release(run.doc, self, until=run.still_running, started=started)
        if self.on_ended is not None:  # the jobs waiting on it (engine.flows)
            await self.on_ended(final)
        await self.hooks.after_write(run.definition, final)
        return final

    def _log_outcome(
        self, outcome: Outcome, run: Run, fields: dict[str, Any], duration_ms: int | None
    ) -> None:
        extra: dict[str, Any] = {}
        if outcome.error:  # masked as the dashboard and the CLI show it
            shown = outcome.error.splitlines()[0]
            extra["error"] = log_text(shown, logged_values(run), paths_of(run))
        if outcome.status == S.PENDING and outcome.retry_at is not None:
            extra |= {"retry_at": outcome.retry_at.isoformat(), "failures": outcome.failures}
        log = self.log.warning if outcome.status == S.ERRORED else self.log.info
        log(outcome.event, duration_ms=duration_ms, **extra, **fields)
