"""Job documents, statuses and the table of allowed status transitions."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Literal

from bson import Binary, Decimal128, ObjectId
from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    field_serializer,
    model_validator,
)
from typing_extensions import TypeVar

from .clock import as_utc

if TYPE_CHECKING:
    from .processor import JobProcessor


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    ERRORED = "errored"
    KILLED = "killed"
    SKIPPED = "skipped"


S = JobStatus

#: A job in one of these holds its exclusive slot and can still run.
ACTIVE: frozenset[JobStatus] = frozenset({S.PENDING, S.RUNNING, S.PAUSED})
#: A job in one of these will never run again (until an explicit retry).
TERMINAL: frozenset[JobStatus] = frozenset({S.FINISHED, S.ERRORED, S.KILLED, S.SKIPPED})
#: A worker may claim these.
CLAIMABLE: tuple[JobStatus, ...] = (S.PENDING, S.PAUSED)
#: Terminal statuses that owe an `on_job_exited` call (a skipped job never ran: no hook).
HOOKED: frozenset[JobStatus] = frozenset({S.FINISHED, S.ERRORED, S.KILLED})

#: Every status change the store may make: (from, to). `None` = inserted with that status.
#: The store checks each compare-and-set against this table; nothing else happens to a job.
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, S.PENDING),  # schedule_job
        (None, S.RUNNING),  # run_job (claimed at insert by the caller)
        (None, S.SKIPPED),  # exclusive conflict, missed cron slot
        (S.PENDING, S.RUNNING),  # claim
        (S.PAUSED, S.RUNNING),  # resume
        (S.PENDING, S.KILLED),  # kill before it ran
        (S.PAUSED, S.KILLED),  # kill while paused
        (S.RUNNING, S.FINISHED),
        (S.RUNNING, S.ERRORED),  # exception, timeout, crash with no attempt left, invalid job
        (S.RUNNING, S.KILLED),
        (S.RUNNING, S.PAUSED),  # resumable: graceful stop, or crash recovery with attempts left
        (S.RUNNING, S.PENDING),  # failed attempt with attempts left, or interrupted by a stop
        (S.ERRORED, S.PENDING),  # retry_job
        (S.KILLED, S.PENDING),  # retry_job
        (S.PENDING, S.SKIPPED),  # cron task not started within its margin
        (S.PENDING, S.ERRORED),  # inserted by another program under a name no worker defines
        (S.RUNNING, S.SKIPPED),  # cron task claimed after its margin: not run
    }
)


class InvalidTransitionError(AssertionError):
    pass


def check_transition(old: JobStatus | None, new: JobStatus) -> None:
    if (old, new) not in TRANSITIONS:
        raise InvalidTransitionError(f"job status {old} -> {new} is not an allowed transition")


def parse_status(value: Any) -> JobStatus:
    """A status given by a user (`list_jobs(status=...)`, the CLI): a clear error if unknown."""
    from .errors import InvalidArgumentError

    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgumentError(f"unknown status {value!r}: use one of {known}") from None


def to_jsonable(value: Any) -> Any:
    """BSON values that JSON has no type for, made JSON-friendly: ObjectId and UUID as text,
    bytes as base64, Decimal128 as text, datetimes as ISO 8601 (aware UTC)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | Binary):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal128 | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return as_utc(value).isoformat()
    return value


class JobOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    result: Any = None
    error: str | None = None
    duration_ms: int | None = None

    @field_serializer("result", when_used="json")
    def _json_result(self, value: Any) -> Any:
        return to_jsonable(value)


def _utc(value: Any) -> Any:
    return as_utc(value) if isinstance(value, dt.datetime) else value


def _derive_missing(doc: dict[str, Any]) -> None:
    """A job inserted by another program (`{name, claim_name, due_ms, payload}`) reads as the
    pending job it is until a worker claims it and writes the rest (documents.completion)."""
    if not isinstance(doc.get("name"), str):  # shown as "" (its run is errored: no name)
        doc["name"] = str(doc["name"]) if doc.get("name") is not None else ""
    if "created_at" in doc:
        return
    oid = doc.get("_id")
    due = doc.get("due_ms")
    if "scheduled_for" not in doc and isinstance(due, int | float) and not isinstance(due, bool):
        with contextlib.suppress(ValueError, OverflowError, OSError):  # a due_ms out of range
            doc["scheduled_for"] = dt.datetime.fromtimestamp(due / 1000, tz=dt.UTC)
    # its insert time (an ObjectId's), else when it is due, else the epoch (a string _id)
    created = oid.generation_time if isinstance(oid, ObjectId) else doc.get("scheduled_for")
    created = created or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    doc.setdefault("scheduled_for", created)
    doc["created_at"] = created
    doc.setdefault("updated_at", created)
    doc.setdefault("status", "pending" if doc.get("claim_name") else None)


PayloadT = TypeVar("PayloadT", default=dict[str, Any])

#: The key a payload that is not a document is shown under (`{NOT_A_DOCUMENT: [...]}`).
NOT_A_DOCUMENT = "(not a document)"

ExitHookState = Literal["owed", "done", "failed", "none"]


