"""Operations on a job-processor database, from the database alone.

No handlers, no app factory, and nothing here ever changes job or cron definitions: the CLI and
the dashboard use this module, and so can your own tools.

    from job_processor.admin import Admin

    admin = await Admin.open(db)                    # db: an async pymongo / motor database
    page = await admin.list_jobs(status="errored", limit=20)
    for job in page.jobs: ...                       # job_processor.Job
    more = await admin.list_jobs(status="errored", cursor=page.next_cursor)
    result = await admin.retry([job.id for job in page.jobs], actor="alice")
    result.done, result.changed, result.skipped     # what happened, per job id

Every result is a pydantic model whose `model_dump(mode="json")` is plain JSON (payloads with
any BSON value included). Every action is compare-and-set on the job (it never overwrites a
change made meanwhile by a worker), returns an `ActionResult` saying which ids changed and why
the others did not, and is recorded in the `<prefix>audit` collection (who, when, what, which
ids) and logged. Bad input raises `InvalidArgumentError` (or `UnknownJobError`,
`JobNotFoundError`, `InvalidPayloadError`) whose message names the field and the fix.

Every listing is served by an index (see `storage/admin.py`); pages continue with an opaque
cursor token, never with `skip`.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import bson
from bson import ObjectId
from pydantic import BaseModel, ConfigDict
from pymongo.errors import DuplicateKeyError

from . import documents as D
from .clock import Clock, SystemClock, as_utc, to_millis
from .crons import Schedule
from .errors import (
    InvalidArgumentError,
    InvalidPayloadError,
    JobNotFoundError,
    UnknownJobError,
)
from .log import EventLog, make_log
from .masking import MIN_SECRET_LENGTH
from .models import (
    NOT_A_DOCUMENT,
    TERMINAL,
    Job,
    JobStatus,
    ProcessorStatus,
    WorkerInfo,
    parse_status,
)
from .registry import DEFAULT_WORKER_TIMEOUT, coverage, worker_alive
from .status import limit_usage
from .storage import JobQuery, Storage
from .storage.jobs import MAX_VALUE_BYTES, object_id
from .webhooks import webhook_warnings

S = JobStatus
Doc = dict[str, Any]

#: Jobs per page when not given; pages hold at most MAX_LIMIT.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: Jobs one retry_many / bulk action touches at most.
MAX_BULK = 10_000
#: End times read per status for the jobs-per-minute figures.
THROUGHPUT_CAP = 20_000


# ---- results --------------------------------------------------------------------------------


class JobPage(BaseModel):
    """One page of `list_jobs`, newest first. Pass `next_cursor` back for the next page (None
    when this was the last one)."""

    jobs: list[Job[Any]]
    next_cursor: str | None = None


class ActionResult(BaseModel):
    """What an action did. `done` is True when it changed something (a retry re-queued a job, a
    kill killed or asked to kill one, ...); `skipped` says why each other id was left alone."""

    action: str
    actor: str
    at: dt.datetime
    changed: list[str] = []
    """Ids (job ids, or names for pause/resume and trigger) the action changed."""
    skipped: dict[str, str] = {}
    """id -> why nothing happened (e.g. "finished: only errored or killed jobs can be retried")."""
    jobs: list[Job[Any]] = []
    """The jobs as they are after the action (single-job actions, new jobs)."""
    count: int = 0
    """How many were changed (purges report the count, not the ids)."""
    detail: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return self.count > 0


class WorkerView(WorkerInfo):
    """A worker document with what an operator needs: `alive` (heartbeat within the worker's own
    `worker_timeout`), `running_jobs` ({id, name, started_at}) and the names it claims."""

    names: list[str] = []
    worker_timeout: float | None = None
    seconds_since_heartbeat: float = 0.0


class DefinitionView(BaseModel):
    """A job or cron name as registered by the workers that know it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    kind: str = "job"
    tag: str | None = None
    resumable: bool = False
    concurrency: str = "concurrent"
    max_attempts: int = 1
    max_runtime_in_minutes: float | None = None
    backoff: dict[str, Any] | None = None
    has_exit_hook: bool = False
    payload_model: str | None = None
    payload_schema: dict[str, Any] | None = None
    """The payload model's JSON schema, when the definition has one."""
    sensitive_fields: list[str] = []
    """Payload / checkpoint paths this module never shows ("[redacted]")."""
    cron_string: str | None = None
    timezone: str | None = None
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    registered_by: str | None = None
    served_by: list[str] = []
    """Ids of the live workers that claim this name."""
    paused: bool = False


class CronRun(BaseModel):
    id: str
    slot: dt.datetime
    trigger: str | None = None
    status: JobStatus
    skip_reason: str | None = None
    error: str | None = None
    ended_at: dt.datetime | None = None


