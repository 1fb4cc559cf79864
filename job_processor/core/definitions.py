"""The user's declarations, validated at the boundary (pydantic): JobDef, CronDef, Backoff,
Limit, and the event Subscriber."""

from __future__ import annotations

import datetime as dt
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .cron_text import (
    check_cron_string,
    check_timezone,
)
from .errors import (
    InvalidArgumentError,
    InvalidDefinitionError,
    InvalidFieldsError,
    field_errors,
)
from .limit_keys import check_key, fill_limit_key, key_fields
from .retention import check_keep
from .sensitive_names import DEFAULT_SENSITIVE_FIELDS, fields_forms, name_is_sensitive
from .settings import tag_problem
from .values import is_utf8

Concurrency = Literal["concurrent", "exclusive"]
#: How an event is delivered to a subscriber: see `Subscriber`.
Mode = Literal["async", "sync", "serial"]
#: max_attempts of a resumable job when not given: a crash counts as an attempt.
RESUMABLE_DEFAULT_ATTEMPTS = 3
#: Set (True) on an `on_job_exited` that must happen, whatever it takes (a built-in step, such
#: as a serial chain's next delivery): a call that times out or meets an outage leaves it owed,
#: with no owner, and a live worker's next sweep calls it again, until it succeeds; any other
#: error is recorded as failed, as for any hook.
HOOK_RETRIED_MARK = "job_processor_hook_retried"
#: An on_job_exited carrying this attribute (a predicate of the job's document) is owed only
#: for the jobs it accepts (a subscriber's chain hook: only for deliveries that carry a chain,
#: whatever the mode this process declares the subscriber in).
HOOK_WHEN_MARK = "job_processor_hook_when"

#: The longest duration a definition may give: a year (in seconds, and in minutes).
_YEAR_S = 365 * 24 * 3600
#: A limit's concurrency or rate at most (a 32-bit integer: far past any real limit).
_MOST_SLOTS = 2**31 - 1
_YEAR_MIN = 365 * 24 * 60


