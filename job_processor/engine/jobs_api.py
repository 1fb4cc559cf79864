"""The producer's verbs on jobs, from any process: schedule one or many, read, kill, retry, and
wait for an ending or a result (`engine.waits`). A mixin of `JobProcessor` (the same code
drives the synchronous `job_processor.sync.JobClient`, see `storage.sync_adapter`).

Every call validates its arguments before anything is written (`core.producing`), and its
database round trips ride out short outages (`storage.producer`: a write retried after a lost
reply is recognised by the `_id` or the retry id chosen before the first attempt, so nothing
is written twice).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId
from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from ..core import documents as D
from ..core import retention as R
from ..core.definitions import KEY_SEPARATOR, JobDef
from ..core.errors import (
    DatabaseUnreachableError,
    InvalidArgumentError,
    JobNotFoundError,
    JobProcessorError,
    UnknownJobError,
    did_you_mean,
    keywords_checked,
)
from ..core.event_documents import is_delivery
from ..core.models import Job, id_list
from ..core.producing import (
    Template,
    WaitPacing,
    after_ids,
    batch_items,
    item_names,
    keyed_once,
    new_job_doc,
    remaining_items,
)
from ..core.retries import RETRYABLE, retry_refusal
from ..core.status import JobStatus, parse_status
from ..core.values import INT64_MAX
from ..storage import object_id
from .waits import STREAM_WAITERS, JobWaits

S = JobStatus
Doc = dict[str, Any]

#: How many of a waiting job's dependencies its `job_waiting` line names (with their count).
AFTER_LOGGED = 10
#: schedule_jobs writes this many jobs per insert_many.
BATCH = 1000

#: How long the registry's definitions are reused by a client without `jobs=`.
REGISTRY_TTL = 60.0
#: A name the registry read does not hold: read again if that read is this old (seconds).
REGISTRY_MISS_TTL = 5.0


def _check_job_name(name: Any) -> None:
    """A job name given to a producer verb is a non-empty str: anything else is refused as
    such (not "unknown job 'None'", which sent the caller to add it to the definitions)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"a job name is a non-empty string, got {name!r:.60}")


def _a_cron(name: str) -> str:
    return f"{name!r} is a cron, not a job: run a task of it now with trigger_cron({name!r})"