class CronView(BaseModel):
    name: str
    cron_string: str
    timezone: str
    tag: str | None = None
    concurrency: str = "concurrent"
    next_slot_utc: dt.datetime | None = None
    next_slot_local: dt.datetime | None = None
    recent: list[CronRun] = []
    """The latest tasks, newest first (scheduled slots and manual triggers)."""
    missed_recent: int = 0
    """How many of `recent` are slots that were missed (not started within the margin)."""
    running: list[str] = []
    paused: bool = False
    served_by: list[str] = []


class QueueRow(BaseModel):
    pending: int = 0
    """Pending jobs (due or scheduled later)."""
    due: int = 0
    """Pending or paused jobs that are due now: what workers would claim."""
    paused: int = 0
    running: int = 0
    oldest_due_age_seconds: float | None = None
    """How long the longest-waiting due job has been due."""


class ThroughputRow(BaseModel):
    minute: dt.datetime
    """Start of the minute (UTC)."""
    finished: int = 0
    errored: int = 0
    killed: int = 0


class Overview(BaseModel):
    now: dt.datetime
    counts: dict[str, dict[str, int]]
    """job name -> status -> jobs."""
    queue: dict[str, QueueRow]
    """job name -> queue depth."""
    throughput: list[ThroughputRow]
    """Jobs ended per minute over the last minutes, oldest first (the current minute last)."""
    throughput_capped: bool = False
    """More jobs ended than were read (THROUGHPUT_CAP per status): the figures are lower
    bounds."""
    workers_alive: int = 0
    workers_dead: int = 0
    paused_names: list[str] = []
    unserved_names: list[str] = []
    """Known names no live worker can run."""
    unknown_names: dict[str, int] = {}
    """Names of waiting jobs that no worker defines -> how many wait."""
    warnings: list[str] = []
    limits: list[dict[str, Any]] = []
    """Cluster-wide limits (`status.limit_usage`): key, running, concurrency,
    started_in_window, rate, per_seconds."""


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    at: dt.datetime
    actor: str
    action: str
    ids: list[str] = []
    count: int = 0
    detail: dict[str, Any] = {}


