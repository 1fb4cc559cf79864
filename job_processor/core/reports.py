"""The records read back for reports: an event's targets and deliveries, the subscriber
registry, workers and the status report; and how BSON values are made JSON-friendly
(`to_jsonable`). `models` re-exports each of them (Job and Event stay there, with
`Processor`)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal

from bson import (
    Binary,
    Code,
    DBRef,
    Decimal128,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)
from pydantic import BaseModel, ConfigDict, field_serializer, model_validator

from .clock import as_utc, iso_utc, utc_text
from .definitions import Mode
from .status import JobStatus

S = JobStatus


def to_jsonable(value: Any, *, dates: Literal["Z", "+00:00"] = "Z") -> Any:
    """BSON values that JSON has no type for, made JSON-friendly: ObjectId and UUID as text,
    bytes as base64, Decimal128 as text, datetimes as ISO 8601 in UTC ending in Z (`iso_utc`,
    as the models write their own dates), any other BSON value (a regular expression, a
    timestamp, MinKey, a DBRef, code) as Extended JSON. `dates="+00:00"`: datetimes end in
    +00:00 instead (webhook bodies: what receivers have always been sent, which Python before
    3.11 reads with `fromisoformat`)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, dates=dates) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, dates=dates) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | Binary):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal128 | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return iso_utc(value) if dates == "Z" else as_utc(value).isoformat()
    if isinstance(value, _OTHER_BSON):  # as MongoDB's (relaxed) Extended JSON writes it
        return json.loads(json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS))
    return value