def _check_callable(value: Any, field: str, params: str) -> Any:
    """A function that can be called with the parameters named in `params` ("job, signal")."""
    if value is None:
        return value
    if not callable(value):
        raise ValueError(f"{field} must be a function (async def or plain def), got {value!r}")
    call = value if inspect.isroutine(value) or isinstance(value, partial) else value.__call__
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        raise ValueError(
            f"{field} {getattr(value, '__name__', value)!r} is a generator function (it "
            "yields): calling it runs none of its body, so it would end at once, done; return "
            "the value instead of yielding it"
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return value
    args = [object()] * len(params.split(","))
    try:
        signature.bind(*args)
    except TypeError:
        raise ValueError(
            f"{field} must accept ({params}); "
            f"{getattr(value, '__name__', value)!r} takes {signature}"
        ) from None
    return value


class Checked(BaseModel):
    """A definition's model built directly (`JobDef(...)`, `Backoff(...)`, `Limit(...)`,
    `Subscriber(...)`): bad input raises InvalidDefinitionError (a JobProcessorError), naming
    each field and the fix, instead of pydantic's ValidationError."""

    if not TYPE_CHECKING:  # type checkers keep the signature pydantic derives from the fields

        def __init__(self, /, *args: Any, **data: Any) -> None:
            if args:  # JobDef(send_email): a definition takes its fields by name only
                name = type(self).__name__
                first = next(iter(type(self).model_fields), "...")
                example = getattr(args[0], "__name__", None) or "..."
                raise InvalidFieldsError(
                    f"{name} takes its fields by name only: {name}({first}={example}, ...), "
                    f"not {name}({example})",
                    [("(positional)", f"use {first}=")],
                )
            try:
                super().__init__(**data)
            except ValidationError as exc:
                fields = _fields(exc, type(self))
                message = f"{type(self).__name__}(...): " + "; ".join(_shown(fields))
                raise InvalidFieldsError(message, fields) from None


class Backoff(Checked):
    """Delay before retry n (n = failures so far, from 1): fixed base; linear base*n;
    exponential base*2**(n-1); capped at max_seconds; jitter draws uniformly in [delay/2, delay]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fixed", "linear", "exponential"] = "exponential"
    base_seconds: float = Field(default=2, gt=0, le=_YEAR_S, allow_inf_nan=False)
    max_seconds: float | None = Field(default=600, gt=0, le=_YEAR_S, allow_inf_nan=False)
    jitter: bool = True

    @field_validator("base_seconds", "max_seconds", mode="before")
    @classmethod
    def _numbers(cls, v: Any, info: Any) -> Any:
        return not_a_bool(v, info)


def not_a_bool(v: Any, info: Any) -> Any:
    """A number field given True or False (pydantic would read 1 or 0): refused."""
    if isinstance(v, bool):
        raise ValueError(f"{info.field_name} must be a number, got {v!r}")
    return v


class Limit(Checked):
    """A cluster-wide limit shared by every job whose JobDef names the same `key`: at most
    `concurrency` runs at once across all worker processes, and at most `rate` starts per
    `per_seconds` (a sliding window). Enforced in MongoDB, correct under crashes.

    A key with `{field}` placeholders is a limit per value: `Limit(key="tenant:{tenant_id}",
    concurrency=2)` gives each tenant its own limit, the key filled from the job's payload when
    it is scheduled (`key_for`); each resulting key is created on first use and removed when
    idle, and a worker claims fairly across them (a full key never holds back another)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    # bounded: stored in MongoDB (a number past its 64-bit integers cannot be written)
    concurrency: int | None = Field(default=None, ge=1, le=_MOST_SLOTS)
    rate: int | None = Field(default=None, ge=1, le=_MOST_SLOTS)
    per_seconds: float | None = Field(default=None, gt=0, le=_YEAR_S, allow_inf_nan=False)

    _numbers = field_validator("concurrency", "rate", "per_seconds", mode="before")(not_a_bool)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_key(v)

    @property
    def fields(self) -> tuple[str, ...]:
        """The payload fields a templated key is filled from (empty: one key for all)."""
        return key_fields(self.key)

    @property
    def templated(self) -> bool:
        return bool(self.fields)

    def key_for(self, payload: Any) -> str:
        """The limit key of a job with this payload (see `fill_limit_key`)."""
        return fill_limit_key(self.key, payload)

    def for_key(self, key: str) -> Limit:
        """This limit under one resulting key (a templated limit's, for one value)."""
        return self if key == self.key else self.model_copy(update={"key": key})

    @model_validator(mode="after")
    def _some_limit(self) -> Limit:
        if self.concurrency is None and self.rate is None:
            raise ValueError("give concurrency=N, rate=R with per_seconds=S, or both")
        if (self.rate is None) != (self.per_seconds is None):
            raise ValueError("rate and per_seconds go together: rate=100, per_seconds=60")
        return self


class JobDef(Checked):
    """How one kind of job runs.

    handler(job, signal): async def, or a plain function (run in a thread).
    on_job_exited(job): called for each terminal exit (finished, errored, killed), at least once
    (recorded in the job; see docs/guide.md), bounded by `on_job_exited_timeout` seconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    handler: Callable[..., Any]
    on_job_exited: Callable[..., Any] | None = None
    on_job_exited_timeout: float = Field(default=60, gt=0, le=_YEAR_S, allow_inf_nan=False)
    """Seconds the hook may take; past that it is recorded as failed ("timed out")."""
    resumable: bool = False
    tag: str | None = None
    concurrency: Concurrency = "concurrent"
    max_runtime_in_minutes: float | None = Field(
        default=None, gt=0, le=_YEAR_MIN, allow_inf_nan=False
    )
    max_attempts: int | None = Field(default=None, ge=1, le=2**63 - 1)
    """Failed attempts allowed before the job is errored for good (1 = no retry). A crash of the
    worker counts as a failed attempt. Default: 1, or 3 for a resumable job (so that it resumes
    from its checkpoint after up to two crashes)."""
    backoff: Backoff = Backoff()
    keep_finished: bool | int | dt.timedelta | None = None
    """How long finished (and skipped) jobs are kept: a timedelta, the n most recently created
    of this name, False (deleted as soon as the retention floor allows) or True (forever).
    None: the processor's default (1 day)."""
    keep_failed: bool | int | dt.timedelta | None = None
    """The same for errored and killed jobs. None: the processor's default (30 days)."""
    limit: Limit | None = None
    """A cluster-wide concurrency and/or rate limit shared with the jobs naming the same key."""
    payload_model: type[BaseModel] | None = None
    """A pydantic model for the payload: schedule_job validates against it (the error names the
    job and the field) and the handler receives `job.payload` as an instance of it."""
    sensitive_fields: tuple[str, ...] = ()
    """Payload and checkpoint keys (dotted paths for nested ones: "card.number") that operator
    tools (job_processor.admin, the CLI, the dashboard) never show: replaced by "[redacted]".
    Handlers see them as usual."""

    @field_validator("sensitive_fields")
    @classmethod
    def _sensitive(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for path in v:
            if not isinstance(path, str) or not path.strip() or any(not p for p in path.split(".")):
                raise ValueError(
                    f"sensitive_fields entries must be payload keys or dotted paths such as "
                    f"'card.number', got {path!r}"
                )
        return v

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("handler is required: give the function that runs the job")
        return _check_callable(v, "handler", "job, signal")

    @field_validator("on_job_exited")
    @classmethod
    def _hook(cls, v: Any) -> Any:
        return _check_callable(v, "on_job_exited", "job")

    _numbers = field_validator(
        "on_job_exited_timeout", "max_runtime_in_minutes", "max_attempts", mode="before"
    )(not_a_bool)

    @field_validator("keep_finished", "keep_failed", mode="before")
    @classmethod
    def _keep(cls, v: Any, info: Any) -> Any:
        return check_keep(v, info.field_name)

    @field_validator("payload_model")
    @classmethod
    def _payload_model(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, type) and issubclass(v, BaseModel)):
            raise ValueError(f"payload_model must be a pydantic BaseModel class, got {v!r}")
        return v

    @property
    def attempts(self) -> int:
        """max_attempts with its default resolved."""
        if self.max_attempts is not None:
            return self.max_attempts
        return RESUMABLE_DEFAULT_ATTEMPTS if self.resumable else 1

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("tag must be a non-empty string, or None for 'any worker'")
        problem = None if v is None else tag_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _no_secret_in_a_limit_key(self) -> JobDef:
        """A limit key filled from a sensitive field would show its values wherever limits are
        shown (the metrics, `status`, every job's `limit_key`), unmasked."""
        if self.limit is None:
            return self
        named = set(self.sensitive_fields)
        by_name = fields_forms(DEFAULT_SENSITIVE_FIELDS)
        for f in self.limit.fields:
            if f in named or name_is_sensitive(f, by_name):
                raise ValueError(
                    f"limit key {self.limit.key!r}: placeholder {{{f}}} names a sensitive "
                    "field, whose values the key would show unmasked (metrics, status, each "
                    "job's limit_key): key the limit by a field that is not secret, e.g. an "
                    "account id"
                )
        return self


class CronDef(JobDef):
    """A job that runs on a schedule. `cron_string` has 5 fields, or 6 with seconds first."""

    cron_string: str
    checkin_margin: float = Field(
        default=5, gt=0, le=_YEAR_MIN, allow_inf_nan=False, description="minutes"
    )
    timezone: str = "UTC"

    _margin = field_validator("checkin_margin", mode="before")(not_a_bool)

    @field_validator("cron_string")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron_string(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("payload_model")
    @classmethod
    def _task_payload(cls, v: Any) -> Any:
        """A cron task's payload is always {}: a model that refuses it errors every task."""
        if isinstance(v, type) and issubclass(v, BaseModel):
            try:
                v.model_validate({})
            except ValidationError as exc:
                raise ValueError(
                    f"a cron task's payload is always {{}}, which {v.__name__} refuses "
                    f"({field_errors(exc.errors())}): give each of its fields a default, or "
                    "drop payload_model"
                ) from None
        return v


def _shown(fields: list[tuple[str, str]]) -> list[str]:
    return [f"field {field!r}: {msg}" for field, msg in fields]


def _parts(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    return _shown(_fields(exc, model))


def _fields(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    for err in exc.errors():
        at = ".".join(str(p) for p in err["loc"])
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, InvalidFieldsError):  # raised by our own __init__, already explained
            parts += [(f"{at}.{field}" if at else field, msg) for field, msg in inner.fields]
            continue
        field = at or "(definition)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][0]), list(model.model_fields), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown key{hint}; allowed keys are {', '.join(model.model_fields)}"
            if model is JobDef and err["loc"] and err["loc"][0] in CronDef.model_fields:
                msg += f" ({err['loc'][0]!r} belongs to a CronDef: declare it in crons={{...}})"
        elif isinstance(err.get("input"), dt.timedelta) and err["loc"]:
            msg += _a_number_of(str(err["loc"][-1]))
        parts.append((field, msg))
    return parts


#: The durations a definition takes as a number of minutes (the others: seconds).
_IN_MINUTES = frozenset({"checkin_margin", "max_runtime_in_minutes"})


def _a_number_of(field: str) -> str:
    """The fix for a timedelta given to a duration field that takes a number."""
    if field in _IN_MINUTES:
        return " (a number of minutes, not a timedelta: td.total_seconds() / 60)"
    if field.endswith(("_seconds", "timeout")):
        return " (a number of seconds, not a timedelta: td.total_seconds())"
    return ""


def _explain(
    kind: str, name: str, exc: ValidationError, model: type[BaseModel]
) -> InvalidDefinitionError:
    return InvalidDefinitionError(f"{kind} {name!r}: " + "; ".join(_parts(exc, model)))


def _a_mapping(kind: str, value: Any, example: str) -> Mapping[str, Any]:
    """`jobs=` / `crons=` as a dict of name -> definition (a list failed with AttributeError)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidDefinitionError(
            f"{kind} must be a dict of name -> definition, got {type(value).__name__}: "
            f"{kind}={example}"
        )
    return value


def parse_jobs(jobs: Mapping[str, Any] | None) -> dict[str, JobDef]:
    out: dict[str, JobDef] = {}
    given = _a_mapping("jobs", jobs, "{'send-email': JobDef(handler=send_email)}")
    for name, value in given.items():
        _check_name("job", name)
        if isinstance(value, CronDef):
            raise InvalidDefinitionError(f"job {name!r}: a CronDef belongs in crons={{...}}")
        _refuse_bare_function("job", name, value, "JobDef(handler={fn})")
        try:
            out[name] = value if isinstance(value, JobDef) else JobDef.model_validate(value)
        except ValidationError as exc:
            raise _explain("job", name, exc, JobDef) from None
    return out


def parse_crons(crons: Mapping[str, Any] | None) -> dict[str, CronDef]:
    out: dict[str, CronDef] = {}
    given = _a_mapping("crons", crons, "{'nightly': CronDef(cron_string='0 3 * * *', ...)}")
    for name, value in given.items():
        _check_name("cron", name)
        _refuse_bare_function("cron", name, value, 'CronDef(cron_string="0 3 * * *", handler={fn})')
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
            raise _explain("cron", name, exc, CronDef) from None
    return out


def _refuse_bare_function(kind: str, name: str, value: Any, wrap: str) -> None:
    """jobs={"send-email": send_email}: the handler itself where its definition goes."""
    if callable(value) and not isinstance(value, type | BaseModel | Mapping):
        fn = getattr(value, "__name__", None) or type(value).__name__
        raise InvalidDefinitionError(
            f"{kind} {name!r}: got the function {fn!r}, not a definition: wrap it, "
            + wrap.format(fn=fn)
        )


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidDefinitionError(f"{kind} names must be non-empty strings, got {name!r}")
    if KEY_SEPARATOR in name:  # "a" keyed "b|c" and "a|b" keyed "c" would be one dedup key
        raise InvalidDefinitionError(
            f"{kind} {name!r}: field 'name': may not contain {KEY_SEPARATOR!r} (it separates the "
            "name from the dedup key or the cron slot in unique keys); use '-', '_' or ':'"
        )


#: Job and cron names may not contain it: unique keys are "<name>|<dedup key or slot>".
KEY_SEPARATOR = "|"


# ---- events: subscribers -------------------------------------------------------------------

#: Default attempts of a subscriber's delivery (the seed: "failures retry automatically").
SUBSCRIBER_DEFAULT_ATTEMPTS = 3
#: Subscriber names may not contain these (they separate parts of delivery job names and keys).
RESERVED_CHARS = (":", "|")


class Subscriber(Checked):
    """One reaction to an event: `Subscriber("send-email", handler=send_email, mode="async")`.

    handler(event, signal): async def, or a plain function (run in a thread). Its deliveries
    are jobs named "<event>:<name>" with these job options.
    mode: "async" (emit returns once the event is stored), "sync" (emit waits for this
    delivery to end and raises if it failed), "serial" (async, but the serial subscribers of an
    event run one after another, in declaration order).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    handler: Callable[..., Any]
    mode: Mode = "async"
    max_attempts: int = Field(default=SUBSCRIBER_DEFAULT_ATTEMPTS, ge=1, le=2**63 - 1)
    backoff: Backoff = Backoff()
    tag: str | None = None
    max_runtime_in_minutes: float | None = Field(
        default=None, gt=0, le=_YEAR_MIN, allow_inf_nan=False
    )

    _numbers = field_validator("max_attempts", "max_runtime_in_minutes", mode="before")(not_a_bool)

    def __init__(
        self, name: str | None = None, handler: Callable[..., Any] | None = None, /, **data: Any
    ) -> None:
        """`Subscriber("email", send_email, mode="serial")`: the name and the handler may be
        given by position, as the other fields by keyword."""
        for field_name, given in (("name", name), ("handler", handler)):
            if given is None:
                continue
            if field_name in data:
                raise TypeError(f"Subscriber(): {field_name} given twice (by position and keyword)")
            data[field_name] = given
        super().__init__(**data)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("subscriber names must be non-empty strings")
        if not is_utf8(v):
            raise ValueError(f"subscriber name {v!r} is not valid text: it holds a lone surrogate")
        bad = [c for c in RESERVED_CHARS if c in v]
        if bad:
            raise ValueError(
                f"subscriber name {v!r} may not contain {' or '.join(map(repr, bad))} "
                "(they separate the parts of delivery job names); use '-' or '_'"
            )
        return v

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: Any) -> Any:
        return _check_callable(v, "handler", "event, signal")

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("tag must be a non-empty string, or None for 'any worker'")
        problem = None if v is None else tag_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


def parse_subscribers(
    subscribers: Mapping[str, Sequence[Subscriber | Mapping[str, Any]]] | None,
) -> dict[str, list[Subscriber]]:
    """Validate `init_job_processor(subscribers=...)`: event name -> list of Subscriber."""
    out: dict[str, list[Subscriber]] = {}
    if subscribers is None:
        return out
    if not isinstance(subscribers, Mapping):
        raise InvalidDefinitionError(
            "subscribers must be a dict of event name -> list of Subscriber, got "
            f"{type(subscribers).__name__}"
        )
    for event, subs in subscribers.items():
        check_event_name(event, InvalidDefinitionError)
        if isinstance(subs, Subscriber | Mapping) or not isinstance(subs, Sequence):
            raise InvalidDefinitionError(
                f"subscribers of event {event!r} must be a list of Subscriber, got "
                f"{type(subs).__name__}"
            )
        parsed: list[Subscriber] = []
        for i, sub in enumerate(subs):
            if isinstance(sub, Subscriber):
                parsed.append(sub)
                continue
            if not isinstance(sub, Mapping):
                raise InvalidDefinitionError(
                    f"event {event!r}, subscriber #{i}: expected a Subscriber, got {sub!r}"
                )
            try:
                parsed.append(Subscriber.model_validate(sub))
            except ValidationError as exc:
                label = sub.get("name", f"#{i}")
                fields = field_errors(exc.errors(), "(subscriber)")
                raise InvalidDefinitionError(
                    f"event {event!r}, subscriber {label!r}: {fields}"
                ) from None
        names = [s.name for s in parsed]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidDefinitionError(
                f"event {event!r}: subscriber names must be unique, {dupes} appear twice"
            )
        out[event] = parsed
    return out


def check_event_name(name: Any, error: type[Exception] = InvalidArgumentError) -> str:
    if not isinstance(name, str) or not name.strip():
        raise error(f"event names must be non-empty strings, got {name!r}")
    if "|" in name:
        raise error(f"event name {name!r} may not contain '|'")
    if not is_utf8(name):  # a lone surrogate (a non-UTF-8 argv or file name): bson refuses it
        raise error(f"event name {name!r} is not valid text: it holds a lone surrogate")
    return name
