"""Job documents, statuses and the table of allowed status transitions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Literal

from bson import ObjectId
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from .clock import as_utc


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    ERRORED = "errored"
    KILLED = "killed"
    SKIPPED = "skipped"


#: A job in one of these holds its exclusive slot and can still run.
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED})
#: A job in one of these will never run again (until an explicit retry, later).
TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.FINISHED, JobStatus.ERRORED, JobStatus.KILLED, JobStatus.SKIPPED}
)
#: A worker may claim these.
CLAIMABLE: tuple[JobStatus, ...] = (JobStatus.PENDING, JobStatus.PAUSED)

#: Every status change the store may make: (from, to). `None` = inserted with that status.
#: The store checks each compare-and-set against this table; nothing else happens to a job.
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, JobStatus.PENDING),  # schedule_job
        (None, JobStatus.RUNNING),  # run_job (claimed at insert by the caller)
        (None, JobStatus.SKIPPED),  # exclusive conflict
        (JobStatus.PENDING, JobStatus.RUNNING),  # claim
        (JobStatus.PAUSED, JobStatus.RUNNING),  # resume
        (JobStatus.PENDING, JobStatus.KILLED),  # kill before it ran
        (JobStatus.PAUSED, JobStatus.KILLED),  # kill while paused
        (JobStatus.RUNNING, JobStatus.FINISHED),
        (JobStatus.RUNNING, JobStatus.ERRORED),  # exception, timeout, interrupted, crash
        (JobStatus.RUNNING, JobStatus.KILLED),
        (JobStatus.RUNNING, JobStatus.PAUSED),  # resumable: graceful stop or crash recovery
        (JobStatus.RUNNING, JobStatus.PENDING),  # failed attempt with attempts left: retry later
        (JobStatus.ERRORED, JobStatus.PENDING),  # retry_job
        (JobStatus.KILLED, JobStatus.PENDING),  # retry_job
        (JobStatus.PENDING, JobStatus.SKIPPED),  # cron task not started within its margin
        (JobStatus.RUNNING, JobStatus.SKIPPED),  # cron task claimed after its margin: not run
    }
)


class InvalidTransitionError(AssertionError):
    pass


def check_transition(old: JobStatus | None, new: JobStatus) -> None:
    if (old, new) not in TRANSITIONS:
        raise InvalidTransitionError(f"job status {old} -> {new} is not an allowed transition")


class JobOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    result: Any = None
    error: str | None = None
    duration_ms: int | None = None


def _utc(value: Any) -> Any:
    return as_utc(value) if isinstance(value, dt.datetime) else value


class Job(BaseModel):
    """A job as stored in MongoDB. Handlers get one; `await job.checkpoint({...})` saves state."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    type: Literal["simple", "cron_task"] = "simple"
    status: JobStatus
    payload: dict[str, Any] = {}
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
    """Failed attempts so far (exception, max runtime, crash or interruption of a non-resumable)."""
    max_attempts: int = 1
    history: list[dict[str, Any]] = []
    """The last runs (bounded): attempt, worker_id, started_at, ended_at, status, error."""
    key: str | None = None
    """Dedup key: while a job with this key is active, scheduling the key returns that job."""
    state: dict[str, Any] | None = None
    """The last checkpoint saved by a resumable job."""
    output: JobOutput | None = None
    kill_requested_at: dt.datetime | None = None
    skip_reason: str | None = None
    """"exclusive" (a job of that name was active) or "missed" (a cron slot not started in time)."""
    conflicting_job_id: str | None = None
    trigger: str | None = None
    """Cron tasks: "schedule" (a slot; its time is `scheduled_for`) or "manual" (trigger_cron)."""
    start_deadline: dt.datetime | None = None
    """Cron tasks: the slot plus its check-in margin; not started by then, it is never run."""

    _checkpointer: Callable[[dict[str, Any]], Awaitable[None]] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: _utc(v) for k, v in data.items()}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        if isinstance(doc.get("conflicting_job_id"), ObjectId):
            doc["conflicting_job_id"] = str(doc["conflicting_job_id"])
        if doc.get("started_at") is None and doc.get("run_started_at") is not None:
            doc["started_at"] = doc["run_started_at"]
        return doc

    async def checkpoint(self, state: dict[str, Any]) -> None:
        """Save `state` for a resumable job; a resumed run sees it as `job.state`."""
        if self._checkpointer is None:
            raise RuntimeError("checkpoint() is only available inside a running handler")
        await self._checkpointer(state)
        self.state = dict(state)

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
    """pending (all), due (pending and due now), paused, running."""
    jobs: dict[str, dict[str, int]]
    """job name -> status -> count."""
    crons: list[dict[str, Any]] = []
