"""on_job_exited, durably: at least once per terminal exit, recorded on the job.

The final write that makes a job finished, errored or killed records `exit_hook: "owed"` with a
hook id and its owner (the writing process), in the same single-document update. The owner then
calls the hook, bounded by the definition's `on_job_exited_timeout`, and records the outcome
("done", or "failed" with the error) with a compare-and-set on the hook id. If the owner dies in
between, the hook stays owed; a live worker that knows the definition takes it over (a
compare-and-set on the hook id, so one taker) once the owner is gone, and calls it again: a
dead worker's hooks in the same sweep that recovers its jobs (more than `worker_timeout` and at
most 1.5 x `worker_timeout` after its last heartbeat); a client's (a process with no worker
document, whose liveness cannot be read) once the record is older than `worker_timeout` plus
the hook's timeout. A hook recorded with no owner (a kill from a process that has no handlers,
such as the CLI) is called by the next sweep. A hook can therefore run twice only when its
process died, or was declared dead, while running it (or before recording that it ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..core import documents as D
from ..core import retention as R
from ..core.clock import Clock
from ..core.definitions import HOOK_RETRIED_MARK, HOOK_WHEN_MARK, JobDef
from ..core.log import EventLog
from ..core.masking import log_text
from ..core.models import Job
from ..core.retention import Retention
from ..core.status import JobStatus
from ..storage import Storage
from ..storage.transient import TRANSIENT, describe, is_transient, ride_out, unsure_write
from .execution import build_job, call_maybe_async, describe_error

Doc = dict[str, Any]


class _HookTimedOut(Exception):
    """A hook ran past `on_job_exited_timeout` (its own TimeoutError is a failure as any)."""


#: Seconds after which an owed hook this process owns, and is not running, is taken as never
#: started here (the final write's reply was lost before the hook could start).
OWN_HOOK_GRACE = 5.0


class HookRunner:
    def __init__(
        self,
        storage: Storage,
        definitions: Mapping[str, JobDef],
        clock: Clock,
        log: EventLog,
        budget: float,
        worker_id: Callable[[], str],
        retention: Retention | None = None,
    ) -> None:
        self.jobs = storage.jobs
        self.workers = storage.workers
        self.definitions = definitions
        self.clock = clock
        self.log = log
        self.budget = budget
        self.worker_id = worker_id
        self.in_flight: set[str] = set()
        self._writing: dict[str, int] = {}  # job id: final writes in progress (`pending`)
        self._writing_lock = threading.Lock()
        self.retention = retention or Retention()
        self._tasks: set[asyncio.Task[None]] = set()
        """Hooks started in the background (recovered ones): never run inside a loop that
        must stay prompt (the sweep, the heartbeat); `drain()` waits for them."""
        self.left_running: set[asyncio.Future[Any]] = set()
        """Async hooks past their timeout that did not end when cancelled, left to finish."""

    @contextlib.contextmanager
    def pending(self, job_id: Any) -> Iterator[None]:
        """Around a final write that may record a hook owed by this process, and the calls up
        to `after_write`/`start`: this process's own sweep, which may read the owed hook as soon
        as the write lands (before its reply), must not take it over and call it a second time."""
        key = str(job_id)
        with self._writing_lock:  # a JobClient's calls come from many threads
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            yield
        finally:
            with self._writing_lock:
                left = self._writing.pop(key) - 1
                if left:
                    self._writing[key] = left

    def busy(self, job_id: Any) -> bool:
        """Whether this process is calling the job's hook, or writing the exit that owes it."""
        key = str(job_id)
        return key in self.in_flight or key in self._writing

    async def after_write(self, definition: JobDef | None, doc: Doc) -> None:
        """Call the hook that a final write just recorded as owed by this process."""
        if doc.get("exit_hook") == "owed":
            await self.run(definition, doc)

    def start(self, definition: JobDef | None, doc: Doc) -> None:
        """Call an owed hook in the background (recovery): its owner's loops go on meanwhile."""
        if doc.get("exit_hook") != "owed":
            return
        self.in_flight.add(str(doc["_id"]))
        task = asyncio.create_task(self.run(definition, doc), name=f"hook-{doc['_id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def running(self) -> int:
        """Hooks this process is running in the background (taken over), not ended."""
        return sum(1 for task in self._tasks if not task.done())

    async def drain(self) -> None:
        """Wait for the hooks running in the background (each bounded by its timeout)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run(self, definition: JobDef | None, doc: Doc) -> None:
        """Call an owed hook and record it; whatever escapes (a bug here, an error from a
        write), the job is not left marked as being run here (it stayed owed for ever: no
        sweep of this worker took it over)."""
        try:
            await self._run(definition, doc)
        except BaseException:
            self.in_flight.discard(str(doc["_id"]))
            raise

    async def _run(self, definition: JobDef | None, doc: Doc) -> None:
        job_id, hook_id = doc["_id"], doc["exit_hook_id"]
        if definition is None:
            # unknown here: hand it to a process that knows the job (no owner: the next sweep
            # of such a worker takes it at once), instead of holding it while this one lives
            try:
                if doc.get("exit_hook_owner") is not None:
                    await ride_out(lambda: self.jobs.disown_hook(job_id, hook_id), self.budget)
            except TRANSIENT as exc:
                self.log.error(
                    "on_job_exited_record_failed", error=describe(exc), job_id=str(job_id)
                )
            finally:
                self.in_flight.discard(str(job_id))
            return
        fields = {"job_id": str(job_id), "job_name": doc.get("name"), "worker_id": self.worker_id()}
        expires_at = self._expiry(definition, doc)
        when = getattr(definition.on_job_exited, HOOK_WHEN_MARK, None)
        if definition.on_job_exited is None or (when is not None and not when(doc)):
            # none defined, or none for this job (a kill records a hook owed whatever the job)
            try:
                await self._record(job_id, hook_id, "none", None, fields, expires_at, doc)
            finally:
                self.in_flight.discard(str(job_id))
            return
        try:
            job: Job[Any] = build_job(doc, definition)
        except Exception:  # an invalid payload: the hook still gets the job, payload as stored
            job = Job.read(doc)
        timeout = definition.on_job_exited_timeout
        self.in_flight.add(str(job_id))
        error: str | None = None
        transient = False  # a timeout or an outage: what a retried hook is called again for
        try:

            def returned_late(name: str, seconds: float) -> None:
                self.log.warning(
                    "on_job_exited_returned_late",
                    function=name,
                    seconds=round(seconds, 3),
                    **fields,
                )

            hook_task = asyncio.ensure_future(
                call_maybe_async(definition.on_job_exited, job, on_late_return=returned_late)
            )
            try:
                done, _ = await asyncio.wait({hook_task}, timeout=timeout)
            except asyncio.CancelledError:
                self._cut(hook_task)
                raise
            if not done:
                self._cut(hook_task)
                await asyncio.wait({hook_task}, timeout=1.0)  # as a handler's ignored cancel
                raise _HookTimedOut  # one still running is left to finish on its own
            hook_task.result()  # the hook's own errors (its own TimeoutError too) below
        except _HookTimedOut:
            error, transient = f"timed out after {timeout:g}s", True
            self.log.error("on_job_exited_timed_out", timeout=timeout, **fields)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task is cancelled: not settled,
                self.in_flight.discard(str(job_id))  # a sweep (here or elsewhere) takes it
                raise
            # the hook itself raised it (it awaited something cancelled): a failure as any
            error = "CancelledError raised by the hook (its task was not cancelled)"
            self.log.error("on_job_exited_failed", error=error, **fields)
        except BaseException as exc:  # an Exception, or another BaseException of the hook's
            error, transient = describe_error(exc), is_transient(exc) or unsure_write(exc)
            # its first line masked as job_errored's (the traceback is on the job, where readers
            # mask it: the log would show the payload's secrets, and rich's locals)
            values = (doc.get("payload"), doc.get("state"))
            paths = definition.sensitive_fields
            shown = log_text(error.splitlines()[0], values, paths)
            self.log.error("on_job_exited_failed", error=shown, **fields)
        if error and transient and getattr(definition.on_job_exited, HOOK_RETRIED_MARK, False):
            # a step that must happen (a serial chain's next delivery), held up by an outage:
            # still owed, no owner, so a live worker's next sweep calls it again (idempotent);
            # any other error (a bug) is recorded as failed: called again, it would fail again
            self.log.warning("on_job_exited_retried_later", error=error[:300], **fields)
            try:
                with contextlib.suppress(*TRANSIENT):  # then it stays ours: taken over later
                    await self.jobs.disown_hook(job_id, hook_id)
            finally:
                self.in_flight.discard(str(job_id))
            return
        state = "failed" if error else "done"
        try:
            await self._record(job_id, hook_id, state, error, fields, expires_at, doc)
        finally:  # only now: a sweep must not take it over while its record is being written
            self.in_flight.discard(str(job_id))

    def _cut(self, task: asyncio.Future[Any]) -> None:
        """Cancel a hook's task; whatever it ends with is retrieved (never "Task exception was
        never retrieved" for a hook whose cleanup failed); until it ends, it is left running."""
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if not task.done():
            self.left_running.add(task)
            task.add_done_callback(self.left_running.discard)

    def _expiry(self, definition: JobDef, doc: Doc) -> dt.datetime | None:
        """The job's retention starts when its hook is settled (never while it is owed)."""
        keep = R.of(definition, self.retention)
        if keep is None:
            return None
        return keep.expires_at(JobStatus(doc["status"]), self.clock.now())

    async def _record(
        self,
        job_id: Any,
        hook_id: str,
        state: str,
        error: str | None,
        fields: dict[str, Any],
        expires_at: dt.datetime | None,
        doc: Doc,
    ) -> None:
        try:
            await self.jobs.hook_ended(
                job_id,
                hook_id,
                state,
                error,
                self.clock.now(),
                self.budget,
                expires_at,  # held back while jobs wait on it: decided in the write
            )
        except TRANSIENT as exc:  # it stays owed, and will be called again
            self.log.error("on_job_exited_record_failed", error=describe(exc), **fields)

    async def settle(self, doc: Doc, who: str, worker_timeout: float) -> Doc | None:
        """Run the hook a job still owes, here and now, before anything changes the job (a
        retry): each exit's hook runs once, with that exit's status. A hook nobody can be
        running (no owner, a dead worker's, a client's past its time) is taken over
        (compare-and-set on its hook id, so one runner) and run here; one that its owner may be
        running (a live worker, this process, a recent client) is waited for, up to its timeout.
        Returns the job as it is after, or None when the hook could not be settled here (its
        definition is unknown to this process, or its owner still holds it)."""
        definition = self.definitions.get(str(doc.get("name")))
        if definition is None:
            return None
        deadline = self.clock.now() + dt.timedelta(seconds=definition.on_job_exited_timeout + 5)
        current: Doc | None = doc
        while current is not None and current.get("exit_hook") == "owed":
            now = self.clock.now()
            mine = None
            # abandoned is judged first (marked pending, this process's own hook never is);
            # from the take-over on, this worker's sweep sees it as being run here
            if await self._abandoned(current, who, now, worker_timeout):
                with self.pending(doc["_id"]):
                    mine = await self.jobs.take_hook(current, who, now)
                    if mine is not None:
                        self.in_flight.add(str(doc["_id"]))
            if mine is not None:
                self.log.info(
                    "on_job_exited_settled",
                    job_id=str(doc["_id"]),
                    job_name=doc.get("name"),
                    worker_id=who,
                )
                await self.run(definition, mine)
            elif now >= deadline:
                return None  # its owner still holds it, past its timeout: not settled here
            else:
                await self.clock.sleep(0.2)  # its owner is running it
            current = await self.jobs.get(doc["_id"])
        return current

    async def _abandoned(self, doc: Doc, who: str, now: dt.datetime, worker_timeout: float) -> bool:
        """Whether no process can be running this owed hook: it has no owner, or its owner is a
        worker that is not live, or a client (liveness unknown) that has had time to finish."""
        owner = doc.get("exit_hook_owner")
        if owner is None:
            return True
        if owner in (who, self.worker_id()):
            # this process runs its own hooks right after its final writes; one it is not
            # running a few seconds later was never started here (a reply lost on the way)
            young = doc["exit_hook_at"] > now - dt.timedelta(seconds=OWN_HOOK_GRACE)
            return not self.busy(doc["_id"]) and not young
        definition = self.definitions.get(str(doc.get("name")))
        timeout = definition.on_job_exited_timeout if definition else 0.0
        if D.is_client(str(owner)):
            held = dt.timedelta(seconds=worker_timeout + timeout)
            return bool(doc["exit_hook_at"] <= now - held)
        # its owner by its own worker_timeout, as the sweep judges it
        return not await self.workers.is_live(str(owner), now, worker_timeout)

    async def recover(
        self,
        now: dt.datetime,
        live: set[str],
        worker_timeout: float,
        owed: list[Doc] | None = None,
        trusted: Callable[[], bool] | None = None,
    ) -> int:
        """Call the hooks owed by processes that are gone. Returns how many were taken.

        A worker's hook is taken over as soon as the worker is dead (the same sweep that
        recovers its jobs, `worker_timeout` to 1.5 x `worker_timeout` after its last heartbeat).
        A hook owned by a process without a worker document (a client: its liveness cannot be
        read) is taken over once it has had time to finish: `worker_timeout` plus the hook's
        timeout after it was recorded. One with no owner (a kill from the CLI) is taken at once.
        `trusted`: whether this worker's registration still holds; none is taken once it does
        not, nor once it registered afresh under another id (its lease ran out meanwhile:
        taken under the id it gave up, a hook would be taken over again, and called a second
        time, by every other worker's next sweep)."""
        me = self.worker_id()
        taken = 0
        for doc in owed if owed is not None else await self.jobs.owed_hooks(now):
            # registered afresh meanwhile (trusted again, under a new id): taken under the
            # id read above, whose document is gone, it would be taken over again too
            if (trusted is not None and not trusted()) or self.worker_id() != me:
                break  # left to the sweep under the id it registers afresh
            owner = doc.get("exit_hook_owner")
            definition = self.definitions.get(str(doc.get("name")))
            if definition is None or (owner in live and owner != me):
                continue
            if self.busy(doc["_id"]):
                continue
            wait = worker_timeout + definition.on_job_exited_timeout
            if D.is_client(owner) and doc["exit_hook_at"] > now - dt.timedelta(seconds=wait):
                continue  # a process that is not a worker may still be calling it
            mine = await self.jobs.take_hook(doc, me, now)
            if mine is None:
                continue  # another worker took it
            taken += 1
            if definition.on_job_exited is None:  # none to call (a CLI's kill of such a
                self.start(definition, mine)  # name): "none" recorded, nothing logged
                continue
            # no owner: recorded by a process that does not call hooks (the CLI's kill, a
            # flow's policy, a worker that does not define the name): the usual way, not a
            # fault; an owner that is gone is one
            log = self.log.info if owner is None else self.log.warning
            log(
                "on_job_exited_recovered",
                job_id=str(doc["_id"]),
                job_name=doc.get("name"),
                owner=owner,
                worker_id=me,
            )
            self.start(definition, mine)
        return taken