class Job(BaseModel, Generic[PayloadT]):
    """A job as stored in MongoDB. Handlers get one; `await job.checkpoint({...})` saves state.

    `Job[MyModel]` when the JobDef declares `payload_model=MyModel`: `job.payload` is then a
    `MyModel`, validated when the job was scheduled and again when it runs.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    type: Literal["simple", "cron_task"] = "simple"
    status: JobStatus
    payload: PayloadT
    priority: int = 0
    tag: str | None = None
    scheduled_for: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    """When the job first started (kept across resumes)."""
    run_started_at: dt.datetime | None = None
    """When the current (or last) run started."""
    ended_at: dt.datetime | None = None
    worker_id: str | None = None
    run_id: str | None = None
    attempt: int = 0
    """How many runs have started (a resume counts as a run)."""
    failures: int = 0
    """Failed attempts so far: exceptions, max runtime, crashes of its worker."""
    max_attempts: int = 1
    history: list[dict[str, Any]] = []
    """The last runs (bounded): attempt, worker_id, started_at, ended_at, status, error."""
    key: str | None = None
    """Dedup key (scoped by job name): while a job with this key is active, scheduling the same
    name and key returns that job."""
    state: dict[str, Any] | None = None
    """The last checkpoint saved by the job."""
    output: JobOutput | None = None
    kill_requested_at: dt.datetime | None = None
    skip_reason: str | None = None
    """"exclusive" (a job of that name was active) or "missed" (a cron slot not started in time)."""
    conflicting_job_id: str | None = None
    trigger: str | None = None
    """Cron tasks: "schedule" (a slot; its time is `scheduled_for`) or "manual" (trigger_cron)."""
    start_deadline: dt.datetime | None = None
    """Cron tasks: the slot plus its check-in margin; not started by then, it is never run."""
    exit_hook: ExitHookState | None = None
    """on_job_exited for the last exit: "owed" (recorded by the final write, not run yet),
    "done", "failed" (it raised or timed out; see exit_hook_error), "none" (no hook defined)."""
    exit_hook_error: str | None = None
    exit_hook_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    """When this ended job may be deleted (keep_finished / keep_failed); None: kept."""
    invalid_fields: dict[str, Any] = {}
    """Fields of the stored document that do not have their type (another program wrote them),
    as stored; `Job.read` shows the job without them. A run of such a job is errored."""

    _checkpointer: Callable[[dict[str, Any]], Awaitable[None]] | None = PrivateAttr(default=None)
    _processor: JobProcessor | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: _utc(v) for k, v in data.items()}
        _derive_missing(doc)
        payload = doc.get("payload")
        if cls is Job and payload is not None and not isinstance(payload, dict):
            # shown as stored (a run of it fails: see worker.build_job); reading never breaks
            doc["payload"] = {NOT_A_DOCUMENT: payload}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        if isinstance(doc.get("conflicting_job_id"), ObjectId):
            doc["conflicting_job_id"] = str(doc["conflicting_job_id"])
        if doc.get("started_at") is None and doc.get("run_started_at") is not None:
            doc["started_at"] = doc["run_started_at"]
        if doc.get("payload") is None:
            doc["payload"] = {}
        return doc

    @field_serializer("payload", "state", "history", "invalid_fields", when_used="json")
    def _json_values(self, value: Any) -> Any:
        return to_jsonable(value)

    @classmethod
    def read(cls, doc: dict[str, Any]) -> Job[Any]:
        """A stored job, for reading (get_job, lists, the dashboard, hooks): never fails on a
        field another program wrote with a wrong type; that field goes to `invalid_fields`.
        (A run validates strictly: see worker.build_job.)"""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} - {"id"}
            if not bad or "_id" not in doc:
                raise
            kept = {k: v for k, v in doc.items() if k not in bad}
            if "created_at" in kept:  # required dates: its creation date stands in
                for when in ("scheduled_for", "updated_at"):
                    if when in bad:
                        kept[when] = kept["created_at"]
            # else it reads as a document another program inserted: dates and status derived
            job = cls.model_validate(kept)  # a status that is not a job status still raises
            job.invalid_fields = {k: doc[k] for k in sorted(bad) if k in doc}
            return job

    async def checkpoint(self, state: dict[str, Any]) -> None:
        """Save `state` on the job; a resumed or retried run sees it as `job.state`.

        While MongoDB is unreachable this waits (up to the processor's `worker_timeout`); past
        that the run is abandoned to recovery and this raises `JobLostError`."""
        if self._checkpointer is None:
            raise RuntimeError(
                "checkpoint() is only available inside a running handler; in a unit test, "
                "build the job with job_processor.testing.JobHarness"
            )
        await self._checkpointer(state)
        self.state = dict(state)

    @property
    def processor(self) -> JobProcessor:
        """The processor running this job: chain jobs with
        `await job.processor.schedule_job(...)` from inside a handler."""
        if self._processor is None:
            raise RuntimeError("job.processor is only available inside a running handler")
        return self._processor

    @property
    def error(self) -> str | None:
        return self.output.error if self.output else None

    @property
    def result(self) -> Any:
        return self.output.result if self.output else None


class WorkerInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    hostname: str
    pid: int
    instance_id: str | None = None
    tags: list[str] | None = None
    concurrency: int = 1
    started_at: dt.datetime
    last_seen: dt.datetime
    alive: bool = True
    running_jobs: list[dict[str, Any]] = []

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: _utc(v) for k, v in data.items()}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        return doc


class ProcessorStatus(BaseModel):
    """What `get_status()` returns: workers with their jobs, the queue, counts by job name."""

    now: dt.datetime
    worker_id: str
    workers: list[WorkerInfo]
    queue: dict[str, int]
    """pending (all), due (claimable and due now), paused, running."""
    jobs: dict[str, dict[str, int]]
    """job name -> status -> count."""
    crons: list[dict[str, Any]] = []
    warnings: list[str] = []
    """Things an operator should look at (e.g. an exclusive cron that keeps skipping, a job
    name no live worker can run, waiting jobs of a name no worker defines)."""
    paused_names: list[str] = []
    """Names workers do not claim (job_processor.admin pause/resume)."""
    unserved_names: list[str] = []
    """Known job and cron names (registry and this process) that no live worker claims."""
    limits: list[dict[str, Any]] = []
    """Cluster-wide limits in use: key, running, concurrency, started_in_window, rate,
    per_seconds."""