# ---- helpers --------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | dt.timedelta | float, field: str = "older_than") -> dt.timedelta:
    """ "90s", "30m", "12h", "7d", "2w", a timedelta, or seconds."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise InvalidArgumentError(
            f"{field} {value!r} is not a duration: use a number and a unit, e.g. 90s, 30m, 12h, "
            "7d or 2w"
        )
    if seconds <= 0:
        raise InvalidArgumentError(f"{field} must be positive, got {value!r}")
    return dt.timedelta(seconds=seconds)


def parse_time(value: str | dt.datetime | None, field: str) -> dt.datetime | None:
    """An aware datetime or ISO 8601 text (a time without offset is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgumentError(
                f"{field} {value!r} is not a date: use ISO 8601, e.g. 2030-01-31T09:00:00Z"
            ) from None
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentError(f"{field} must be a datetime or ISO 8601 text, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return to_millis(value)


def encode_cursor(doc: Doc) -> str:
    raw = f"{D.epoch_ms(doc['created_at'])}.{doc['_id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[dt.datetime, ObjectId]:
    try:
        padded = token + "=" * (-len(token) % 4)
        ms, oid = base64.urlsafe_b64decode(padded.encode()).decode().split(".")
        created = dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)
        return to_millis(created), ObjectId(oid)
    except (ValueError, TypeError, bson.errors.InvalidId, UnicodeDecodeError):
        raise InvalidArgumentError(
            f"cursor {token!r} is not a cursor returned by list_jobs (pass next_cursor as is)"
        ) from None


def check_payload(name: str, payload: Any) -> dict[str, Any]:
    """JSON text or a dict; must be a JSON object that BSON can store (under ~15 MB)."""
    if payload is None or payload == "":
        return {}
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise InvalidPayloadError(
                f"job {name!r}: payload is not valid JSON ({exc.msg} at line {exc.lineno} "
                f'column {exc.colno}); give a JSON object such as {{"to": "a@b.c"}}'
            ) from None
    if not isinstance(payload, Mapping):
        raise InvalidPayloadError(
            f"job {name!r}: payload must be a JSON object ({{...}}), got {type(payload).__name__}"
        )
    return D.checked_payload("job", name, payload, MAX_VALUE_BYTES)


def _limit(value: Any, field: str = "limit", most: int = MAX_LIMIT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{field} must be a positive integer, got {value!r}")
    return min(value, most)


def _ids(job_ids: str | ObjectId | Sequence[str | ObjectId]) -> list[ObjectId]:
    items = [job_ids] if isinstance(job_ids, str | ObjectId) else list(job_ids)
    if not items:
        raise InvalidArgumentError("give at least one job id")
    out = []
    for item in items:
        try:
            out.append(object_id(item))
        except JobNotFoundError as exc:
            raise InvalidArgumentError(str(exc)) from None
    return out


REDACTED = "[redacted]"


def redact_any(value: Any, paths: Sequence[str]) -> Any:
    """`redact`, also inside a list (a payload or checkpoint another program stored as one)."""
    if isinstance(value, list):
        return [redact_any(v, paths) for v in value]
    return redact(value, paths)


def redact(value: Any, paths: Sequence[str]) -> Any:
    """A copy of `value` (a payload or checkpoint) with each dotted path replaced by
    "[redacted]" (inside lists of objects too)."""
    if not paths or not isinstance(value, dict):
        return value
    out = dict(value)
    nested: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in out:
            continue
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            out[head] = REDACTED
    for head, rests in nested.items():
        inner = out[head]
        if isinstance(inner, list):
            out[head] = [redact_any(item, rests) for item in inner]
        elif inner != REDACTED:
            out[head] = redact(inner, rests)
    return out


def values_at(value: Any, paths: Sequence[str]) -> set[str]:
    """The text of every value at or under these dotted paths (inside lists of objects too),
    long enough to be looked for in free text (an error quoting a card number)."""
    out: set[str] = set()
    if isinstance(value, list):  # a list of objects (or a payload stored as a list)
        for item in value:
            out |= values_at(item, paths)
        return out
    if not isinstance(value, dict):
        return out
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in value:
            continue
        out |= values_at(value[head], [rest]) if rest else leaves(value[head])
    return out


def leaves(value: Any) -> set[str]:
    """The text of every scalar in `value` (walking dicts and lists) long enough to hide."""
    if isinstance(value, dict):
        return set().union(*(leaves(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(leaves(v) for v in value))
    if value is None or isinstance(value, bool) or len(str(value)) < MIN_SECRET_LENGTH:
        return set()
    return {str(value)}


def scrub(value: Any, hidden: set[str]) -> Any:
    """A copy of `value` with these values replaced by REDACTED in every string it holds."""
    if isinstance(value, str):
        for secret in sorted(hidden, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, hidden) for v in value]
    return value


def hide_in_texts(job: Job[Any], hidden: set[str]) -> None:
    """Replace these values in the job's error texts (its error, its runs' errors, the exit
    hook's error) by REDACTED."""
    if not hidden:
        return
    if job.output is not None:
        job.output.error = scrub(job.output.error, hidden)
    job.history = scrub(job.history, hidden)
    job.exit_hook_error = scrub(job.exit_hook_error, hidden)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ---- the admin ------------------------------------------------------------------------------


class Admin:
    """Operator verbs on one job-processor database (see the module docstring).

    db: an async database (pymongo AsyncDatabase, motor, mongomock-motor).
    collection_prefix: the prefix given to init_job_processor.
    clock: injectable (FakeClock in tests).
    actor: recorded in the audit log when an action gives none (default "user@host").
    worker_timeout: liveness threshold for worker documents that do not record their own.
    logger: structlog or stdlib logger (default structlog "job_processor").
    sensitive_fields: payload / checkpoint keys (dotted paths) never shown for any job, on top of
    each definition's own `JobDef(sensitive_fields=...)` (read from the registry). Every Job this
    class returns is redacted; actions work on the stored values.
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
        self.sensitive_fields = tuple(sensitive_fields)
        self.storage = storage or Storage(db, collection_prefix)
        self.clock = clock or SystemClock()
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
    ) -> Admin:
        """Like the constructor, after detecting the server (nx-27017 and mongomock need a few
        workarounds). Does not create indexes or touch definitions."""
        storage = await Storage.open(db, collection_prefix)
        return cls(db, collection_prefix, clock, storage=storage, **kw)

    # ---- reads ------------------------------------------------------------------------------

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
        return JobQuery(
            name=name or None,
            status=parse_status(status) if status else None,
            tag=tag or None,
            key=key or None,
            created_after=parse_time(created_after, "created_after"),
            created_before=parse_time(created_before, "created_before"),
        )

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
        other filters). Empty strings count as "no filter". `limit` is capped at 1000.
        `cursor`: the previous page's `next_cursor`."""
        query = self._query(name, status, tag, key, created_after, created_before)
        limit = _limit(limit)
        if id:
            oid = _ids(id)[0]
            doc = await self.storage.job_admin.by_id(oid)
            jobs = [Job.read(doc)] if doc is not None and query.matches(doc) else []
            return JobPage(jobs=await self._redacted(jobs))
        after = decode_cursor(cursor) if cursor else None
        docs = await self.storage.job_admin.page(query, after, limit + 1)
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

    async def _stored_job(self, job_id: str | ObjectId) -> Job[Any]:
        doc = await self.storage.job_admin.by_id(_ids(job_id)[0])
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        return Job.read(doc)

    async def _redacted(self, jobs: list[Job[Any]]) -> list[Job[Any]]:
        """Hide the sensitive fields (the definitions' and this Admin's) of these jobs."""
        if not jobs:
            return jobs
        per_name: dict[str, list[str]] = {}
        for doc in await self.storage.definitions.all():
            per_name[str(doc["_id"])] = [str(p) for p in doc.get("sensitive_fields") or []]
        for job in jobs:
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
        return jobs

    async def _workers(self, now: dt.datetime) -> list[WorkerView]:
        running = await self.storage.jobs.running()
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in running:
            by_worker.setdefault(str(r.get("worker_id")), []).append(
                {"id": str(r["_id"]), "name": r["name"], "started_at": r.get("run_started_at")}
            )
        out = []
        for w in await self.storage.workers.all():
            view = WorkerView.model_validate(w)
            view.alive = worker_alive(w, now, self.worker_timeout)
            view.running_jobs = by_worker.get(view.id, [])
            view.seconds_since_heartbeat = max(0.0, (now - view.last_seen).total_seconds())
            out.append(view)
        return sorted(out, key=lambda v: (not v.alive, v.hostname, v.instance_id or "", v.pid))

    async def list_workers(self) -> list[WorkerView]:
        """Every worker document: host, pid, INSTANCE_ID, tags, the names it claims, its running
        jobs, last heartbeat, alive. Dead ones are listed until a live worker's sweep removes
        them (and recovers their jobs)."""
        return await self._workers(self.clock.now())

    async def _known(self) -> dict[str, Doc]:
        """name -> registry document (and crons registered by init_job_processor)."""
        known: dict[str, Doc] = {}
        for doc in await self.storage.crons.docs():
            known[str(doc["_id"])] = {"kind": "cron", **doc}
        for doc in await self.storage.definitions.all():
            known[str(doc["_id"])] = {**known.get(str(doc["_id"]), {}), **doc}
        return known

    async def list_definitions(self) -> list[DefinitionView]:
        """Every job and cron name the workers registered, with the live workers serving it
        and whether it is paused."""
        now = self.clock.now()
        known = await self._known()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        paused = await self.storage.paused.names()
        cov = coverage(known, live, {}, paused, now)
        out = []
        for name in sorted(known):
            doc = {k: v for k, v in known[name].items() if k != "_id"}
            schema = doc.get("payload_schema")
            if isinstance(schema, dict) and isinstance(schema.get("json"), str):
                doc["payload_schema"] = json.loads(schema["json"])
            view = DefinitionView.model_validate(doc | {"name": name})
            view.served_by = cov.served_by.get(name, [])
            view.paused = name in paused
            out.append(view)
        return out

    async def list_crons(self, recent: int = 10) -> list[CronView]:
        """Every cron registered in the database: schedule, timezone, next slot (UTC and local),
        the latest `recent` tasks with their status, how many of them were missed slots, the
        running task ids, paused, the live workers serving it."""
        recent = _limit(recent, "recent", 100)
        now = self.clock.now()
        live = [
            w for w in await self.storage.workers.all() if worker_alive(w, now, self.worker_timeout)
        ]
        paused = await self.storage.paused.names()
        running = await self.storage.jobs.running()
        out = []
        for doc in sorted(await self.storage.crons.docs(), key=lambda d: str(d["_id"])):
            name = str(doc["_id"])
            tz = str(doc.get("timezone") or "UTC")
            next_slot = doc.get("next_slot")
            tasks = await self.storage.jobs.recent_tasks(name, recent)
            runs = [
                CronRun(
                    id=str(t["_id"]),
                    slot=t["scheduled_for"],
                    trigger=t.get("trigger"),
                    status=S(t["status"]),
                    skip_reason=t.get("skip_reason"),
                    error=(t.get("output") or {}).get("error"),
                    ended_at=t.get("ended_at"),
                )
                for t in tasks
            ]
            out.append(
                CronView(
                    name=name,
                    cron_string=str(doc.get("cron_string")),
                    timezone=tz,
                    tag=doc.get("tag"),
                    concurrency=str(doc.get("concurrency") or "concurrent"),
                    next_slot_utc=next_slot,
                    next_slot_local=Schedule(str(doc.get("cron_string")), tz).local(next_slot)
                    if isinstance(next_slot, dt.datetime)
                    else None,
                    recent=runs,
                    missed_recent=sum(1 for r in runs if r.skip_reason == "missed"),
                    running=[str(r["_id"]) for r in running if r["name"] == name],
                    paused=name in paused,
                    served_by=[str(w["_id"]) for w in live if name in (w.get("names") or [])],
                )
            )
        return out

    async def _counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for status in S:
            for name, n in (await self.storage.jobs.counts_by_name(status)).items():
                counts.setdefault(name, {})[status.value] = n
        return counts

    async def overview(self, minutes: int = 15) -> Overview:
        """The numbers of the dashboard's first page: counts by name and status, queue depth and
        oldest due age per name, jobs ended per minute over the last `minutes`, workers alive and
        dead, paused names, the cluster-wide limits in use, and warnings (names no live worker
        can run, waiting jobs of unknown names, paused names with waiting jobs, dead workers
        awaiting recovery, disabled webhook endpoints)."""
        minutes = _limit(minutes, "minutes", 24 * 60)
        now = self.clock.now()
        counts = await self._counts()
        known = await self._known()
        workers = await self._workers(now)
        live_docs = [{"_id": w.id, "names": w.names} for w in workers if w.alive]
        paused = await self.storage.paused.names()
        names = sorted(set(counts) | set(known))
        due = await self.storage.job_admin.due_by_name(names, now)
        queue: dict[str, QueueRow] = {}
        now_ms = D.epoch_ms(now)
        for name in names:
            c = counts.get(name, {})
            n_due, oldest = due.get(name, (0, now_ms))
            queue[name] = QueueRow(
                pending=c.get("pending", 0),
                due=n_due,
                paused=c.get("paused", 0),
                running=c.get("running", 0),
                oldest_due_age_seconds=max(0.0, (now_ms - oldest) / 1000) if n_due else None,
            )
        throughput, capped = await self._throughput(now, minutes)
        cov = coverage(known, live_docs, counts, paused, now)
        warnings = list(cov.warnings)
        dead = [w for w in workers if not w.alive]
        for w in dead:
            jobs = f", {len(w.running_jobs)} running jobs to recover" if w.running_jobs else ""
            warnings.append(
                f"worker {w.id} ({w.hostname}, pid {w.pid}, instance {w.instance_id}) has not "
                f"sent a heartbeat for {w.seconds_since_heartbeat:.0f}s{jobs}: a live worker's "
                "next sweep recovers it"
            )
        if not live_docs:
            warnings.append("no live worker: nothing is being run")
        warnings += await webhook_warnings(self.storage)
        return Overview(
            now=now,
            counts={name: counts.get(name, {}) for name in names},
            queue=queue,
            throughput=throughput,
            throughput_capped=capped,
            workers_alive=len(live_docs),
            workers_dead=len(dead),
            paused_names=sorted(paused),
            unserved_names=cov.unserved,
            unknown_names=cov.unknown_waiting,
            warnings=warnings,
            limits=[limit_usage(doc, now) for doc in await self.storage.limits.all()],
        )

    async def _throughput(self, now: dt.datetime, minutes: int) -> tuple[list[ThroughputRow], bool]:
        start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
        rows = [ThroughputRow(minute=start + dt.timedelta(minutes=i)) for i in range(minutes)]
        capped = False
        for status in (S.FINISHED, S.ERRORED, S.KILLED):
            ended = await self.storage.job_admin.ended_since(status, start, THROUGHPUT_CAP)
            capped = capped or len(ended) >= THROUGHPUT_CAP
            for when in ended:
                i = int((as_utc(when) - start).total_seconds() // 60)
                if 0 <= i < minutes:
                    row = rows[i]
                    setattr(row, status.value, getattr(row, status.value) + 1)
        return rows, capped

    async def status(self) -> ProcessorStatus:
        """What `JobProcessor.get_status()` reports, from the database alone (worker_id "")."""
        now = self.clock.now()
        ov = await self.overview(minutes=1)
        workers = [WorkerInfo.model_validate(w.model_dump()) for w in await self._workers(now)]
        crons = [
            {
                "name": c.name,
                "cron_string": c.cron_string,
                "timezone": c.timezone,
                "next_slot_utc": c.next_slot_utc,
                "next_slot_local": c.next_slot_local,
                "running": c.running,
                "recent": [r.model_dump() for r in c.recent[:5]],
            }
            for c in await self.list_crons(recent=5)
        ]
        return ProcessorStatus(
            now=now,
            worker_id="",
            workers=workers,
            queue={
                "pending": sum(q.pending for q in ov.queue.values()),
                "due": sum(q.due for q in ov.queue.values()),
                "paused": sum(q.paused for q in ov.queue.values()),
                "running": sum(q.running for q in ov.queue.values()),
            },
            jobs=ov.counts,
            crons=crons,
            warnings=ov.warnings,
            paused_names=ov.paused_names,
            unserved_names=ov.unserved_names,
            limits=ov.limits,
        )

    async def audit_log(self, limit: int = 50, before: str | None = None) -> list[AuditEntry]:
        """The latest recorded actions, newest first (`before`: an entry id, for the next page)."""
        oid = _ids(before)[0] if before else None
        docs = await self.storage.audit.recent(_limit(limit), oid)
        return [AuditEntry.model_validate(d | {"id": str(d["_id"])}) for d in docs]

    # ---- actions ----------------------------------------------------------------------------

    async def _record(self, result: ActionResult, detail: dict[str, Any] | None = None) -> None:
        result.jobs = await self._redacted(result.jobs)
        result.count = result.count or len(result.changed)
        if detail:
            result.detail |= detail
        await self.storage.audit.record(
            {
                "at": result.at,
                "actor": result.actor,
                "action": result.action,
                "ids": result.changed,
                "count": result.count,
                "skipped": len(result.skipped),
                "detail": result.detail,
            }
        )
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
        return ActionResult(action=action, actor=actor or self.actor, at=self.clock.now())

    async def _exclusive(self, name: str) -> bool:
        for doc in (
            await self.storage.definitions.get(name),
            *await self.storage.crons.docs([name]),
        ):
            if doc is not None and doc.get("concurrency") is not None:
                return str(doc["concurrency"]) == "exclusive"
        return False

    async def retry(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """errored | killed -> pending now, keeping history and checkpoint (attempts count
        afresh). Action "jobs_retried"."""
        result = self._result("jobs_retried", actor)
        cache: dict[str, bool] = {}
        for oid in _ids(job_ids):
            await self._retry_one(oid, result, cache)
        await self._record(result)
        return result

    async def _retry_one(self, oid: ObjectId, result: ActionResult, cache: dict[str, bool]) -> None:
        current = await self.storage.job_admin.by_id(oid)
        if current is None:
            result.skipped[str(oid)] = "not found"
            return
        name = current["name"]
        if name not in cache:
            cache[name] = await self._exclusive(name)
        try:
            doc = await self.storage.jobs.retry(oid, self.clock.now(), cache[name])
        except DuplicateKeyError:
            what = "dedup key" if current.get("key") else "name (exclusive)"
            result.skipped[str(oid)] = f"another active job holds its {what}: retry it later"
            return
        except JobNotFoundError:
            result.skipped[str(oid)] = "not found"
            return
        if doc is None:
            after = await self.storage.job_admin.by_id(oid)
            status = after["status"] if after else "gone"
            result.skipped[str(oid)] = f"{status}: only errored or killed jobs can be retried"
            return
        result.changed.append(str(oid))
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
        `limit` (capped at 10,000), newest first. Action "jobs_retried"."""
        query = self._query(name, status, tag, key, created_after, created_before)
        if query.status not in (S.ERRORED, S.KILLED):
            raise InvalidArgumentError(
                f"status must be errored or killed to retry, got {query.status}"
            )
        limit = _limit(limit, most=MAX_BULK)
        result = self._result("jobs_retried", actor)
        cache: dict[str, bool] = {}
        after = None
        seen = 0
        while seen < limit:
            docs = await self.storage.job_admin.page(query, after, min(500, limit - seen))
            if not docs:
                break
            for doc in docs:
                await self._retry_one(doc["_id"], result, cache)
            seen += len(docs)
            after = (docs[-1]["created_at"], docs[-1]["_id"])
        result.jobs = result.jobs[:20]
        await self._record(result, {"filter": _describe(query)})
        return result

    async def kill(self, job_ids: str | Sequence[str], *, actor: str | None = None) -> ActionResult:
        """Pending / paused -> killed at once; running -> kill requested (its worker aborts the
        handler within about one poll interval: the job stays running until then, and `changed`
        lists it with detail["requested"]). Ended jobs are skipped. The job's on_job_exited is
        recorded as owed and called by the next sweep of a worker that defines the job.
        Action "jobs_killed"."""
        result = self._result("jobs_killed", actor)
        requested: list[str] = []
        for oid in _ids(job_ids):
            try:
                what, doc = await self.storage.jobs.kill(oid, self.clock.now(), None)
            except JobNotFoundError:
                result.skipped[str(oid)] = "not found"
                continue
            if what == "ended":
                result.skipped[str(oid)] = f"already ended ({doc['status']})"
            else:
                result.changed.append(str(oid))
                if what == "requested":
                    requested.append(str(oid))
            result.jobs.append(Job.read(doc))
        await self._record(result, {"requested": requested} if requested else None)
        return result

    async def run_now(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """A pending job scheduled for later becomes due now (its scheduled_for is set to now);
        jobs already due or not pending are skipped. Action "jobs_run_now"."""
        result = self._result("jobs_run_now", actor)
        for oid in _ids(job_ids):
            doc = await self.storage.job_admin.run_now(oid, self.clock.now())
            if doc is not None:
                result.changed.append(str(oid))
                result.jobs.append(Job.read(doc))
                continue
            current = await self.storage.job_admin.by_id(oid)
            if current is None:
                result.skipped[str(oid)] = "not found"
            elif current["status"] == S.PENDING.value:
                result.skipped[str(oid)] = "already due"
            else:
                result.skipped[str(oid)] = f"{current['status']}: only pending jobs can be run now"
        await self._record(result)
        return result

    async def delete(
        self, job_ids: str | Sequence[str], *, actor: str | None = None
    ) -> ActionResult:
        """Delete ended jobs (finished, errored, killed, skipped). Active jobs (pending,
        running, paused) are refused: kill them first. Action "jobs_deleted"."""
        result = self._result("jobs_deleted", actor)
        for oid in _ids(job_ids):
            doc = await self.storage.job_admin.delete_ended(oid)
            if doc is not None:
                result.changed.append(str(oid))
                continue
            current = await self.storage.job_admin.by_id(oid)
            result.skipped[str(oid)] = (
                "not found"
                if current is None
                else f"{current['status']}: active jobs are not deleted (kill it first)"
            )
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
        name. Active statuses are refused. Action "jobs_purged" (with the count)."""
        wanted = parse_status(status)
        if wanted not in TERMINAL:
            raise InvalidArgumentError(
                f"status {wanted.value} is active: only finished, errored, killed or skipped "
                "jobs can be purged"
            )
        age = parse_duration(older_than)
        result = self._result("jobs_purged", actor)
        cutoff = result.at - age
        result.count = await self.storage.job_admin.purge(wanted, cutoff, name or None)
        await self._record(
            result,
            {"status": wanted.value, "ended_before": cutoff.isoformat(), "name": name or ""},
        )
        return result

    async def _definition(self, name: str) -> Doc:
        known = await self._known()
        if name not in known:
            jobs = [n for n, d in known.items() if d.get("kind", "job") == "job"]
            raise UnknownJobError(name, jobs)
        return known[name]

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
        JSON text or a dict. Its payload model, if any, is checked when it runs (this process
        has no models): a payload that fails it ends the job as errored, saying why. With a
        dedup key held by an active job, nothing is created (`skipped`, and `jobs` holds that
        job). Action "job_created"."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a job name (see list_definitions)")
        definition = await self._definition(name)
        if definition.get("kind") == "cron":
            raise InvalidArgumentError(f"{name!r} is a cron: use trigger_cron({name!r})")
        body = check_payload(name, payload)
        when = parse_time(scheduled_for, "scheduled_for")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidArgumentError(f"priority must be an integer, got {priority!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidArgumentError(f"key must be a non-empty string, got {key!r}")
        attempts = max_attempts if max_attempts is not None else definition.get("max_attempts", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be an integer >= 1, got {attempts!r}")
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
            extra={"created_by": result.actor},
        )
        await self._insert(result, doc)
        await self._record(result, {"name": name})
        return result

    async def _insert(self, result: ActionResult, doc: Doc) -> None:
        inserted = await self.storage.jobs.insert(doc)
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

    async def duplicate(self, job_id: str, *, actor: str | None = None) -> ActionResult:
        """A new pending job with the same name, payload and priority (not the dedup key, which
        would return the original while it is active). A cron task is duplicated as a manual
        trigger of its cron. Action "job_duplicated" (detail["duplicate_of"] is the original id)."""
        original = await self._stored_job(job_id)  # the stored payload, not the redacted one
        if original.type == "cron_task":
            result = await self._trigger(original.name, actor, "job_duplicated")
        else:
            definition = await self._definition(original.name)
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
                extra={"created_by": result.actor, "duplicate_of": ObjectId(original.id)},
            )
            await self._insert(result, doc)
        await self._record(result, {"duplicate_of": original.id, "name": original.name})
        return result

    async def trigger_cron(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Run a registered cron once now, outside its schedule (a task with trigger "manual",
        like JobProcessor.trigger_cron). Action "cron_triggered"."""
        result = await self._trigger(name, actor, "cron_triggered")
        await self._record(result, {"name": name})
        return result

    async def _trigger(self, name: str, actor: str | None, action: str) -> ActionResult:
        docs = await self.storage.crons.docs([name])
        if not docs:
            known = ", ".join(sorted(str(d["_id"]) for d in await self.storage.crons.docs()))
            raise UnknownJobError.for_cron(name, known or "none")
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
        return result

    async def pause(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Workers stop claiming jobs of this name within about one heartbeat interval (jobs
        already running go on). Persisted until resume(). Action "name_paused"."""
        return await self._pause(name, actor, pause=True)

    async def resume(self, name: str, *, actor: str | None = None) -> ActionResult:
        """Undo pause(): workers claim the name again at their next heartbeat. Action
        "name_resumed"."""
        return await self._pause(name, actor, pause=False)

    async def _pause(self, name: str, actor: str | None, *, pause: bool) -> ActionResult:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a job or cron name")
        result = self._result("name_paused" if pause else "name_resumed", actor)
        if pause:
            known = await self._known()
            if name not in known and name not in await self._counts():
                raise UnknownJobError(name, list(known))
            changed = await self.storage.paused.pause(name, result.actor, result.at)
        else:
            changed = await self.storage.paused.resume(name)
        if changed:
            result.changed.append(name)
        else:
            result.skipped[name] = "already paused" if pause else "not paused"
        await self._record(result, {"name": name})
        return result

    # ---- events (job_processor.events, recorded in the audit log) -----------------------------

    async def replay_event(
        self,
        event_id: str,
        subscribers: Sequence[str] | None = None,
        *,
        webhook_attempts: int = 10,
        actor: str | None = None,
    ) -> ActionResult:
        """Deliver a stored event again (`events.replay_event`): new delivery jobs recorded
        with a replay id of their own; `subscribers=None` is every subscriber registered for
        it now and every enabled webhook endpoint listening to it. `changed` lists the new
        delivery job ids, `detail["deliveries"]` the deliveries (target, job id, status).
        Nothing to deliver to is reported in `skipped`. Action "event_replayed"."""
        from . import events as ev

        result = self._result("event_replayed", actor)
        created = await ev.replay_event(
            self.storage,
            event_id,
            subscribers,
            webhook_attempts=webhook_attempts,
            clock=self.clock,
        )
        nothing = (
            "nothing to deliver to: no subscriber is registered for its name now and no "
            "enabled webhook endpoint listens to it"
        )
        detail = {"event_id": str(event_id)}
        return await self._replayed(result, created, detail, subscribers, str(event_id), nothing)

    async def replay_events(
        self,
        name: str,
        *,
        since: str | dt.datetime | None,
        until: str | dt.datetime | None = None,
        subscribers: Sequence[str] | None = None,
        limit: int = 1000,
        webhook_attempts: int = 10,
        actor: str | None = None,
    ) -> ActionResult:
        """`replay_event` for every event named `name` emitted in [since, until) (aware
        datetimes or ISO text, UTC when no offset), oldest first, at most `limit` (1000).
        Action "events_replayed"."""
        from . import events as ev

        lo = parse_time(since, "since")
        if lo is None:
            raise InvalidArgumentError(
                "since is required to replay events by name: the start of the time window, "
                "e.g. 2030-01-31T09:00:00Z"
            )
        hi = parse_time(until, "until")
        result = self._result("events_replayed", actor)
        created = await ev.replay_events(
            self.storage,
            name,
            since=lo,
            until=hi,
            subscribers=subscribers,
            limit=limit,
            webhook_attempts=webhook_attempts,
            clock=self.clock,
        )
        window = {"name": name, "since": lo.isoformat(), "until": hi.isoformat() if hi else ""}
        nothing = (
            f"nothing to deliver to: no event named {name!r} in the window, or no subscriber "
            "registered for it now and no enabled webhook endpoint listening to it"
        )
        return await self._replayed(result, created, window, subscribers, name, nothing)

    async def _replayed(
        self,
        result: ActionResult,
        created: Sequence[Any],
        detail: dict[str, Any],
        subscribers: Sequence[str] | None,
        what: str,
        nothing: str,
    ) -> ActionResult:
        result.changed = [str(d.job_id) for d in created if d.job_id]
        if not created:
            result.skipped[what] = nothing
        events = sorted({d.event_id for d in created})
        replays = sorted({str(d.replay_id) for d in created if d.replay_id})
        detail |= {
            "subscribers": ",".join(subscribers) if subscribers is not None else "all",
            "targets": sorted({d.target for d in created}),
            "events": len(events),
            "replay_ids": replays[:100],
        }
        await self._record(result, detail)
        result.detail["deliveries"] = [d.model_dump(mode="json") for d in created]
        return result


def _describe(query: JobQuery) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("name", "tag", "key"):
        if getattr(query, field) is not None:
            out[field] = getattr(query, field)
    if query.status is not None:
        out["status"] = query.status.value
    for field in ("created_after", "created_before"):
        value = getattr(query, field)
        if value is not None:
            out[field] = value.isoformat()
    return out