class JobsAPI(JobWaits):
    jobs: dict[str, JobDef]
    open_names = False
    """A client without `jobs=` (JobClient): names are read from the registry of the workers'
    definitions, and a name it does not know is written as is (the workers decide)."""
    hooks_here = True
    """Whether this process calls on_job_exited (a JobClient never does: a worker does)."""
    jobs_given_to = "init_job_processor(jobs={...})"
    """Where this process's job definitions come from (named by unknown-name errors)."""
    _registry: tuple[float, dict[str, Doc]] | None = None

    # ---- templates: what a name's definition decides --------------------------------------

    async def _templates(self, names: Iterable[Any] = ()) -> Callable[[str], Template]:
        """name -> its Template; an unknown name raises UnknownJobError (with a did-you-mean),
        except for an open client, which reads the registry and writes unknown names as is
        (warning once per name and call). `names`: those about to be scheduled; one the
        registry read does not hold has it read again, if that read is `REGISTRY_MISS_TTL`
        old (a worker deployed since may have registered it)."""
        if not self.open_names:
            return self._template_of_definition
        rows = await self._registry_rows()
        if any(isinstance(n, str) and n not in rows and n not in self.jobs for n in names):
            rows = await self._registry_rows(REGISTRY_MISS_TTL)  # never cleared: threads share it
        warned: set[str] = set()

        def template(name: str) -> Template:
            _check_job_name(name)
            if KEY_SEPARATOR in name and name not in rows:  # no worker could define it
                raise InvalidArgumentError(
                    f"job {name!r}: a job name may not contain {KEY_SEPARATOR!r} (no worker can "
                    "define one); check the name"
                )
            if name in self.jobs:
                return Template.of(self.jobs[name])
            row = rows.get(name)
            if row is None:
                if name in warned:
                    return Template(known=False)
                warned.add(name)
                self.log.warning(
                    "job_name_not_registered",
                    job_name=name,
                    hint="no worker has registered this name yet"
                    f"{did_you_mean(name, list(rows))}; it is written as is, and a worker that "
                    "defines it runs it (pass jobs= to JobClient to check names here)",
                )
                return Template(known=False)
            if row.get("kind") == "cron":
                raise InvalidArgumentError(_a_cron(name))
            if is_delivery(name, row):  # as the async API and the admin refuse it
                raise InvalidArgumentError(
                    f"{name!r} is an event delivery: its jobs are made by emit(); to deliver "
                    "an event again, replay it (replay_event, job-processor events replay ID)"
                )
            return Template.registered(row)

        return template

    def _template_of_definition(self, name: str) -> Template:
        return Template.of(self._definition(name))

    def _definition(self, name: str) -> JobDef:
        _check_job_name(name)
        if name not in self.jobs:
            if name in getattr(self, "crons", {}):
                raise InvalidArgumentError(_a_cron(name))  # not "add it to jobs=": init refuses
            raise UnknownJobError(name, list(self.jobs), self.jobs_given_to)
        return self.jobs[name]

    async def _registry_rows(self, max_age: float = REGISTRY_TTL) -> dict[str, Doc]:
        at = time.monotonic()
        registry = self._registry  # read once: a JobClient's request threads share it
        if registry is None or at - registry[0] > max_age:
            docs = await self.storage.producer.run(lambda _: self.storage.definitions.all())
            rows = {str(d["_id"]): d for d in docs}
            await self._mark_old_deliveries(rows)
            registry = self._registry = (at, rows)
        return registry[1]

    async def _mark_old_deliveries(self, rows: dict[str, Doc]) -> None:
        """Rows a worker registered before the `delivery` mark: a subscriber's delivery
        ('<event>:<subscriber>') is told by the subscribers collection, as the admin tells it
        (marked here, in this client's copy)."""
        unmarked = [n for n, r in rows.items() if "delivery" not in r and ":" in n]
        if not unmarked:
            return
        subscribers = await self.storage.producer.run(lambda _: self.storage.subscribers.all())
        subscriber_jobs = {str(r.get("job_name")) for r in subscribers}
        for name in unmarked:
            rows[name]["delivery"] = is_delivery(name, rows[name], subscriber_jobs)

    # ---- scheduling --------------------------------------------------------------------------

    @keywords_checked
    async def schedule_job(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
        delay: dt.timedelta | float | None = None,
        after: Iterable[Any] | None = None,
        on_dependency_failure: str = "skip",
    ) -> Job[Any]:
        """Queue a job; a worker whose tags allow it runs it at `scheduled_for` (aware), or
        `delay` (a timedelta or seconds) from now, or now; or, with `after` (job ids or Jobs,
        which must exist), once they have all ended: it waits meanwhile (status "waiting"),
        and a dependency that does not finish skips it (`on_dependency_failure="skip"`, the
        default), errors it ("error"), or counts as ended ("run").

        priority: higher first (then due time, then the id: creation order within a process).
        key: dedup key, scoped by job name: while a job of this name with this key is pending,
        running or paused, that job is returned instead of a new one.
        max_attempts: overrides the definition's (1 = no retry).
        An exclusive job whose name already has an active job is recorded as skipped."""
        template = (await self._templates([name]))(name)
        deps = after_ids(after, name)
        doc = new_job_doc(
            name,
            template,
            payload,
            now=self.clock.now(),
            scheduled_for=scheduled_for,
            delay=delay,
            priority=priority,
            key=key,
            max_attempts=max_attempts,
            after=deps,
            on_dependency_failure=on_dependency_failure,
        )
        try:
            if deps:
                # marked first: if settling after the insert fails, a sweep does; and from the
                # mark on no purge, delete, count or expiry takes them (then checked: they exist)
                await self.flows.mark(deps)
                await self.flows.check_exist(deps, name)
            stored = await self.storage.producer.run(lambda retried: self._insert(doc, retried))
        except DatabaseUnreachableError as exc:
            exc.job_id = str(doc["_id"])  # a hung server may still run the insert it received
            raise
        registered = deps and stored["_id"] == doc["_id"] and stored["status"] == S.WAITING
        if registered and await self._register(deps, [doc["_id"]], {doc["_id"]: deps}):
            stored = (await self._as_now([stored]))[0]
        job = Job.read(stored)
        if job.id != str(doc["_id"]):
            self.log.info("job_deduplicated", job_id=job.id, job_name=name, key=key)
        elif job.status == S.WAITING:
            self.log.info(  # a bounded line: a fan-in may wait on 10,000 jobs
                "job_waiting",
                job_id=job.id,
                job_name=name,
                after=job.after[:AFTER_LOGGED],
                after_count=len(job.after),
            )
        elif job.status == S.SKIPPED:
            self.log.info(
                "job_skipped",
                job_id=job.id,
                job_name=name,
                conflicting_job_id=job.conflicting_job_id,
            )
        else:
            self.log.info(
                "job_scheduled",
                job_id=job.id,
                job_name=name,
                scheduled_for=job.scheduled_for.isoformat(),
            )
            if self.started and name in self.worker.names:
                self.worker.expect(name)
                self.worker.wake_at(job.scheduled_for)
        return job

    async def _register(
        self,
        deps: list[ObjectId],
        jobs: list[ObjectId],
        waiting: Mapping[ObjectId, Sequence[ObjectId]] | None = None,
    ) -> int:
        """`flows.register`, once the jobs waiting on `deps` are written. An outage past the
        producer budget here does not fail the call (the jobs are stored: a retry would write
        them twice): the dependencies were marked before the insert (`Flows.mark`), so a
        worker's sweep settles them instead, once the jobs are `GRACE` old (flows.md).
        Returns how many of `deps` had ended (then the jobs are read again)."""
        try:
            return await self.flows.register(deps, waiting)
        except DatabaseUnreachableError as exc:
            hint = "the jobs are stored; a worker's sweep settles their dependencies"
            self._unreachable("dependencies_not_registered", jobs, exc, hint)
            return 0

    def _unreachable(
        self, event: str, ids: Sequence[Any], exc: DatabaseUnreachableError, hint: str
    ) -> None:
        """A step after the jobs' insert that MongoDB did not answer: said, never raised."""
        self.log.warning(
            event,
            job_ids=[str(i) for i in ids[:20]],
            jobs=len(ids),
            error=str(exc).splitlines()[0],
            hint=hint,
        )

    async def _as_now(self, stored: list[Doc]) -> list[Doc]:
        """These jobs as they are now (a registration released some); as written when MongoDB
        cannot be read within the producer budget: they are stored and registered, so the
        call does not fail (a retry would write them twice)."""
        ids = [d["_id"] for d in stored]
        try:
            found = await self.storage.producer.run(lambda _: self.storage.jobs.get_many(ids))
        except DatabaseUnreachableError as exc:
            hint = "returned as written (waiting); they are released: get_job reads them"
            self._unreachable("released_jobs_not_read", ids, exc, hint)
            return stored
        fresh = {d["_id"]: d for d in found}
        return [fresh.get(d["_id"], d) for d in stored]

    async def schedule_jobs(self, items: Iterable[Any]) -> list[Job[Any]]:
        """Queue many jobs: each item is `(name, payload)` or a `JobSpec`. Every item is
        validated as `schedule_job` validates it before anything is written (an invalid one
        raises, naming its index); then one `insert_many` per 1,000 jobs. Returns the jobs in
        the order given; a dedup key held by an active job (or by an earlier item) gives that
        job, an exclusive name already active gives a skipped job, as `schedule_job` does."""
        if isinstance(items, Iterable) and not isinstance(items, str | bytes | Mapping):
            items = list(items)  # else refused by batch_items, saying what it takes
        docs = batch_items(items, await self._templates(item_names(items)), self.clock.now())
        mine = {str(d["_id"]) for d in docs}
        outside = [
            ObjectId(a) for a in sorted({a for d in docs for a in d.get("after") or []} - mine)
        ]
        if outside:  # dependencies that are not items of this batch must exist (marked
            await self.flows.mark(outside)  # first, as by schedule_job; the batch's own are
            missing = await self.flows.missing(outside)  # written marked)
            if missing:
                raise _missing_after(docs, missing)
        # an item repeating an earlier item's dedup key gets that item's job: only the first is
        # sent (sent together, a repeat was resolved after the insert by who held the key then,
        # and got a job of its own when the first had already ended)
        repeats = keyed_once(docs)
        sent = [i for i in range(len(docs)) if i not in repeats]
        got: dict[int, Doc] = {}

        def as_stored(upto: int) -> list[Doc]:
            return [got[repeats.get(i, i)] for i in range(upto)]

        for start in range(0, len(sent), BATCH):
            part = sent[start : start + BATCH]
            chunk = [docs[i] for i in part]
            try:
                landed = await self.storage.producer.run(
                    lambda retried, chunk=chunk: self.storage.jobs.insert_many(  # type: ignore[misc]
                        chunk, self._skipped_expiry, retried=retried
                    )
                )
            except DatabaseUnreachableError as exc:
                if start:  # earlier chunks are written: say which, a blind retry would repeat them
                    written = [Job.read(d) for d in as_stored(part[0])]
                    error = _partly_written(exc, written, part[0])
                    error.remaining = remaining_items(list(items), docs, part[0])
                    raise error from exc
                raise
            got.update(zip(part, landed, strict=True))
        stored = as_stored(len(docs))
        waited = [ObjectId(a) for a in sorted({a for d in stored for a in d.get("after") or []})]
        mine = {d["_id"] for d in docs}  # written by this call (not a dedup key's job)
        waiting = {
            d["_id"]: [ObjectId(a) for a in d["after"]]
            for d in stored
            if d["_id"] in mine and d.get("after") and d.get("status") == S.WAITING.value
        }
        ids = list(dict.fromkeys(d["_id"] for d in stored))
        if waited and await self._register(waited, ids, waiting):
            stored = await self._as_now(stored)
        jobs = [Job.read(d) for d in stored]
        if jobs:
            created = sum(1 for j, d in zip(jobs, docs, strict=True) if j.id == str(d["_id"]))
            self.log.info("jobs_scheduled", count=len(jobs), created=created)
            self.wake_for(stored)
        return jobs

    def _skipped_expiry(self, doc: Doc) -> dt.datetime | None:
        keep = R.of(self.definitions.get(doc["name"]), self.settings.retention)
        return keep.expires_at(S.SKIPPED, doc["created_at"]) if keep else None

    async def _insert(self, doc: Doc, retried: bool = False) -> Doc:
        """Insert; an exclusive conflict records the job as skipped, kept like a finished one."""
        inserted = await self.storage.jobs.insert(doc, self._skipped_expiry(doc), retried=retried)
        assert inserted is not None  # None only for cron slots, which these are not
        return inserted

    # ---- reading, killing, retrying ------------------------------------------------------------

    async def get_jobs(self, job_ids: Iterable[str | ObjectId]) -> list[Job[Any]]:
        """These jobs, in the order given, in one query (those that do not exist are left
        out): e.g. a flow's children, `job.after`."""
        ids = [object_id(i) for i in id_list(job_ids)]
        found = await self.storage.producer.run(lambda _: self.storage.jobs.get_many(ids))
        by_id = {d["_id"]: d for d in found}
        return [Job.read(by_id[i]) for i in ids if i in by_id]

    async def get_job(self, job_id: str | ObjectId) -> Job[Any]:
        oid = object_id(job_id)
        doc = await self.storage.producer.run(lambda _: self.storage.jobs.get(oid))
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(oid)!r}")
        return Job.read(doc)

    @keywords_checked
    async def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Job[Any]]:
        """Most recent first, at most `limit` (a positive integer up to 2**63 - 1). `status`
        is one of the JobStatus values."""
        wanted = parse_status(status) if status is not None else None
        if name is not None and not isinstance(name, str):  # a dict would be query operators
            raise InvalidArgumentError(f"name must be a job name (a str) or None, got {name!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= INT64_MAX:
            raise InvalidArgumentError(
                f"limit must be a positive integer (at most 2**63 - 1), got {limit!r:.60}"
            )
        docs = await self.storage.producer.run(
            lambda _: self.storage.jobs.find(name, wanted, limit)
        )
        return [Job.read(d) for d in docs]

    async def kill_job(self, job_id: str | ObjectId) -> Job[Any]:
        """Kill a job from any process. Pending/paused jobs are killed at once (this process
        calls on_job_exited; a JobClient leaves it to a worker); a running job's handler gets
        the abort signal (reason "killed") on whichever process runs it."""
        oid = object_id(job_id)
        # None: a worker's sweep settles the exit, even for a name with no on_job_exited: only a
        # worker knows the retention (expires_at) that the record of the exit writes
        writer = self.identity if self.hooks_here else None
        with self.hooks.pending(oid):  # a hook this kill owes is called below, not swept
            return await self._kill(oid, writer)

    async def _kill(self, oid: ObjectId, writer: str | None) -> Job[Any]:
        kill_id = D.new_id()  # a kill retried after a lost reply recognises its own write
        outcome, doc = await self.storage.producer.run(
            lambda retried: self.storage.jobs.kill(
                oid, self.clock.now(), writer, kill_id=kill_id, retried=retried
            )
        )
        fields = {"job_id": str(doc["_id"]), "job_name": doc.get("name")}
        if self.worker_id:  # a process with a worker (a JobClient or a web app has none)
            fields["worker_id"] = self.worker_id
        if outcome == "killed":
            self.log.info("job_killed", **fields)
            await self.flows.ended(doc)  # the jobs waiting on it
            if self.hooks_here:
                await self.hooks.after_write(self.definitions.get(str(doc.get("name"))), doc)
        elif outcome == "requested":
            self.log.info("job_kill_requested", running_on=doc.get("worker_id"), **fields)
            self.worker.abort(str(doc["_id"]), "killed")  # at once when it runs in this process
        return Job.read(doc)

    async def retry_job(self, job_id: str | ObjectId) -> Job[Any]:
        """Re-queue an errored or killed job now, keeping its history and checkpoint; its
        attempts count afresh. Its next exit calls on_job_exited again. If the hook of the exit
        being retried has not run yet, it is settled first (run here, or waited for while the
        process that owns it runs it; a JobClient waits for a worker to run it)."""
        oid = object_id(job_id)
        produce = self.storage.producer.run
        stored = await produce(lambda _: self.storage.jobs.get(oid))
        if stored is None:
            raise JobNotFoundError(f"no job with id {str(oid)!r}")
        formal = None  # the owed exit, when this process records it as a formality (no expiry)
        if stored.get("exit_hook") == "owed" and stored.get("status") in RETRYABLE:
            formal = None if self.hooks_here else stored
            stored = await self._settle_hook(stored) or stored
        try:
            return await self._retry_settled(oid, stored)
        except BaseException:  # a refusal, an outage, Ctrl-C (a JobClient's KeyboardInterrupt)
            if formal is not None:  # not retried: owed again, a worker records it with its expiry
                owed = formal
                await produce(lambda _: self.storage.jobs.hook_owed_again(owed))
            raise

    async def _retry_settled(self, oid: ObjectId, stored: Doc) -> Job[Any]:
        produce = self.storage.producer.run
        name = str(stored["name"])
        if stored.get("status") in RETRYABLE and not await produce(
            lambda _: self.storage.events.hold_for_retry(stored.get("event_id"), self.clock.now())
        ):
            raise JobProcessorError(
                f"job {name!r} {oid}: its event {stored.get('event_id')} is gone (keep_events): "
                "there is nothing left to deliver"
            )
        exclusive = await self._exclusive_of(name)
        retry_id = D.new_id()
        try:
            doc = await produce(
                lambda retried: self.storage.jobs.retry(
                    oid, self.clock.now(), exclusive, retry_id=retry_id, retried=retried
                )
            )
        except DuplicateKeyError:
            holder = await produce(lambda _: self.storage.jobs.key_holder(stored, exclusive))
            raise JobProcessorError(
                f"job {name!r} {oid}: cannot retry while {holder}; retry it later"
            ) from None
        if doc is None:
            why = retry_refusal(await produce(lambda _: self.storage.jobs.get(oid)))
            raise JobProcessorError(f"job {name!r} {oid}: {why}")
        job = Job.read(doc)
        self.log.info("job_retried", job_id=job.id, job_name=job.name)
        if self.started and job.name in self.worker.names:
            self.worker.expect(job.name)
            self.worker.wake.set()
        return job

    async def _exclusive_of(self, name: str) -> bool:
        """Whether the name is exclusive: its definition here, else as the workers that define
        it registered it (a job row, or a cron's), read now: a process that does not define it
        (a web app with jobs of its own) restores its exclusive key on a retry all the same."""
        definition = self.definitions.get(name)
        if definition is not None:
            return definition.concurrency == "exclusive"
        rows = await self.storage.producer.run(lambda _: self._registered(name))
        return any(row.get("concurrency") == "exclusive" for row in rows)

    async def _registered(self, name: str) -> list[Doc]:
        row = await self.storage.definitions.get(name)
        crons = await self.storage.crons.docs([name])
        return [r for r in (row, *crons) if r is not None]

    async def _has_hook(self, name: str) -> bool | None:
        """Whether jobs of this name have an on_job_exited (None: not known here)."""
        definition = self.definitions.get(name)
        if definition is not None:
            return definition.on_job_exited is not None
        if self.open_names:
            has = (await self._registry_rows()).get(name, {}).get("has_exit_hook")
            return has if isinstance(has, bool) else None
        return None

    async def _settle_hook(self, stored: Doc) -> Doc | None:
        """The owed hook of the exit being retried: settled here, or waited for (a process
        that does not call hooks, a JobClient in a request thread say, waits up to
        HOOK_WAIT seconds for a worker to run it, then the retry is refused saying why; a hook
        the definition does not have is recorded as settled at once)."""
        if self.hooks_here:
            return await self.hooks.settle(stored, self.identity, self.settings.worker_timeout)
        if await self._has_hook(str(stored["name"])) is False:
            await self.storage.producer.run(
                lambda _: self.storage.jobs.hook_ended(
                    stored["_id"], stored["exit_hook_id"], "none", None, self.clock.now(), 0
                )
            )
            return await self.storage.producer.run(lambda _: self.storage.jobs.get(stored["_id"]))
        if self.storage.producer.sync and _in_event_loop():
            raise JobProcessorError(
                f"job {stored.get('name')!r} {stored['_id']}: its on_job_exited for the "
                f"{stored.get('status')} exit has not run yet, and JobClient.retry_job was "
                "called in a thread running an asyncio event loop: waiting for a worker to run "
                f"it (up to {HOOK_WAIT:g}s) would block the loop, and a worker running in it; "
                "use the async API (`await processor.retry_job(...)`) or run the call in a "
                "thread (`await asyncio.to_thread(jobs.retry_job, ...)`)"
            )
        pacing = WaitPacing()
        give_up = time.monotonic() + HOOK_WAIT
        current: Doc | None = stored
        while current is not None and current.get("exit_hook") == "owed":
            now = time.monotonic()
            if now >= give_up:
                return current
            await self.storage.producer.pause(pacing.next_read(now) - now)
            current = await self.storage.producer.run(
                lambda _: self.storage.jobs.get(stored["_id"])
            )
        return current


#: How long a retry made where hooks are not called waits for a worker to run the owed hook of
#: the exit it retries, before it is refused (with why): a request thread is not held longer.
HOOK_WAIT = 10.0


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (a JobClient call from an `async def` function)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _missing_after(docs: list[Doc], missing: list[ObjectId]) -> JobNotFoundError:
    """The first item of a batch that waits on a job that does not exist, named."""
    index, doc = next(
        (i, d) for i, d in enumerate(docs) if set(d.get("after") or ()) & set(map(str, missing))
    )
    named = [str(m) for m in missing if str(m) in (doc.get("after") or ())]
    return JobNotFoundError(
        f"item {index}: job {doc['name']!r}: after names jobs that do not exist: "
        f"{', '.join(named)} (a job can only wait on jobs scheduled before it)"
    )


def _partly_written(
    exc: DatabaseUnreachableError, written: list[Job[Any]], failed_at: int
) -> DatabaseUnreachableError:
    """A batch of more than 1,000 jobs cut by an outage: the error carries what was written."""
    error = DatabaseUnreachableError(
        f"{exc} Items 0 to {failed_at - 1} of the batch were written (error.written holds "
        f"their jobs); items from {failed_at} on (error.failed_at) may be partly written: "
        "check them (for example by dedup key) before scheduling them again (error.remaining: "
        "those items, their after= naming the jobs written)"
    )
    error.written, error.failed_at = written, failed_at
    return error


__all__ = ["BATCH", "HOOK_WAIT", "STREAM_WAITERS", "JobsAPI"]
