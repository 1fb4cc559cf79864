"""What every admin area shares: the storage, the clock, the actor, the audit record of each
action, the registry read, and the redaction of sensitive fields in every job returned."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, TypeVar

from bson import ObjectId
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from ...core import documents as D
from ...core import event_documents as E
from ...core.clock import Clock, SystemClock, check_window
from ...core.commands import command
from ...core.coverage import DEFAULT_WORKER_TIMEOUT, worker_alive
from ...core.errors import (
    InvalidArgumentError,
    JobNotFoundError,
    JobProcessorError,
    UnknownJobError,
    did_you_mean,
)
from ...core.lenient import read_leniently, texts, unreadable_texts
from ...core.log import EventLog, make_log
from ...core.masking import (
    hide_every_text,
    hide_in_texts,
    redact,
    redact_any,
    scrub,
    sensitive_list,
    values_at,
)
from ...core.models import NOT_A_DOCUMENT, Job
from ...core.notes import storable_text
from ...core.status import JobStatus, parse_status
from ...storage import JobQuery, Storage
from ...storage.audit import entry_id as audit_entry_id
from .inputs import check_options, default_actor, one_id, parse_time
from .results import ActionResult, WorkerView

S = JobStatus
Doc = dict[str, Any]
M = TypeVar("M", bound=BaseModel)


#: Where a name the registry lacks comes from (the registry is what operators' tools know).
REGISTERED_BY = (
    "a worker's init_job_processor(jobs={...}) and start that worker (a name is registered "
    "when a worker that defines it starts)"
)

#: The stored jobs' tags an unknown tag's did-you-mean reads at most (one index seek each).
TAGS_READ = 1000

#: What is shown of a job whose definition's `sensitive_fields` no reader can read.
SENSITIVE_UNREADABLE = (
    "hidden: its definition's sensitive_fields is stored as neither a list nor a text"
)


class AdminBase:
    """Operator verbs on one job-processor database (see the module docstring).

    db: an async database (pymongo AsyncDatabase, motor, mongomock-motor).
    collection_prefix: the prefix given to init_job_processor.
    clock: injectable (FakeClock in tests).
    actor: recorded in the audit log when an action gives none (default "user@host").
    worker_timeout: liveness threshold for worker documents that do not record their own.
    logger: structlog or stdlib logger (default structlog "job_processor").
    sensitive_fields: payload / checkpoint keys (dotted paths) never shown for any job, on top of
    each definition's own `JobDef(sensitive_fields=...)` (read from the registry): a list of
    them (a lone text is refused, never read as its characters). Every Job this class returns
    is redacted; actions work on the stored values.
    """

    def __init__(
        self,
        db: Any,
        collection_prefix: str = "job_processor_",
        clock: Clock | None = None,
        *,
        actor: str | None = None,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
        logger: Any | None = None,
        sensitive_fields: Sequence[str] = (),
        storage: Storage | None = None,
    ) -> None:
        check_options(collection_prefix, clock, worker_timeout)
        self.sensitive_fields = sensitive_list(sensitive_fields, paths=True)
        self.storage = storage or Storage(db, collection_prefix)
        self.clock = clock or SystemClock()
        if actor is not None and not isinstance(actor, str):  # not 0 or b"" for the default
            raise InvalidArgumentError(f"actor must be text, got {actor!r:.60}")
        self.actor = actor or default_actor()
        self.worker_timeout = worker_timeout
        self.log: EventLog = make_log(logger)

    @classmethod
    async def open(
        cls,
        db: Any,
        collection_prefix: str = "job_processor_",
        clock: Clock | None = None,
        **kw: Any,
    ) -> Self:
        """Like the constructor, after detecting the server (nx-27017 and mongomock need a few
        workarounds). Does not create indexes or touch definitions."""
        check_options(collection_prefix, clock, kw.get("worker_timeout", DEFAULT_WORKER_TIMEOUT))
        storage = await Storage.open(db, collection_prefix)
        return cls(db, collection_prefix, clock, storage=storage, **kw)

    def _query(
        self,
        name: str | None,
        status: str | JobStatus | None,
        tag: str | None,
        key: str | None,
        created_after: str | dt.datetime | None,
        created_before: str | dt.datetime | None,
    ) -> JobQuery:
        for field, value in (("name", name), ("tag", tag), ("key", key)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"{field} must be text, got {value!r}")
        after = parse_time(created_after, "created_after")
        before = parse_time(created_before, "created_before")
        check_window(after, before, "created_after", "created_before")
        return JobQuery(
            name=name or None,
            status=parse_status(status) if status is not None and status != "" else None,
            tag=tag or None,
            key=key or None,
            created_after=after,
            created_before=before,
        )

    async def _stored_job(self, job_id: str | ObjectId) -> Job[Any]:
        doc = await self.storage.job_admin.by_id(one_id(job_id))
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        return Job.read(doc)

    async def _sensitive_paths(self) -> tuple[dict[str, list[str]], set[str]]:
        """name -> its definition's sensitive paths (one read of the registry), and the names
        whose `sensitive_fields` no reader can read (neither a text nor a list of texts:
        what to hide is unknown, so everything is)."""
        defs = await self.storage.definitions.all()
        paths = {str(d["_id"]): texts(d.get("sensitive_fields")) for d in defs}
        return paths, {str(d["_id"]) for d in defs if unreadable_texts(d.get("sensitive_fields"))}

    async def _redacted(self, jobs: list[Job[Any]]) -> list[Job[Any]]:
        """Hide the sensitive fields (the definitions' and this Admin's) of these jobs."""
        if not jobs:
            return jobs
        per_name, unreadable = await self._sensitive_paths()
        for job in jobs:
            if job.name in unreadable:  # what to hide is unknown: nothing is shown
                job.payload = {"(hidden)": SENSITIVE_UNREADABLE}
                job.state = {"(hidden)": SENSITIVE_UNREADABLE} if job.state is not None else None
                job.invalid_fields = dict.fromkeys(job.invalid_fields, SENSITIVE_UNREADABLE)
                hide_every_text(job, SENSITIVE_UNREADABLE)
                continue
            paths = [*self.sensitive_fields, *per_name.get(job.name, [])]
            if paths:
                odd = job.invalid_fields  # as stored, wrong types: payload or state among them
                hidden = values_at(job.payload, paths) | values_at(job.state, paths)
                hidden |= values_at(odd.get("payload"), paths) | values_at(odd.get("state"), paths)
                if isinstance(job.payload, dict) and list(job.payload) == [NOT_A_DOCUMENT]:
                    raw = job.payload[NOT_A_DOCUMENT]  # stored as a list, say
                    hidden |= values_at(raw, paths)
                    job.payload = {NOT_A_DOCUMENT: redact_any(raw, paths)}
                job.payload = redact(job.payload, paths)
                job.state = redact(job.state, paths)
                if odd:  # the rest (output, history, ...) as text that may quote them
                    job.invalid_fields = {
                        k: redact_any(v, paths) if k in ("payload", "state") else scrub(v, hidden)
                        for k, v in odd.items()
                    }
                hide_in_texts(job, hidden)
        await self._hide_orphan_deliveries(jobs)
        return jobs

    async def _hide_orphan_deliveries(self, jobs: list[Job[Any]]) -> None:
        """A delivery's texts may quote its event's sensitive values, masked by whoever shows
        it from the event (`carried`); once the event is gone (keep_events), what to mask is
        unknown: its texts are hidden (one query, only for deliveries)."""
        events = {job.id: E.delivery_event_id(job.payload) for job in jobs}
        wanted = sorted({e for e in events.values() if e is not None})
        if not wanted:
            return
        present = await self.storage.events.existing(wanted)
        for job in jobs:
            event_id = events[job.id]
            if event_id is not None and event_id not in present:
                hide_every_text(job)

    @staticmethod
    def _no_empty_filter(**filters: str | None) -> None:
        """A bulk action's filter given as "" (a script's unset variable) is refused: as "no
        filter" it would act on every name, tag or key; so is one that is not text (an empty
        list was "no filter" too, a list or a number raised a bare TypeError)."""
        for field, value in filters.items():
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(
                    f"{field} must be text (one {field}), got {value!r:.60}: give one {field}, "
                    f"or leave it out (None) to act on every {field}"
                )
            if value == "":
                raise InvalidArgumentError(
                    f"{field} is empty: give a {field}, or leave it out (None) to act on "
                    f"every {field}"
                )

    async def _check_name(self, name: str | None) -> None:
        """A name filter that matches no registered definition and no job is a typo: say so,
        with the closest known names, instead of "nothing matched"."""
        if not name:
            return
        known = await self._known()
        if name in known or await self.storage.job_admin.page(JobQuery(name=name), None, 1):
            return
        raise UnknownJobError(name, list(known), REGISTERED_BY)

    async def _check_tag(self, tag: str | None) -> None:
        """A tag filter that no definition (nor cron) has, no live worker's worker_tags and
        no job is a typo, as a name is (`_check_name`): said, with the closest known tags."""
        if not tag:
            return
        now = self.clock.now()
        known = {str(d["tag"]) for d in (await self._known()).values() if d.get("tag")}
        for worker in await self.storage.workers.all():
            if worker_alive(worker, now, self.worker_timeout):
                known |= set(texts(worker.get("tags")))
        if tag in known or await self.storage.job_admin.page(JobQuery(tag=tag), None, 1):
            return
        known |= await self.storage.job_admin.stored_tags(TAGS_READ)  # another program's too
        shown = sorted(known)
        listing = ", ".join(shown[:20]) + (
            f", ... ({len(shown)} in all)" if len(shown) > 20 else ""
        )
        raise InvalidArgumentError(
            f"unknown tag {tag!r}{did_you_mean(tag, known)}: no definition, live worker "
            f"(worker_tags) or job has it (known tags: {listing or 'none'})"
        )

    async def _hookless(self) -> frozenset[str]:
        """Names whose registered definition has no on_job_exited (an owed record of one is a
        formality); names the registry does not know are not among them."""
        return frozenset(
            str(d["_id"])
            for d in await self.storage.definitions.all()
            if d.get("has_exit_hook") is False
        )

    async def _workers(self, now: dt.datetime) -> list[WorkerView]:
        running = await self.storage.jobs.running()
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in running:
            by_worker.setdefault(str(r.get("worker_id")), []).append(
                {"id": str(r["_id"]), "name": r["name"], "started_at": r.get("run_started_at")}
            )
        out = []
        for w in await self.storage.workers.all():
            view = self._readable(WorkerView, w, "workers")
            if view is None:
                continue
            view.alive = worker_alive(w, now, self.worker_timeout)
            view.running_jobs = by_worker.get(view.id, [])
            view.seconds_since_heartbeat = max(0.0, (now - view.last_seen).total_seconds())
            out.append(view)
        return sorted(out, key=lambda v: (not v.alive, v.hostname, v.instance_id or "", v.pid))

    def _readable(
        self, model: type[M], doc: Doc, collection: str, fallbacks: Doc | None = None
    ) -> M | None:
        """A stored document read for display (`core.lenient.read_leniently`: a field of the
        wrong type as its default); None, with a warning, when it cannot be read at all."""
        read = read_leniently(model, doc, fallbacks)
        if read is None:
            self.log.warning(
                "unreadable_document_skipped",
                collection=self.storage.prefix + collection,
                id=str(doc.get("_id")),
            )
        return read

    async def _known(self) -> dict[str, Doc]:
        """name -> registry document (and crons registered by init_job_processor)."""
        known: dict[str, Doc] = {}
        for doc in await self.storage.crons.docs():
            known[str(doc["_id"])] = {"kind": "cron", **doc}
        for doc in await self.storage.definitions.all():
            known[str(doc["_id"])] = {**known.get(str(doc["_id"]), {}), **doc}
        return known

    async def _counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for status in S:
            for name, n in (await self.storage.jobs.counts_by_name(status)).items():
                counts.setdefault(name, {})[status.value] = n
        return counts

    @contextlib.asynccontextmanager
    async def _acting(self, result: ActionResult) -> AsyncIterator[None]:
        """Around an action's writes, one job after another: when an error (an outage) or a
        cancellation (Ctrl-C in the CLI) stops it after it changed some, what it did is still
        recorded, with why, before the error goes on (the audit log never misses a change)."""
        try:
            yield
        except (Exception, asyncio.CancelledError) as exc:
            if result.changed or result.count:  # ids, or a purge's count
                why = (
                    "cancelled (Ctrl-C, or its caller stopped waiting)"
                    if isinstance(exc, asyncio.CancelledError)
                    else f"{type(exc).__name__}: {exc}"
                )
                with contextlib.suppress(Exception):
                    await self._record(result, {"interrupted": why})
            raise

    async def _note_paused(self, result: ActionResult, names: set[str]) -> None:
        """`detail["paused"]`: the names of the jobs this action queued that are paused (no
        worker claims them until they are resumed), said by the CLI and the dashboard."""
        if names:
            try:  # advice, after the action: an outage past the budget leaves it out
                known = await self.storage.producer.run(lambda _: self.storage.paused.names())
            except (PyMongoError, JobProcessorError):
                return
            paused = sorted(names & set(known))
            if paused:
                result.detail["paused"] = paused

    async def _record(self, result: ActionResult, detail: dict[str, Any] | None = None) -> None:
        """The audit entry first, then the jobs returned redacted: every read and write after
        the action rides out a short outage (it is never reported failed with no record)."""
        result.count = result.count or len(result.changed)
        if detail:
            result.detail |= detail
        if result.skipped:  # why nothing happened to these: never an empty record
            result.detail.setdefault("skipped", dict(list(result.skipped.items())[:20]))
        entry = {
            "at": result.at,
            "actor": result.actor,
            "action": result.action,
            "ids": result.changed,
            "count": result.count,
            "skipped": len(result.skipped),
            "detail": result.detail,
        }
        entry_id = audit_entry_id(result.at)  # chosen once: a lost reply's retry records once
        # a short outage after the action is ridden out: it is never reported failed, with no
        # record, once it was done
        await self.storage.producer.run(
            lambda retried: self.storage.audit.record(entry, entry_id=entry_id, retried=retried)
        )
        jobs = result.jobs
        result.jobs = await self.storage.producer.run(lambda _: self._redacted(jobs))
        self.log.info(
            result.action,
            actor=result.actor,
            ids=result.changed[:20],
            count=result.count,
            skipped=len(result.skipped),
            via="admin",
            **{k: v for k, v in result.detail.items() if isinstance(v, str | int | float)},
        )

    def _result(self, action: str, actor: str | None) -> ActionResult:
        """Made before the action acts: an actor that is not text is refused then; one that
        holds a lone surrogate (a non-UTF-8 byte of $USER or argv) is kept as its escape, so
        the audit record of a done action is written."""
        who = self.actor if actor is None or actor == "" else actor  # 0 or b"" are refused
        if not isinstance(who, str):
            raise InvalidArgumentError(f"actor must be text, got {who!r:.60}")
        return ActionResult(action=action, actor=storable_text(who), at=self.clock.now())

    async def _exclusive(self, name: str) -> bool:
        for doc in (
            await self.storage.definitions.get(name),
            *await self.storage.crons.docs([name]),
        ):
            if doc is not None and doc.get("concurrency") is not None:
                return str(doc["concurrency"]) == "exclusive"
        return False

    async def _definition(self, name: str) -> Doc:
        known = await self._known()
        if name not in known:
            deliveries = await self._subscriber_jobs()
            jobs = [
                n
                for n, d in known.items()
                if d.get("kind", "job") == "job" and not E.is_delivery(n, d, deliveries)
            ]
            raise UnknownJobError(name, jobs, REGISTERED_BY)
        return known[name]

    async def _subscriber_jobs(self) -> set[str]:
        """The job names of the registered subscribers' deliveries."""
        return {str(r.get("job_name")) for r in await self.storage.subscribers.all()}

    async def _is_delivery(self, name: str, registered: Doc) -> bool:
        if name == E.WEBHOOK_JOB or "delivery" in registered:
            return E.is_delivery(name, registered)
        return E.is_delivery(name, registered, await self._subscriber_jobs())

    async def _insert(self, result: ActionResult, doc: Doc) -> None:
        """A short outage is ridden out as a producer's is, and a retried insert whose first
        reply was lost is recognised (by the `_id` chosen here): never two jobs for one."""
        inserted = await self.storage.producer.run(
            lambda retried: self.storage.jobs.insert(doc, retried=retried)
        )
        assert inserted is not None  # None only for scheduled cron slots
        job = Job.read(inserted)
        result.jobs.append(job)
        if job.status == S.SKIPPED:  # recorded as skipped, with a new id
            result.skipped[job.id] = (
                f"skipped: {job.name!r} is exclusive and job {job.conflicting_job_id} is active"
            )
        elif inserted["_id"] != doc["_id"]:
            result.skipped[job.id] = f"deduplicated: job {job.id} with key {job.key!r} is active"
        else:
            result.changed.append(job.id)

    async def _trigger(self, name: str, actor: str | None, action: str) -> ActionResult:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"name must be a cron name (see crons list), got {name!r:.60}"
            )
        docs = await self.storage.crons.docs([name])
        if not docs:
            registered = (await self._known()).get(name)
            if registered is not None and await self._is_delivery(name, registered):
                raise InvalidArgumentError(
                    f"{name!r} is an event delivery, not a cron: to deliver an event again, "
                    "replay it (job-processor events replay ID)"
                )
            if (registered or {}).get("kind", "cron") == "job":
                raise InvalidArgumentError(
                    f"{name!r} is a job, not a cron: schedule one with new_job({name!r}) "
                    f"({command('jobs new', name)})"
                )
            known = sorted(str(d["_id"]) for d in await self.storage.crons.docs())
            raise UnknownJobError.for_cron(name, known)
        cron = docs[0]
        result = self._result(action, actor)
        doc = D.manual_cron_task(
            name,
            now=result.at,
            tag=cron.get("tag"),
            exclusive=cron.get("concurrency") == "exclusive",
            max_attempts=int(cron.get("max_attempts") or 1),
            resumable=bool(cron.get("resumable", False)),
        )
        doc["created_by"] = result.actor
        await self._insert(result, doc)
        if result.changed:
            await self._note_paused(result, {name})
        return result
