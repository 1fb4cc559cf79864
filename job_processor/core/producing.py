"""What a producer does before anything is written, and how it waits for an ending: pure.

- `Template`: what a job name's definition decides for each new job (tag, exclusive, attempts,
  resumable, limit, payload model), from a `JobDef` or from the registry's record of one.
- `new_job_doc`: one validated pending job document, its `_id` chosen here (so that a write
  retried after a lost reply is recognised: a duplicate `_id` means the first attempt landed).
- `JobSpec` and `batch_items`: the items of `schedule_jobs`, each validated as `schedule_job`
  validates, the errors naming the item's index.
- `WaitPacing`: the polling backoff of `wait_for` (at most one read per second on average over
  any 5 s, after the first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pydantic import BaseModel, ValidationError

from . import documents as D
from . import flows as F
from . import values as V
from .clock import to_millis
from .definitions import JobDef
from .errors import (
    InvalidArgumentError,
    InvalidPayloadError,
    JobArgumentError,
    JobProcessorError,
    field_errors,
)
from .limit_keys import fill_limit_key
from .payload_fields import accepted_keys, misspelled
from .payload_forms import form_of, not_read_back

Doc = dict[str, Any]

#: The job statuses `wait_for` returns on.
ENDED = frozenset({"finished", "errored", "killed", "skipped"})


@dataclass(frozen=True)
class JobSpec:
    """One item of `schedule_jobs`: `JobSpec(name, payload, key=..., delay=...)` (a plain
    `(name, payload)` tuple is the same with the defaults)."""

    name: str
    payload: Mapping[str, Any] | BaseModel | None = None
    key: str | None = None
    priority: int | None = None
    delay: dt.timedelta | float | None = None
    scheduled_for: dt.datetime | None = None
    tag: str | None = None
    after: Sequence[Any] = ()
    """Jobs this one waits for: ids or Jobs, or earlier items of the same batch (their index,
    or the JobSpec itself): a whole flow in one call."""
    on_dependency_failure: str = "skip"

    def __post_init__(self) -> None:
        after = self.after
        if isinstance(after, Iterable) and not isinstance(after, Sequence | Mapping | str | bytes):
            object.__setattr__(self, "after", tuple(after))  # a generator is read more than once


@dataclass(frozen=True)
class Template:
    """What a name's definition decides for each of its new jobs."""

    tag: str | None = None
    exclusive: bool = False
    attempts: int = 1
    resumable: bool = False
    limit_key: str | None = None
    payload_model: type[BaseModel] | None = None
    known: bool = True
    """False for a name no worker has registered (a JobClient without jobs= writes it as is)."""

    @classmethod
    def of(cls, definition: JobDef) -> Template:
        return cls(
            tag=definition.tag,
            exclusive=definition.concurrency == "exclusive",
            attempts=definition.attempts,
            resumable=definition.resumable,
            limit_key=definition.limit.key if definition.limit else None,
            payload_model=definition.payload_model,
        )

    @classmethod
    def registered(cls, row: Mapping[str, Any]) -> Template:
        """From the registry's record of a definition (no payload model: workers check it)."""
        attempts = row.get("max_attempts")
        return cls(
            tag=row.get("tag") if isinstance(row.get("tag"), str) else None,
            exclusive=row.get("concurrency") == "exclusive",
            attempts=attempts if isinstance(attempts, int) and attempts >= 1 else 1,
            resumable=bool(row.get("resumable", False)),
            limit_key=row.get("limit_key") if isinstance(row.get("limit_key"), str) else None,
        )


