"""JobDef and CronDef: the user's declarations, validated at the boundary (pydantic)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidDefinitionError

Concurrency = Literal["concurrent", "exclusive"]


def _check_callable(value: Any, field: str) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f"{field} must be a function (async def or plain def), got {value!r}")
    return value


class Backoff(BaseModel):
    """Delay before retry n (n = failures so far, from 1): fixed base; linear base*n;
    exponential base*2**(n-1); capped at max_seconds; jitter draws uniformly in [delay/2, delay]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "linear", "exponential"] = "exponential"
    base_seconds: float = Field(default=2, gt=0)
    max_seconds: float | None = Field(default=600, gt=0)
    jitter: bool = True


class JobDef(BaseModel):
    """How one kind of job runs.

    handler(job, signal): async def, or a plain function (run in a thread).
    on_job_exited(job): called once per terminal exit (finished, errored, killed, crash recovered).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    handler: Callable[..., Any]
    on_job_exited: Callable[..., Any] | None = None
    resumable: bool = False
    tag: str | None = None
    concurrency: Concurrency = "concurrent"
    max_runtime_in_minutes: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=1, ge=1)
    """Runs allowed before the job is errored for good (1 = no retry)."""
    backoff: Backoff = Backoff()

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("handler is required: give the function that runs the job")
        return _check_callable(v, "handler")

    @field_validator("on_job_exited")
    @classmethod
    def _hook(cls, v: Any) -> Any:
        return _check_callable(v, "on_job_exited")

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("tag must be a non-empty string, or None for 'any worker'")
        return v


class CronDef(JobDef):
    """A job that runs on a schedule. `cron_string` has 5 fields, or 6 with seconds first."""

    cron_string: str
    checkin_margin: float = Field(default=5, gt=0, description="minutes")
    timezone: str = "UTC"

    @field_validator("cron_string")
    @classmethod
    def _cron(cls, v: str) -> str:
        fields = v.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"cron_string {v!r} must have 5 fields (minute hour day month weekday) "
                "or 6 with seconds first"
            )
        if not croniter.is_valid(v, second_at_beginning=len(fields) == 6):
            raise ValueError(f"cron_string {v!r} is not a valid cron expression")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {v!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from exc
        return v


def _explain(kind: str, name: str, exc: ValidationError) -> InvalidDefinitionError:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(definition)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed keys are {', '.join(CronDef.model_fields)}"
        parts.append(f"field {field!r}: {msg}")
    return InvalidDefinitionError(f"{kind} {name!r}: " + "; ".join(parts))


def parse_jobs(jobs: Mapping[str, Any] | None) -> dict[str, JobDef]:
    out: dict[str, JobDef] = {}
    for name, value in (jobs or {}).items():
        _check_name("job", name)
        if isinstance(value, CronDef):
            raise InvalidDefinitionError(f"job {name!r}: a CronDef belongs in crons={{...}}")
        try:
            out[name] = value if isinstance(value, JobDef) else JobDef.model_validate(value)
        except ValidationError as exc:
            raise _explain("job", name, exc) from None
    return out


def parse_crons(crons: Mapping[str, Any] | None) -> dict[str, CronDef]:
    out: dict[str, CronDef] = {}
    for name, value in (crons or {}).items():
        _check_name("cron", name)
        try:
            if isinstance(value, CronDef):
                out[name] = value
            elif isinstance(value, JobDef):
                raise InvalidDefinitionError(
                    f"cron {name!r}: got a JobDef; use CronDef(cron_string=..., ...) or a dict"
                )
            else:
                out[name] = CronDef.model_validate(value)
        except ValidationError as exc:
            raise _explain("cron", name, exc) from None
    return out


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidDefinitionError(f"{kind} names must be non-empty strings, got {name!r}")