def jsonable_inside(value: Any) -> Any:
    """`to_jsonable`, its datetimes kept (a model writes them as it writes its own dates): the
    fields another program wrote in a job's progress, log lines or output (an ObjectId, bytes)
    never fail `model_dump(mode="json")`, nor the JSON views and `jobs show` built on it."""
    if isinstance(value, dict):
        return {str(k): jsonable_inside(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable_inside(v) for v in value]
    return value if isinstance(value, dt.datetime) else to_jsonable(value)


#: The other values a stored document can hold that JSON has no type for.
_OTHER_BSON = (Regex, re.Pattern, Timestamp, MinKey, MaxKey, DBRef, Code)


def from_document(data: dict[str, Any]) -> dict[str, Any]:
    """A stored document as a model reads it: dates aware UTC, `_id` as the text `id`."""
    doc = {k: aware_utc(v) for k, v in data.items()}
    if "_id" in doc:
        doc["id"] = str(doc.pop("_id"))
    return doc


def aware_utc(value: Any) -> Any:
    """A datetime as aware UTC (a naive one is taken as UTC); anything else as it is."""
    return as_utc(value) if isinstance(value, dt.datetime) else value


# ---- events and their deliveries ------------------------------------------------------------


class Target(BaseModel):
    """One recipient recorded on an event when it was emitted."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["subscriber", "webhook"]
    target: str
    """The subscriber's name, or "webhook:<endpoint id>"."""
    mode: Mode | None = None
    position: int | None = None
    job_name: str
    endpoint_id: str | None = None


class Delivery(BaseModel):
    """One delivery of an event to one target: a job, or a row with no job: status "waiting"
    (still to be created: a serial subscriber whose turn has not come, or a fan-out still
    owed) or "deleted" (its job was removed by retention or a purge)."""

    model_config = ConfigDict(extra="ignore")

    job_id: str | None
    event_id: str
    target: str
    kind: Literal["subscriber", "webhook"]
    mode: Mode | None = None
    status: str
    """A JobStatus value, or "waiting" (no job yet: a serial subscriber whose turn has not
    come, or a fan-out still owed), or "deleted" (its job was removed: retention, purge)."""
    replay_id: str | None = None
    """None for the event's own deliveries; the replay's id for an explicit replay."""
    attempt: int = 0
    failures: int = 0
    max_attempts: int = 1
    error: str | None = None
    skip_reason: str | None = None
    result: Any = None
    created_at: dt.datetime | None = None
    scheduled_for: dt.datetime | None = None
    """When it runs next (a retry's time while pending)."""
    ended_at: dt.datetime | None = None
    attempts: list[dict[str, Any]] = []
    """Webhooks: one record per HTTP attempt (status_code, duration_ms, response_excerpt,
    error, at)."""
    exit_hook: str | None = None
    """The delivery job's on_job_exited record ("owed" until a serial chain's next step is
    written)."""

    @field_serializer("result", when_used="json")
    def _json_result(self, value: Any) -> Any:
        shown = to_jsonable(value)
        return attempt_in_utc(shown) if self.kind == "webhook" else shown

    @field_serializer("attempts", when_used="json")
    def _json_attempts(self, value: list[dict[str, Any]]) -> Any:
        return [attempt_in_utc(a) for a in to_jsonable(value)]

    @classmethod
    def of_job(cls, doc: Mapping[str, Any]) -> Delivery:
        payload = doc.get("payload") or {}
        output = doc.get("output") or {}
        attempts = list((doc.get("state") or {}).get("attempts") or [])
        result = output.get("result")
        finished = doc.get("status") == S.FINISHED.value
        if finished and isinstance(result, dict) and "status_code" in result:
            attempts.append(result)
        return cls(
            job_id=str(doc["_id"]),
            event_id=str(doc.get("event_id") or payload.get("event_id")),
            target=payload.get("target", ""),
            kind=payload.get("kind", "subscriber"),
            mode=payload.get("mode"),
            status=str(doc["status"]),
            replay_id=payload.get("replay_id"),
            attempt=int(doc.get("attempt") or 0),
            failures=int(doc.get("failures") or 0),
            max_attempts=int(doc.get("max_attempts") or 1),
            error=output.get("error"),
            skip_reason=doc.get("skip_reason"),
            result=result,
            created_at=aware_utc(doc.get("created_at")),
            scheduled_for=aware_utc(doc.get("scheduled_for")),
            ended_at=aware_utc(doc.get("ended_at")),
            attempts=attempts,
            exit_hook=doc.get("exit_hook"),
        )

    @classmethod
    def without_job(cls, event_id: str, target: Target, status: str) -> Delivery:
        return cls(
            job_id=None,
            event_id=event_id,
            target=target.target,
            kind=target.kind,
            mode=target.mode,
            status=status,
        )


def attempt_in_utc(record: Any) -> Any:
    """A webhook attempt's record (in its delivery job's state, and its result) as the JSON
    outputs show it: its `at`, kept as text, written as `iso_utc` writes a date (records
    stored before it was ended "+00:00")."""
    if isinstance(record, dict) and "at" in record:
        return record | {"at": utc_text(record["at"])}
    return record


class SubscriberInfo(BaseModel):
    """A registry entry, with the live workers that serve it (for status pages)."""

    model_config = ConfigDict(extra="ignore")

    event: str
    subscriber: str
    mode: Mode
    position: int
    job_name: str
    tag: str | None = None
    max_attempts: int = 1
    declared_at: dt.datetime | None = None
    declared_by: str | None = None
    live_workers: list[str] = []


# ---- workers and status reports ------------------------------------------------------------


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
    stuck_threads: int = 0
    """Plain-def handlers or hooks given up (past their grace period or timeout) whose thread is
    still running in that process."""
    crashed: str | None = None
    """Its claim loop and cron scheduler crashed (the first error): it claims nothing more,
    though its heartbeat and running jobs go on (a processor embedded in an app)."""

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        return _readable_worker(from_document(data)) if isinstance(data, dict) else data


#: What a worker document with no readable date shows: no heartbeat (it is listed dead).
_NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _readable_worker(doc: dict[str, Any]) -> dict[str, Any]:
    """A worker document as the listings read it: one another program wrote, or a damaged
    one (a `last_seen` that is no date, no hostname), is listed, as dead, never a failure of
    every listing (the sweep removes it as showing no heartbeat)."""
    out = dict(doc)
    for key in ("started_at", "last_seen"):
        if not isinstance(out.get(key), dt.datetime):
            out[key] = _NEVER
    if not isinstance(out.get("hostname"), str):
        out["hostname"] = str(out.get("hostname") or "?")
    if isinstance(out.get("pid"), bool) or not isinstance(out.get("pid"), int):
        out["pid"] = 0
    if isinstance(out.get("concurrency"), bool) or not isinstance(out.get("concurrency"), int):
        out["concurrency"] = 1
    if not isinstance(out.get("instance_id"), str | None):
        out["instance_id"] = str(out["instance_id"])
    tags = out.get("tags")
    out["tags"] = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None
    # the rest (the listings' own fields too): what does not read as its type is left out
    kept: dict[str, Callable[[Any], bool]] = {
        "crashed": lambda v: isinstance(v, str),
        "stuck_threads": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "running_jobs": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "worker_timeout": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "definitions": lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and isinstance(d, str) for k, d in v.items())
        ),
    }
    for key, readable in kept.items():
        if key in out and out[key] is not None and not readable(out[key]):
            del out[key]
    return out


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