def checked_payload(name: str, model: type[BaseModel] | None, payload: Any) -> Doc:
    """The payload as stored: validated by the definition's model when it has one (the errors
    name the field), then a dict BSON can hold, with no naive datetime, that fits."""
    if model is not None:
        if isinstance(payload, BaseModel) and not isinstance(payload, model):
            raise InvalidPayloadError(
                f"job {name!r}: payload must be a {model.__name__}, got {type(payload).__name__}"
            )
        try:
            value = payload if isinstance(payload, model) else model.model_validate(payload)
        except ValidationError as exc:
            fields = field_errors(exc.errors(), "(payload)") + _misspelled(model, payload, exc)
            raise InvalidPayloadError(
                f"job {name!r}: payload does not match {model.__name__}: {fields}"
            ) from None
        try:
            payload, differing = form_of(model, value)
        except InvalidPayloadError as exc:
            raise InvalidPayloadError(f"job {name!r}: {exc}") from None
        except RecursionError:
            raise InvalidPayloadError(f"job {name!r}: payload {V.TOO_DEEP}") from None
        except ValueError as exc:  # pydantic's dump: "Circular reference detected", ...
            raise InvalidPayloadError(f"job {name!r}: payload cannot be stored: {exc}") from None
        # what the handler reads back: the stored form through the model
        back = None if differing else V.read_back(model, payload)
        V.check_model_datetimes("job", name, value, back)
        stored = V.checked_payload("job", name, payload, D.MAX_PAYLOAD_BYTES)
        if differing and type(value) is not model and not _model_differs(model, value):
            raise InvalidPayloadError(
                f"job {name!r}: payload is a {type(value).__name__}, a subclass of "
                f"{model.__name__}, which does not read it back as given "
                f"({', '.join(repr(f) for f in differing)}): pass a {model.__name__}"
            )
        if differing:  # after the checks that say why a value cannot be stored (NaN)
            raise InvalidPayloadError(f"job {name!r}: {not_read_back(model, differing)}")
        return stored
    return V.checked_payload("job", name, payload, D.MAX_PAYLOAD_BYTES)


def _model_differs(model: type[BaseModel], value: BaseModel) -> list[str]:
    """What the model itself would not read back of the fields a subclass instance gives it
    (strict mode, say): then the model is the cause, not the subclass."""
    base = model.model_construct(**{k: getattr(value, k) for k in model.model_fields})
    return form_of(model, base)[1]


def _misspelled(model: type[BaseModel], payload: Any, exc: ValidationError) -> str:
    """Required fields missing beside close keys the model does not read (a typo)."""
    accepted = accepted_keys(model)
    if accepted is None or not isinstance(payload, Mapping):
        return ""
    missing = [
        str(e["loc"][0])
        for e in exc.errors()
        if e.get("type") == "missing" and len(e.get("loc") or ()) == 1
    ]
    ignored = [k for k in payload if isinstance(k, str) and k not in accepted]
    return misspelled(missing, ignored)


