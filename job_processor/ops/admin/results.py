"""What the admin verbs return: pydantic models whose `model_dump(mode="json")` is plain JSON."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from ...core.models import Job, WorkerInfo
from ...core.status import JobStatus


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
    definitions: dict[str, str] = {}
    """name -> a digest of its definition in that process (live workers that disagree on a
    name are warned about)."""
    zone_rules: list[list[str]] = []
    """[zone, digest of its rules, where that process read them] per zone of its crons (live
    workers that disagree on a zone are warned about: `engine.zone_rules`)."""


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
    delivery: bool = False
    """An event's delivery (the built-in webhook-delivery, a subscriber's job): its jobs are
    made by emit() and replays, never by hand."""
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
    """The live workers that run it: they define it as a cron, claim its tasks (their tags
    include its tag) and have not crashed (as `names list` and `status` count them)."""


class QueueRow(BaseModel):
    pending: int = 0
    """Pending jobs (due or scheduled later)."""
    due: int = 0
    """Pending or paused jobs that are due now: what workers would claim."""
    paused: int = 0
    running: int = 0
    waiting: int = 0
    """Jobs waiting for the jobs they were scheduled after (`after=`)."""
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
    """Live workers claiming (heartbeat fresh, not crashed)."""
    workers_crashed: int = 0
    """Live workers whose claim loop or cron scheduler crashed: they claim nothing."""
    workers_dead: int = 0
    paused_names: list[str] = []
    unserved_names: list[str] = []
    """Known names no live worker can run."""
    unknown_names: dict[str, int] = {}
    """Names of waiting jobs that no worker defines -> how many wait."""
    warnings: list[str] = []
    limits: list[dict[str, Any]] = []
    """Cluster-wide limits (`core.limits.top_usage`): key, running, concurrency,
    started_in_window, rate, per_seconds; a per-value key's template; a folded row's keys
    and varies."""


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    at: dt.datetime
    actor: str
    action: str
    ids: list[str] = []
    count: int = 0
    detail: dict[str, Any] = {}
