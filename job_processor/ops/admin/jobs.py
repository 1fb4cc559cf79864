"""The admin verbs on jobs: list, show, retry (by id or by filter), kill, run now, delete,
purge, schedule, duplicate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ...core import documents as D
from ...core import flows as F
from ...core import foreign as FD
from ...core.clock import iso_utc
from ...core.commands import command
from ...core.errors import InvalidArgumentError, InvalidPayloadError, JobNotFoundError
from ...core.limit_keys import fill_limit_key
from ...core.models import Job, id_list
from ...core.payload_fields import check_payload_fields
from ...core.retries import RETRYABLE, retry_refusal
from ...core.status import TERMINAL, JobStatus, parse_status
from ...core.values import fits_int64
from ...storage.compat import counted_part
from .base import AdminBase
from .inputs import (
    DEFAULT_LIMIT,
    MAX_BULK,
    check_payload,
    decode_cursor,
    describe_query,
    encode_cursor,
    ids_of,
    limit_of,
    one_id,
    parse_duration,
    parse_time,
)
from .results import ActionResult, JobPage

S = JobStatus
Doc = dict[str, Any]


#: Why a job that jobs wait on (or are being scheduled after) is not deleted yet: they would
#: read it as deleted, a failure.
UNCOUNTED = (
    "jobs scheduled after it are not yet seen to have counted its end (a worker's sweep sees "
    "it within worker_timeout / 2 and 5 s of the end, and at least a minute after a job was "
    "last scheduled after it); delete it after that"
)


#: What acts on more jobs than an action's ids may name (MAX_BULK), by a filter.
_BY_FILTER = {
    "retry": ", or retry them by a filter: retry_many(name=..., status=..., ...)",
    "delete": ", or delete them by a filter: purge(status=..., older_than=..., name=...)",
}


class JobsAdmin(AdminBase):
    async def list_jobs(
        self,
        *,
        name: str | None = None,
        status: str | JobStatus | None = None,
        tag: str | None = None,
        key: str | None = None,
        created_after: str | dt.datetime | None = None,
        created_before: str | dt.datetime | None = None,
        id: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first (created_at, then id), filtered by any of: name, status, tag, dedup
        key, creation time (`created_after` inclusive, `created_before` exclusive; aware
        datetimes or ISO text, UTC when no offset), and `id` (that one job, if it matches the
        other filters). None and empty strings count as "no filter" (another empty value, [] or
        0, is refused as a value of the wrong type). `limit` is capped at 1000.
        `cursor`: the previous page's `next_cursor`."""
        query = self._query(name, status, tag, key, created_after, created_before)
        limit = limit_of(limit)
        # only None and "" are no filter: [] or 0 is refused, never read as "every job"
        if id is not None and id != "":
            oid = one_id(id)
            doc = await self.storage.job_admin.by_id(oid)
            jobs = [Job.read(doc)] if doc is not None and query.matches(doc) else []
            return JobPage(jobs=await self._redacted(jobs))
        after = decode_cursor(cursor) if cursor is not None and cursor != "" else None
        docs = await self.storage.job_admin.page(query, after, limit + 1)
        if not docs and after is None:
            await self._check_name(query.name)  # a typo is named, with a did-you-mean
            await self._check_tag(query.tag)
        more = len(docs) > limit
        docs = docs[:limit]
        return JobPage(
            jobs=await self._redacted([Job.read(d) for d in docs]),
            next_cursor=encode_cursor(docs[-1]) if more and docs else None,
        )

    async def get_job(self, job_id: str | ObjectId) -> Job[Any]:
        """One job: payload, output (result, error with traceback), history of runs, checkpoint
        (`state`), timestamps, worker, on_job_exited record (`exit_hook`)."""
        [job] = await self._redacted([await self._stored_job(job_id)])
        return job

    async def carried(self, jobs: Sequence[Job[Any]]) -> dict[str, Any]:
        """The payload of the event each delivery job among `jobs` carries, by job id (one
        query): a subscriber's result or error may echo it, so whoever shows the job masks the
        event's sensitive values too (`mask_job(masker, job, carried[job.id])`)."""
        wanted: dict[str, ObjectId] = {}
        for job in jobs:
            event_id = job.payload.get("event_id") if isinstance(job.payload, dict) else None
            if isinstance(event_id, str) and ObjectId.is_valid(event_id):
                wanted[job.id] = ObjectId(event_id)
        if not wanted:
            return {}
        payloads = await self.storage.events.payloads(sorted(set(wanted.values())))
        return {jid: payloads[eid] for jid, eid in wanted.items() if eid in payloads}

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job[Any]]:
        """These jobs, in the order given (those that do not exist are left out)."""
        ids = ids_of(id_list(job_ids), empty_ok=True)
        by_id = {d["_id"]: d for d in await self.storage.jobs.get_many(ids)}
        return await self._redacted([Job.read(by_id[i]) for i in ids if i in by_id])

    async def dependents(self, job_id: str | ObjectId, limit: int = 100) -> list[Job[Any]]:
        """The jobs scheduled after this one (`after=[...]`), newest first: at most `limit` (a
        positive integer, capped at 1000)."""
        oid = one_id(job_id)
        docs = await self.storage.jobs.dependents_of(oid, limit_of(limit))
        return await self._redacted([Job.read(d) for d in docs])

    async def count_dependents(self, job_id: str | ObjectId) -> int:
        """How many jobs were scheduled after this one."""
        oid = one_id(job_id)
        return await self.storage.jobs.count_dependents(oid)

    async def retry(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """errored | killed -> pending now, keeping history and checkpoint (attempts count
        afresh). At most MAX_BULK (10,000) ids, as for kill, run_now and delete: more are refused
        before anything is done (retry_many retries by a filter). Action "jobs_retried"."""
        result = self._result("jobs_retried", actor)
        cache: dict[str, bool] = {}
        hookless = await self._hookless()
        names: set[str] = set()
        oids = ids_of(job_ids, most=MAX_BULK, instead=_BY_FILTER["retry"])
        async with self._acting(result):
            for oid in oids:
                await self._retry_one(oid, result, cache, hookless, names)
        await self._note_paused(result, names)
        await self._record(result)
        return result

    async def _retry_one(
        self,
        oid: ObjectId,
        result: ActionResult,
        cache: dict[str, bool],
        hookless: frozenset[str],
        names: set[str],
        listed: Doc | None = None,
    ) -> None:
        """`listed`: the job as a bulk retry's listing read it: retried only as it was then."""
        current = await self.storage.job_admin.by_id(oid)
        if current is None:
            result.skipped[str(oid)] = "not found"
            return
        if listed is not None and D.run_of(current) != D.run_of(listed):
            result.skipped[str(oid)] = _changed(current)
            return
        name = current["name"]
        held = current.get("status") not in RETRYABLE or await self.storage.events.hold_for_retry(
            current.get("event_id"), self.clock.now()
        )
        if not held:
            result.skipped[str(oid)] = "its event is gone (keep_events): nothing left to deliver"
            return
        if name not in cache:
            cache[name] = await self._exclusive(name)
        formality = current.get("exit_hook") == "owed" and name in hookless
        if formality:
            # a kill recorded the hook as owed, but the definition has none: nothing to wait for
            await self.storage.jobs.hook_ended(
                oid, current["exit_hook_id"], "none", None, self.clock.now(), budget=5.0
            )
        doc = refused = None
        try:
            doc = await self.storage.jobs.retry(oid, self.clock.now(), cache[name], expect=listed)
        except DuplicateKeyError:
            holder = await self.storage.jobs.key_holder(current, cache[name])
            refused = f"{holder}: retry it later"
        except JobNotFoundError:
            refused = "not found"
        except BaseException:  # an outage, a cancellation (Ctrl-C): maybe not retried
            if formality:
                await self.storage.jobs.hook_owed_again(current)  # unless it was
            raise
        if doc is None and formality:  # not retried: a worker records the exit, with its expiry
            await self.storage.jobs.hook_owed_again(current)
        if refused is not None:
            result.skipped[str(oid)] = refused
            return
        if doc is None:
            now = await self.storage.job_admin.by_id(oid)
            moved = listed is not None and now is not None and D.run_of(now) != D.run_of(listed)
            result.skipped[str(oid)] = _changed(now) if moved else retry_refusal(now)
            return
        result.changed.append(str(oid))
        names.add(str(name))
        if len(result.jobs) < 100:
            result.jobs.append(Job.read(doc))

    async def retry_many(
        self,
        *,
        name: str | None = None,
        status: str | JobStatus = S.ERRORED,
        tag: str | None = None,
        key: str | None = None,
        created_after: str | dt.datetime | None = None,
        created_before: str | dt.datetime | None = None,
        limit: int = MAX_BULK,
        actor: str | None = None,
    ) -> ActionResult:
        """Retry every job matching the filter (status errored by default, or killed), at most
        `limit` (capped at 10,000), newest first (those without a creation time, bare inserts
        of another program, after the dated ones, in no set order). Action "jobs_retried"."""
        self._no_empty_filter(name=name, tag=tag, key=key)
        query = self._query(name, status, tag, key, created_after, created_before)
        await self._check_name(query.name)
        await self._check_tag(query.tag)
        if query.status not in (S.ERRORED, S.KILLED):
            raise InvalidArgumentError(
                f"status must be errored or killed to retry, got {query.status}"
            )
        limit = limit_of(limit, most=MAX_BULK)
        result = self._result("jobs_retried", actor)
        cache: dict[str, bool] = {}
        hookless = await self._hookless()
        names: set[str] = set()
        after = None
        seen = 0
        done: list[Any] = []  # the jobs the dated pass tried
        async with self._acting(result):
            while seen < limit:
                docs = await self.storage.job_admin.page(query, after, min(500, limit - seen))
                if not docs:
                    break
                # undated jobs (bare inserts) sort last and no creation-time position reaches
                # them (it raised KeyError): they are retried below, by _id
                dated = [d for d in docs if d.get("created_at") is not None]
                for doc in dated:
                    done.append(doc["_id"])
                    await self._retry_one(doc["_id"], result, cache, hookless, names, doc)
                seen += len(dated)
                if len(dated) < len(docs) or not dated:
                    break
                after = (dated[-1]["created_at"], dated[-1]["_id"])
            # then the rest no position reached: undated, or dated as another program wrote
            # it (text sorts after every date), each once (a skipped one stays in the filter)
            tried: list[Any] = list(done)
            while seen < limit:
                docs = await self.storage.job_admin.untried(query, tried, min(500, limit - seen))
                if not docs:
                    break
                for doc in docs:
                    tried.append(doc["_id"])
                    await self._retry_one(doc["_id"], result, cache, hookless, names, doc)
                seen += len(docs)
        result.jobs = result.jobs[:20]
        await self._note_paused(result, names)
        await self._record(result, {"filter": describe_query(query)})
        return result

    async def kill(
        self,
        job_ids: str | Sequence[str],
        *,
        actor: str | None = None,
        seen_attempt: int | None = None,
    ) -> ActionResult:
        """Pending / paused -> killed at once; running -> kill requested (its worker aborts the
        handler within about one poll interval: the job stays running until then, and `changed`
        lists it with detail["requested"]). Ended jobs are skipped. The job's on_job_exited is
        recorded as owed and called by the next sweep of a worker that defines the job. The jobs
        waiting on a killed job count it at once (skipped, errored or released by their policy).
        `seen_attempt`: the run the caller decided on (`job.attempt` as it was shown); a job
        that has started another since is skipped, saying so (in the kill's own filter: a
        claim landing meanwhile is never killed in its place). At most MAX_BULK (10,000) ids.
        Action "jobs_killed"."""
        if seen_attempt is not None and (
            not isinstance(seen_attempt, int)
            or isinstance(seen_attempt, bool)
            or seen_attempt < 0
            or not fits_int64(seen_attempt)
        ):
            raise InvalidArgumentError(
                f"seen_attempt must be an attempt number (an integer from 0 to 2**63 - 1: the "
                f"job's attempt as it was shown), got {seen_attempt!r:.60}"
            )
        result = self._result("jobs_killed", actor)
        requested: list[str] = []
        oids = ids_of(job_ids, most=MAX_BULK)
        async with self._acting(result):
            for oid in oids:
                try:
                    what, doc = await self.storage.jobs.kill(
                        oid, self.clock.now(), None, attempt=seen_attempt
                    )
                except JobNotFoundError:
                    result.skipped[str(oid)] = "not found"
                    continue
                if what == "ended":
                    result.skipped[str(oid)] = f"already ended ({stored_status(doc)})"
                elif what == "moved":
                    result.skipped[str(oid)] = (
                        f"it has started another run since the confirmation was shown (attempt "
                        f"{doc.get('attempt')}, {stored_status(doc)}); kill it again if you still "
                        "mean to"
                    )
                else:
                    result.changed.append(str(oid))
                    if what == "requested":
                        requested.append(str(oid))
                    elif doc.get("has_dependents"):  # its dependents see a killed dependency
                        now = self.clock.now()
                        await self.storage.jobs.settle_dependents(oid, S.KILLED.value, now)
                result.jobs.append(Job.read(doc))
        await self._record(result, {"requested": requested} if requested else None)
        return result

    async def run_now(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """A pending job scheduled for later becomes due now (its scheduled_for is set to now);
        jobs already due or not pending are skipped. At most MAX_BULK (10,000) ids. Action
        "jobs_run_now"."""
        result = self._result("jobs_run_now", actor)
        names: set[str] = set()
        oids = ids_of(job_ids, most=MAX_BULK)
        async with self._acting(result):
            for oid in oids:
                doc = await self.storage.job_admin.run_now(oid, self.clock.now())
                if doc is not None:
                    result.changed.append(str(oid))
                    result.jobs.append(Job.read(doc))
                    names.add(str(doc.get("name")))
                    continue
                current = await self.storage.job_admin.by_id(oid)
                if current is None:
                    result.skipped[str(oid)] = "not found"
                elif current.get("status") == S.PENDING.value or is_minimal(current):
                    due = current.get("due_ms")
                    number = isinstance(due, int | float) and not isinstance(due, bool)
                    result.skipped[str(oid)] = "already due" if number else FD.undue(due)
                elif current.get("status") is None:
                    result.skipped[str(oid)] = (
                        "a bare insert, pending once a worker adopts it (within a minute of its "
                        "insert): run it now then"
                    )
                else:
                    why = f"{stored_status(current)}: only pending jobs can be run now"
                    result.skipped[str(oid)] = why
        await self._note_paused(result, names)
        await self._record(result)
        return result

    async def delete(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """Delete ended jobs (finished, errored, killed, skipped). Active jobs (pending,
        running, paused) are refused: kill them first; so are jobs whose on_job_exited has not
        run yet (it would be lost): a worker runs it shortly; and jobs that jobs scheduled
        after them are not yet seen to have counted (`UNCOUNTED`). At most MAX_BULK (10,000)
        ids (purge deletes by a filter). Action "jobs_deleted"."""
        result = self._result("jobs_deleted", actor)
        oids = ids_of(job_ids, most=MAX_BULK, instead=_BY_FILTER["delete"])
        hookless = await self._hookless()
        async with self._acting(result):
            for oid in oids:
                if await self.storage.jobs.has_waiting_dependents(oid):
                    result.skipped[str(oid)] = UNCOUNTED
                    continue
                doc = await self.storage.job_admin.delete_ended(oid, hookless)
                if doc is not None:
                    result.changed.append(str(oid))
                    continue
                current = await self.storage.job_admin.by_id(oid)
                if current is None:
                    why = "not found"
                elif current.get("status") not in {s.value for s in JobStatus}:
                    why = (
                        f"{stored_status(current)}: not a status of this version (another "
                        "program's, or a newer version's active job): change it in the database"
                    )
                elif current.get("status") not in {s.value for s in TERMINAL}:
                    why = f"{stored_status(current)}: active jobs are not deleted (kill it first)"
                elif counted_part(current) is None:  # scheduled after it meanwhile
                    why = UNCOUNTED
                elif current["name"] in await self._known():
                    why = (
                        f"{current['status']}: its on_job_exited has not run yet (a worker that "
                        f"defines {current['name']!r} runs it shortly); delete it after that"
                    )
                else:
                    why = (
                        f"{current['status']}: its on_job_exited has not run yet, and no worker "
                        f"has defined {current['name']!r} (a typo?): a worker that defines it runs "
                        "it; if none does within unknown_name_grace (1 h by default), a worker's "
                        "sweep gives it up; delete it after that"
                    )
                result.skipped[str(oid)] = why
        await self._record(result)
        return result

    async def purge(
        self,
        *,
        status: str | JobStatus,
        older_than: str | dt.timedelta | float,
        name: str | None = None,
        actor: str | None = None,
    ) -> ActionResult:
        """Delete the jobs of an ended status (finished, errored, killed, skipped) that ended
        more than `older_than` ago ("7d", "12h", a timedelta, or seconds), optionally of one
        name (a str; "" or another type is refused: as "no name" it would purge every name).
        Active statuses are refused, and jobs whose on_job_exited has not run yet are
        kept (`detail["kept_owing_hook"]` counts them: a worker runs their hooks shortly).
        Action "jobs_purged" (with the count)."""
        wanted = parse_status(status)
        if wanted not in TERMINAL:
            raise InvalidArgumentError(
                f"status {wanted.value} is active: only finished, errored, killed or skipped "
                "jobs can be purged"
            )
        age = parse_duration(older_than)
        self._no_empty_filter(name=name)
        await self._check_name(name)
        result = self._result("jobs_purged", actor)
        cutoff = result.at - age
        detail: dict[str, Any] = {
            "status": wanted.value,
            "ended_before": iso_utc(cutoff),
            "name": name or "",
        }
        result.detail |= detail  # said in the record of a purge the reads below interrupt
        hookless = await self._hookless()

        def deleted(n: int) -> None:  # counted as each delete returns: an interrupted
            result.count += n  # purge's audit entry says what the earlier ones deleted

        async with self._acting(result):
            await self.storage.job_admin.purge(wanted, cutoff, name or None, hookless, deleted)
            kept = sum(
                (await self.storage.job_admin.owing_hooks(wanted, cutoff, name or None)).values()
            )
            held = await self.storage.job_admin.uncounted_dependencies(wanted, cutoff, name or None)
        if kept:
            detail["kept_owing_hook"] = kept
            result.skipped[f"{kept} job(s)"] = (
                "kept: their on_job_exited has not run yet (a worker runs it shortly)"
            )
        if held:
            detail["kept_uncounted_dependents"] = held
            result.skipped[f"{held} job(s) waited on"] = (
                "kept: jobs scheduled after them are not yet seen to have counted their end (a "
                "worker's sweep sees it within worker_timeout / 2); purge again after that"
            )
        await self._record(result, detail)
        return result

    async def new_job(
        self,
        name: str,
        payload: str | Mapping[str, Any] | None = None,
        *,
        scheduled_for: str | dt.datetime | None = None,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
        actor: str | None = None,
    ) -> ActionResult:
        """Schedule a job of a registered name (see list_definitions) with a payload given as
        JSON text or a dict. Of its payload model, if any, this process (which has no models)
        checks what the registry's summary of its fields says (`core.payload_fields`): the
        required ones are given, and no unknown one when the model forbids extras; the rest is
        checked when it runs (a payload that fails it ends the job as errored, saying why). With a
        dedup key held by an active job, nothing is created (`skipped`, and `jobs` holds that
        job). Action "job_created"."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a job name (see list_definitions)")
        produce = self.storage.producer  # its reads ride out a short outage, as its insert
        definition = await produce.run(lambda _: self._definition(name))
        if definition.get("kind") == "cron":
            raise InvalidArgumentError(
                f"{name!r} is a cron, not a job: run a task of it now with trigger_cron({name!r}) "
                f"({command('crons trigger', name)})"
            )
        if await self._is_delivery(name, definition):
            raise InvalidArgumentError(
                f"{name!r} is an event delivery: its jobs are made by emit(); to deliver an "
                "event again, replay it (job-processor events replay ID)"
            )
        body = check_payload(name, payload)
        model = definition.get("payload_model")
        check_payload_fields(name, model, definition.get("payload_fields"), body)
        when = parse_time(scheduled_for, "scheduled_for")
        if not isinstance(priority, int) or isinstance(priority, bool) or not fits_int64(priority):
            raise InvalidArgumentError(
                f"priority must be an integer within 64 bits, got {priority!r}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidArgumentError(f"key must be a non-empty string, got {key!r}")
        attempts = max_attempts if max_attempts is not None else definition.get("max_attempts", 1)
        if (
            not isinstance(attempts, int)
            or isinstance(attempts, bool)
            or attempts < 1
            or not fits_int64(attempts)
        ):
            raise InvalidArgumentError(
                f"max_attempts must be an integer >= 1 within 64 bits, got {attempts!r}"
            )
        try:  # as a producer fills it (docs/scale.md): a payload without the field is refused
            limit_key = _limit_key(definition, body)
        except ValueError as exc:
            raise InvalidPayloadError(f"job {name!r}: {exc}") from None
        result = self._result("job_created", actor)
        doc = D.new_job(
            name,
            body,
            now=result.at,
            scheduled_for=when,
            tag=definition.get("tag"),
            priority=priority,
            exclusive=definition.get("concurrency") == "exclusive",
            key=key,
            max_attempts=attempts,
            resumable=bool(definition.get("resumable", False)),
            limit_key=limit_key,
            extra={"created_by": result.actor},
        )
        # read first: nothing after the insert
        paused = name in await produce.run(lambda _: self.storage.paused.names())
        await self._insert(result, doc)
        if result.changed and paused:
            result.detail["paused"] = [name]  # created, but no worker claims it until resumed
        await self._record(result, {"name": name})
        return result

    async def duplicate(self, job_id: str, *, actor: str | None = None) -> ActionResult:
        """A new pending job with the same name, payload and priority (not the dedup key, which
        would return the original while it is active); a job scheduled after others waits for
        the same ones (those that have ended count at once, by its on_dependency_failure). A
        cron task is duplicated as a manual trigger of its cron. Action "job_duplicated"
        (detail["duplicate_of"] is the original id)."""
        original = await self._stored_job(job_id)  # the stored payload, not the redacted one
        if original.type == "cron_task":
            result = await self._trigger(original.name, actor, "job_duplicated")
        else:
            definition = await self._definition(original.name)
            if await self._is_delivery(original.name, definition):
                raise InvalidArgumentError(
                    f"{original.name!r} is an event delivery: a copy would deliver the event "
                    "again outside a replay; replay the event instead (job-processor events "
                    "replay ID)"
                )
            result = self._result("job_duplicated", actor)
            doc = D.new_job(
                original.name,
                original.payload,
                now=result.at,
                tag=definition.get("tag", original.tag),
                priority=original.priority,
                exclusive=definition.get("concurrency") == "exclusive",
                max_attempts=int(definition.get("max_attempts", original.max_attempts)),
                resumable=bool(definition.get("resumable", False)),
                limit_key=original.limit_key,  # the same payload: the same key
                extra={"created_by": result.actor, "duplicate_of": ObjectId(original.id)},
            )
            if original.after:  # it waits for the same dependencies (those ended count now),
                after = [ObjectId(a) for a in original.after if ObjectId.is_valid(a)]
                doc |= F.waiting_fields(after, original.on_dependency_failure or "skip")
                # those the original counted finished stay so (retention may have deleted
                # them since: a finished dependency never reads as deleted, flows.md)
                kept = {
                    d: s
                    for d, s in (original.deps or {}).items()
                    if d in doc["deps"] and s == S.FINISHED.value
                }
                doc["deps"].update(kept)
                doc["waiting_on"] -= len(kept)
                after = [d for d in after if str(d) not in kept]
                # marked first, as a new job's are: none is deleted before the copy is written
                await self.storage.jobs.mark_dependents(after, result.at)
            await self._insert(result, doc)
            if result.changed:
                await self._note_paused(result, {original.name})
            if result.jobs[-1].status == S.WAITING:
                settled = await self.storage.jobs.count_ended_dependencies(doc, result.at)
                result.jobs[-1] = Job.read(settled)
        await self._record(result, {"duplicate_of": original.id, "name": original.name})
        return result


def _limit_key(definition: dict[str, Any], payload: Any) -> str | None:
    """The key of the definition's limit for this payload ("tenant:acme"), as a producer fills
    it; None when it has no limit. ValueError naming the field the payload lacks."""
    template = definition.get("limit_key")
    return fill_limit_key(template, payload) if isinstance(template, str) else None


def is_minimal(doc: Mapping[str, Any]) -> bool:
    """A job another program inserted as the minimal document (docs/scale.md): claimable as it
    is (`claim_name`), no status until its first claim."""
    return doc.get("status") is None and isinstance(doc.get("claim_name"), str)


def _changed(doc: Mapping[str, Any] | None) -> str:
    """Why a bulk retry leaves a job it listed: it has changed since (retried by someone else,
    run again)."""
    if doc is None:
        return "not found"
    return (
        f"changed since it was listed (now {stored_status(doc)}, attempt "
        f"{doc.get('attempt') or 0}): not retried"
    )


def stored_status(doc: Mapping[str, Any]) -> str:
    """A job document's status as an action's message says it: another program's insert has
    none yet (the minimal document until its first claim, a bare one until it is adopted)."""
    status = doc.get("status")
    if status is not None:
        return str(status)
    if is_minimal(doc):
        return "pending (inserted by another program, not claimed yet)"
    return "a bare insert, pending once a worker adopts it"