def due_at(name: str, scheduled_for: Any, delay: Any, now: dt.datetime) -> dt.datetime:
    """When the job is due: `scheduled_for` (aware), or now + `delay` (a timedelta or seconds,
    not negative), or now; never both."""
    if delay is not None:
        if scheduled_for is not None:
            raise InvalidArgumentError(
                f"job {name!r}: give delay or scheduled_for, not both (delay counts from now)"
            )
        if isinstance(delay, dt.timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            try:
                seconds = float(delay)
            except OverflowError:  # an int past a float's range: too long, said below
                seconds = float("inf")
        else:
            raise InvalidArgumentError(
                f"job {name!r}: delay must be a timedelta or a number of seconds, got "
                f"{type(delay).__name__} {delay!r}"
            )
        if seconds != seconds:
            raise InvalidArgumentError(
                f"job {name!r}: delay must be a number of seconds, got {delay!r} (not a number)"
            )
        if seconds < 0:
            raise InvalidArgumentError(f"job {name!r}: delay must not be negative, got {delay!r}")
        try:
            return to_millis(now + dt.timedelta(seconds=seconds))
        except OverflowError:  # inf, or past year 9999
            raise InvalidArgumentError(
                f"job {name!r}: delay {delay!r} is too long (the job would be due after year "
                "9999); give a delay in seconds or a timedelta of a finite, reachable length"
            ) from None
    if scheduled_for is None:
        return now
    if not isinstance(scheduled_for, dt.datetime):
        seconds = isinstance(scheduled_for, int | float | dt.timedelta) and not isinstance(
            scheduled_for, bool
        )
        hint = f"; for a delay, pass delay={scheduled_for!r}" if seconds else ""
        raise InvalidArgumentError(
            f"job {name!r}: scheduled_for must be a timezone-aware datetime, got "
            f"{type(scheduled_for).__name__} {scheduled_for!r}{hint}"
        )
    if scheduled_for.tzinfo is None or scheduled_for.utcoffset() is None:
        raise InvalidArgumentError(
            f"job {name!r}: scheduled_for {scheduled_for.isoformat()} has no timezone; pass an "
            "aware datetime, e.g. datetime.now(UTC) + timedelta(hours=1) or "
            "datetime(2030, 1, 1, 9, tzinfo=ZoneInfo('Europe/Paris')), or delay=3600"
        )
    try:
        return to_millis(scheduled_for)
    except OverflowError:  # aware, but its UTC instant is before year 1 or after year 9999
        raise InvalidArgumentError(
            f"job {name!r}: scheduled_for {scheduled_for.isoformat()} is outside the range a "
            "datetime can hold in UTC (years 1 to 9999): give a time within it"
        ) from None


def new_job_doc(
    name: str,
    template: Template,
    payload: Any,
    *,
    now: dt.datetime,
    scheduled_for: Any = None,
    delay: Any = None,
    priority: Any = None,
    key: Any = None,
    max_attempts: Any = None,
    tag: Any = None,
    after: Sequence[ObjectId] = (),
    on_dependency_failure: Any = "skip",
) -> Doc:
    """A validated pending job document (`waiting`, after `after`); raises before anything is
    written."""
    body = checked_payload(name, template.payload_model, payload)
    if after and (scheduled_for is not None or delay is not None):
        raise InvalidArgumentError(
            f"job {name!r}: a job scheduled after others starts when they have ended; give "
            "after, or scheduled_for / delay, not both"
        )
    if on_dependency_failure not in F.POLICIES:
        raise InvalidArgumentError(
            f"job {name!r}: on_dependency_failure must be one of "
            f"{', '.join(F.POLICIES)}, got {on_dependency_failure!r}"
        )
    when = due_at(name, scheduled_for, delay, now)
    priority = 0 if priority is None else priority
    if not isinstance(priority, int) or isinstance(priority, bool) or not V.fits_int64(priority):
        raise JobArgumentError(
            f"job {name!r}: priority must be an integer within 64 bits (MongoDB's), got "
            f"{priority!r}"
        )
    if key is not None and (not isinstance(key, str) or not key):
        raise JobArgumentError(f"job {name!r}: key must be a non-empty string, got {key!r}")
    attempts = template.attempts if max_attempts is None else max_attempts
    if (
        not isinstance(attempts, int)
        or isinstance(attempts, bool)
        or attempts < 1
        or not V.fits_int64(attempts)
    ):
        raise JobArgumentError(
            f"job {name!r}: max_attempts must be an integer >= 1 within 64 bits, got "
            f"{max_attempts!r}"
        )
    if tag is not None and tag != template.tag and not template.known:
        raise InvalidArgumentError(
            f"job {name!r}: tag {tag!r} given for a name no worker has registered: the "
            "definition's tag decides which workers run its jobs, and it is not known here; "
            "leave tag out (or pass jobs= to JobClient, or start a worker that defines it first)"
        )
    if tag is not None and tag != template.tag:
        raise InvalidArgumentError(
            f"job {name!r}: tag {tag!r} differs from its definition's ({template.tag!r}); "
            "workers claim jobs by name, and the definition's tag decides which workers run "
            "them: define another job name for the other tag"
        )
    try:  # a per-value limit ("tenant:{tenant_id}"): its key, from the payload
        limit_key = fill_limit_key(template.limit_key, body) if template.limit_key else None
    except ValueError as exc:
        raise InvalidPayloadError(f"job {name!r}: {exc}") from None
    doc = D.new_job(
        name,
        body,
        now=now,
        scheduled_for=when,
        tag=template.tag,
        priority=priority,
        exclusive=template.exclusive,
        key=key,
        max_attempts=attempts,
        resumable=template.resumable,
        limit_key=limit_key,
    )
    return doc | F.waiting_fields(after, on_dependency_failure) if after else doc


def after_ids(after: Any, name: str = "") -> list[ObjectId]:
    """`after=[...]`: job ids (text or ObjectId) or Jobs, as ObjectIds, in order, once each."""
    if after is None:
        return []
    if isinstance(after, str | bytes | Mapping) or not isinstance(after, Iterable):
        raise InvalidArgumentError(
            f"job {name!r}: after must be a list of job ids or Jobs, got {type(after).__name__}"
        )
    out: list[ObjectId] = []
    seen: set[ObjectId] = set()
    for ref in after:
        oid = _job_id(ref)
        if oid is None:
            raise InvalidArgumentError(
                f"job {name!r}: after holds {ref!r}: give job ids (24 hex characters) or Jobs"
            )
        if oid not in seen:
            seen.add(oid)
            out.append(oid)
    if len(out) > MAX_AFTER:
        raise InvalidArgumentError(
            f"job {name!r}: after holds {len(out)} jobs, more than the {MAX_AFTER} one job may "
            "wait for (each is a field of its document, rewritten as each ends): wait on "
            "intermediate jobs instead, each after a part of them"
        )
    return out


#: The most jobs one job may be scheduled after (its document holds one `deps` entry per job,
#: about 72 bytes, and every dependency's end updates it).
MAX_AFTER = 10_000


def _job_id(ref: Any) -> ObjectId | None:
    ref = getattr(ref, "id", ref)  # a Job
    if isinstance(ref, ObjectId):
        return ref
    if isinstance(ref, str) and ObjectId.is_valid(ref):
        return ObjectId(ref)
    return None


def item_names(items: Any) -> list[Any]:
    """The names `schedule_jobs`' items name, as far as they can be read before validation
    (an item too malformed to name one is refused by `batch_items`)."""
    if not isinstance(items, list):
        return []
    names = []
    for item in items:
        if isinstance(item, JobSpec):
            names.append(item.name)
        elif isinstance(item, tuple | list) and item:
            names.append(item[0])
    return names


def batch_items(
    items: Iterable[Any], template_of: Callable[[str], Template], now: dt.datetime
) -> list[Doc]:
    """The documents of `schedule_jobs`' items, in order; the first invalid item raises,
    naming its index (nothing is written)."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidArgumentError(
            "schedule_jobs takes a list of (name, payload) tuples or JobSpec items, got "
            f"{type(items).__name__}"
        )
    docs: list[Doc] = []
    seen: dict[int, int] = {}  # id(JobSpec) -> its index: later items may wait on it
    for index, item in enumerate(items):
        try:
            spec = as_spec(item)
            after = _batch_after(spec, docs, seen)
            docs.append(
                new_job_doc(
                    spec.name,
                    template_of(spec.name),
                    spec.payload,
                    now=now,
                    scheduled_for=spec.scheduled_for,
                    delay=spec.delay,
                    priority=spec.priority,
                    key=spec.key,
                    tag=spec.tag,
                    after=after,
                    on_dependency_failure=spec.on_dependency_failure,
                )
            )
            seen[id(item)] = index
        except JobProcessorError as exc:  # the same error, naming the item
            exc.args = (f"item {index}: {exc}", *exc.args[1:])
            raise
    return docs


def _batch_after(spec: JobSpec, docs: list[Doc], seen: dict[int, int]) -> list[ObjectId]:
    """A JobSpec's dependencies: earlier items (by index or the JobSpec itself, now marked as
    having dependents), or jobs that exist (ids or Jobs: checked before writing)."""
    if spec.after is None:  # after=0 (item 0 without its brackets) is refused below
        return []
    if isinstance(spec.after, str | bytes | Mapping) or not isinstance(spec.after, Iterable):
        raise InvalidArgumentError(
            f"job {spec.name!r}: after must be a list (job ids, Jobs, earlier items of the "
            f"batch), got {type(spec.after).__name__}"
        )
    refs: list[Any] = []
    for ref in spec.after:
        index = ref if isinstance(ref, int) and not isinstance(ref, bool) else seen.get(id(ref))
        if index is None and isinstance(ref, JobSpec):
            raise InvalidArgumentError(
                f"job {spec.name!r}: after holds a JobSpec that is not an earlier item of this "
                "batch: a job can only wait on jobs scheduled before it"
            )
        if index is None:
            refs.append(ref)
            continue
        if not 0 <= index < len(docs):
            earlier = f"items 0 to {len(docs) - 1}" if docs else "none: it is the first item"
            raise InvalidArgumentError(
                f"job {spec.name!r}: after holds item {index}: only earlier items of the batch "
                f"can be waited on ({earlier}); a job id (text) names a job already scheduled"
            )
        if "dedup_key" in docs[index]:
            raise InvalidArgumentError(
                f"job {spec.name!r}: item {index} has a dedup key: a job other items wait on "
                "cannot have one (its key could give another job)"
            )
        docs[index]["has_dependents"] = True
        refs.append(docs[index]["_id"])
    return after_ids(refs, spec.name)


def remaining_items(items: list[Any], docs: list[Doc], failed_at: int) -> list[JobSpec]:
    """The items of a batch cut at `failed_at`, to schedule again: their `after` references to
    earlier items already written (an index, or the JobSpec itself) become those jobs' ids,
    and indexes into the rest are shifted to it."""
    firsts = zip(items[:failed_at], docs[:failed_at], strict=True)
    written = {id(item): str(doc["_id"]) for item, doc in firsts}
    renewed: dict[int, JobSpec] = {}  # an item of the rest -> its JobSpec there
    rest: list[JobSpec] = []
    for item in items[failed_at:]:
        spec = as_spec(item)
        after: list[Any] = []
        for ref in spec.after or ():
            if isinstance(ref, int) and not isinstance(ref, bool):
                after.append(str(docs[ref]["_id"]) if ref < failed_at else ref - failed_at)
            elif id(ref) in written:
                after.append(written[id(ref)])
            else:
                after.append(renewed.get(id(ref), ref))
        renewed[id(item)] = dataclasses.replace(spec, after=after) if spec.after else spec
        rest.append(renewed[id(item)])
    return rest


def as_spec(item: Any) -> JobSpec:
    if isinstance(item, JobSpec):
        return item
    if isinstance(item, tuple) and len(item) in (1, 2):
        return JobSpec(*item)
    raise InvalidArgumentError(
        f"an item is a (name, payload) tuple or a JobSpec, got {type(item).__name__} {item!r}"
    )


def keyed_once(docs: Sequence[Doc]) -> dict[int, int]:
    """Items that repeat an earlier item's dedup key, within one batch: index -> the index of
    the first (they get that item's job, as a second `schedule_job` would)."""
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for index, doc in enumerate(docs):
        key = doc.get("dedup_key")
        if key is None:
            continue
        if key in first:
            repeats[index] = first[key]
        else:
            first[key] = index
    return repeats


class WaitPacing:
    """Delays between reads while polling for a job's end: 0.1 s, 0.2 s, 0.4 s, then 1.6 s
    twice, then 1 s; never more than `per_window` reads in any `window` seconds after the first
    (one read per second on average). The two longer steps keep the fast start within that
    bound without leaving a gap: reads come at most 1.6 s apart. Pure: give it the times of the
    reads."""

    STEPS = (0.1, 0.2, 0.4, 1.6, 1.6)
    #: Kept beyond the window's edge: a read that starts a few milliseconds late, or a sleep that
    #: wakes early, never puts one read too many in a window as the server sees it.
    MARGIN = 0.05

    def __init__(self, per_window: int = 5, window: float = 5.0) -> None:
        self.per_window = per_window
        self.window = window
        self.count = 0
        """Reads recorded so far."""
        self.reads: list[float] = []
        """The reads after the first that a window may still count (the last two windows): a
        wait without a timeout reads once a second for as long as the job takes, and keeping
        every read made each call slower and the wait's memory grow (about 2.7 MB a day)."""

    def next_read(self, now: float) -> float:
        """Record a read at `now` (times never go back by more than a window); returns when
        the next may be made."""
        n = self.count
        self.count += 1
        span = self.window + self.MARGIN
        if n:  # the first read is not counted against the window
            self.reads = [t for t in self.reads if t > now - 2 * span]
            self.reads.append(now)
        later = now + (self.STEPS[n] if n < len(self.STEPS) else 1.0)
        recent = [t for t in self.reads if t > later - span]
        if len(recent) >= self.per_window:  # the oldest of them must leave the window first
            later = max(later, recent[-self.per_window] + span)
        return later
