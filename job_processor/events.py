"""Events: Subscriber and Event, and the functions behind list/show/replay.

The functions here take a `Storage` (`await Storage.open(db)`) and need no handler: a CLI or a
dashboard calls them directly (`list_events`, `get_event`, `replay_event`, `replay_events`,
`list_subscribers`). The processor's methods of the same names call them too; the delivery
side (emit, fan-out, sync waits, serial chains, recovery) is in `bus.py`. See docs/events.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import bson
from bson import ObjectId
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from . import documents as D
from . import event_documents as E
from .clock import Clock, SystemClock, as_utc, to_millis
from .definitions import Backoff, _check_callable
from .errors import (
    EventNotFoundError,
    InvalidArgumentError,
    InvalidDefinitionError,
)
from .models import JobStatus, to_jsonable
from .storage import Storage
from .storage.jobs import MAX_VALUE_BYTES

if TYPE_CHECKING:
    from .processor import JobProcessor

Doc = dict[str, Any]
Mode = Literal["async", "sync", "serial"]
S = JobStatus

#: Default attempts of a subscriber's delivery (the seed: "failures retry automatically").
SUBSCRIBER_DEFAULT_ATTEMPTS = 3
#: At most this many events per replay_events call.
REPLAY_LIMIT = 1000


class Subscriber(BaseModel):
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
    max_attempts: int = Field(default=SUBSCRIBER_DEFAULT_ATTEMPTS, ge=1)
    backoff: Backoff = Backoff()
    tag: str | None = None
    max_runtime_in_minutes: float | None = Field(default=None, gt=0)

    def __init__(self, name: str | None = None, /, **data: Any) -> None:
        if name is not None:
            data["name"] = name
        super().__init__(**data)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("subscriber names must be non-empty strings")
        bad = [c for c in E.RESERVED_CHARS if c in v]
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
                fields = "; ".join(
                    f"field {'.'.join(str(p) for p in e['loc']) or '(subscriber)'!r}: {e['msg']}"
                    for e in exc.errors()
                )
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
    return name


def check_payload(name: str, payload: Any) -> dict[str, Any]:
    """An event's payload: a dict (or a pydantic model) that MongoDB can store."""
    return D.checked_payload("event", name, payload, MAX_VALUE_BYTES)


def _utc(value: Any) -> Any:
    return as_utc(value) if isinstance(value, dt.datetime) else value


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

    @field_serializer("result", "attempts", when_used="json")
    def _json(self, value: Any) -> Any:
        return to_jsonable(value)

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
            created_at=_utc(doc.get("created_at")),
            scheduled_for=_utc(doc.get("scheduled_for")),
            ended_at=_utc(doc.get("ended_at")),
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


class Event(BaseModel):
    """An emitted event, as stored. Subscriber handlers get one (with `delivery` set: which
    delivery this run is); `get_event` fills `deliveries`."""

    model_config = ConfigDict(extra="ignore")

    id: str
    """Stable: the `webhook-id` of its webhooks, and what idempotent receivers key on."""
    name: str
    payload: dict[str, Any]
    key: str | None = None
    emitted_at: dt.datetime
    emitted_by: str | None = None
    """The emitting process (its worker id, or a client id when it was not started)."""
    instance_id: str | None = None
    targets: list[Target] = []
    """Who it was for, recorded when it was emitted: subscribers in declaration order, then
    webhook endpoints."""
    fanout: Literal["owed", "done"] = "done"
    """"owed" until every first delivery exists (completed by emit, else by recovery)."""
    replays: int = 0
    last_replayed_at: dt.datetime | None = None
    deliveries: list[Delivery] = []
    delivery: Delivery | None = None
    """In a subscriber's handler: the delivery being run (attempt, replay_id, job_id)."""

    _processor: JobProcessor | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: _utc(v) for k, v in data.items()}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        if doc.get("payload") is None:
            doc["payload"] = {}
        return doc

    @field_serializer("payload", when_used="json")
    def _json_payload(self, value: Any) -> Any:
        return to_jsonable(value)

    @property
    def processor(self) -> JobProcessor:
        """In a handler: the processor running it (emit follow-up events from here)."""
        if self._processor is None:
            raise RuntimeError("event.processor is only available inside a subscriber handler")
        return self._processor


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


# ---- functions for the processor, a CLI or a dashboard ---------------------------------------


def event_id_of(event_id: str | ObjectId) -> ObjectId:
    if isinstance(event_id, ObjectId):
        return event_id
    try:
        return ObjectId(event_id)
    except (bson.errors.InvalidId, TypeError):
        raise EventNotFoundError(f"{event_id!r} is not an event id (24 hex characters)") from None


def _check_window(since: Any, until: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    out: list[dt.datetime | None] = []
    for label, value in (("since", since), ("until", until)):
        if value is None:
            out.append(None)
            continue
        if not isinstance(value, dt.datetime) or value.utcoffset() is None:
            raise InvalidArgumentError(
                f"{label} must be a timezone-aware datetime, got {value!r}; "
                "e.g. datetime.now(UTC) - timedelta(hours=1)"
            )
        out.append(to_millis(value))
    return out[0], out[1]


def _check_limit(limit: Any, most: int | None = None) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidArgumentError(f"limit must be a positive integer, got {limit!r}")
    if most is not None and limit > most:
        raise InvalidArgumentError(f"limit must be at most {most}, got {limit}")
    return limit


async def list_events(
    storage: Storage,
    name: str | None = None,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
) -> list[Event]:
    """Newest first, optionally one event name and a window of `emitted_at` (since inclusive,
    until exclusive). Deliveries are not filled in (use get_event)."""
    if name is not None:
        check_event_name(name)
    lo, hi = _check_window(since, until)
    docs = await storage.events.find(name, lo, hi, _check_limit(limit))
    return [Event.model_validate(d) for d in docs]


async def get_event(storage: Storage, event_id: str | ObjectId) -> Event:
    """The event with every delivery (replays included, in creation order), and its serial
    subscribers still waiting for their turn."""
    oid = event_id_of(event_id)
    doc = await storage.events.get(oid)
    if doc is None:
        raise EventNotFoundError(f"no event with id {str(event_id)!r}")
    event = Event.model_validate(doc)
    jobs = await storage.deliveries.for_event(event.id)
    event.deliveries = [Delivery.of_job(j) for j in jobs]
    event.deliveries += without_jobs(event, event.deliveries)
    return event


#: A serial delivery still in one of these states has not ended: the next one comes after it.
_NOT_ENDED = {"pending", "running", "paused"}


def without_jobs(event: Event, deliveries: Sequence[Delivery]) -> list[Delivery]:
    """The event's targets that have no delivery job of its own fan-out (replays aside):
    "waiting" while one is still to be created (the fan-out is owed; or a serial subscriber
    whose predecessor is waiting, has not ended, or ended with its hook still owed: that hook
    creates the next delivery, or records the rest of the chain as skipped), else "deleted"
    (retention or a purge removed it: finished deliveries go after `keep_finished`)."""
    own = {d.target: d for d in deliveries if d.replay_id is None}
    out: list[Delivery] = []
    before: Delivery | None = None  # the previous serial target's row
    for t in event.targets:
        row = own.get(t.target)
        if row is None:
            waits = event.fanout == "owed" or (
                t.mode == "serial"
                and before is not None
                and (
                    before.status == "waiting"
                    or before.status in _NOT_ENDED
                    # owed: the hook writes it; failed: it could not (retry that delivery)
                    or (before.job_id is not None and before.exit_hook in ("owed", "failed"))
                )
            )
            row = Delivery.without_job(event.id, t, "waiting" if waits else "deleted")
            out.append(row)
        if t.mode == "serial":
            before = row
    return out


async def current_targets(storage: Storage, name: str, webhook_attempts: int) -> list[Doc]:
    """Who an event named `name` is for now: the registry's subscribers and the enabled
    webhook endpoints listening to it (two reads)."""
    rows = await storage.subscribers.for_event(name)
    endpoints = [str(e["_id"]) for e in await storage.webhooks.matching(name)]
    return E.targets_of(rows, endpoints, webhook_attempts)


async def complete_fanout(storage: Storage, event: Doc, now: dt.datetime) -> list[Doc]:
    """Create the event's first deliveries (idempotent: unique delivery keys) and record the
    fan-out as done. Returns the deliveries as stored."""
    targets = list(event.get("targets") or [])
    docs = await storage.deliveries.create(E.fanout(event, targets, now=now))
    if event.get("fanout") == "owed":
        await storage.events.fanout_done(event["_id"], now)
    return docs


def _select(targets: list[Doc], subscribers: Sequence[str] | None, event: str) -> list[Doc]:
    if subscribers is None:
        return targets
    if isinstance(subscribers, str):
        raise InvalidArgumentError(
            f"subscribers must be a list of names, got the string {subscribers!r}: "
            f"use [{subscribers!r}]"
        )
    known = {t["target"]: t for t in targets}
    unknown = [s for s in subscribers if s not in known]
    if unknown:
        listing = ", ".join(sorted(known)) or "none"
        raise InvalidArgumentError(
            f"event {event!r} has no subscriber or enabled webhook endpoint {unknown}; "
            f"known: {listing} (webhook endpoints as 'webhook:<endpoint id>')"
        )
    wanted = set(subscribers)
    return [t for t in targets if t["target"] in wanted]


async def replay_event(
    storage: Storage,
    event_id: str | ObjectId,
    subscribers: Sequence[str] | None = None,
    *,
    webhook_attempts: int = 10,
    clock: Clock | None = None,
) -> list[Delivery]:
    """Deliver a stored event again, as new delivery jobs recorded with a replay id of their
    own (the originals are kept). `subscribers=None`: every subscriber now registered for it
    and every enabled webhook endpoint listening to it; or a list of subscriber names and
    "webhook:<endpoint id>". Selected serial subscribers run one after another again."""
    clock = clock or SystemClock()
    oid = event_id_of(event_id)
    doc = await storage.events.get(oid)
    if doc is None:
        raise EventNotFoundError(f"no event with id {str(event_id)!r}")
    targets = _select(
        await current_targets(storage, doc["name"], webhook_attempts), subscribers, doc["name"]
    )
    return await _replay(storage, doc, targets, clock.now())


async def _replay(
    storage: Storage, doc: Doc, targets: list[Doc], now: dt.datetime
) -> list[Delivery]:
    if not targets:
        return []
    replay_id = str(ObjectId())
    created = await storage.deliveries.create(E.fanout(doc, targets, now=now, replay_id=replay_id))
    await storage.events.replayed(doc["_id"], now)
    return [Delivery.of_job(d) for d in created]


async def replay_events(
    storage: Storage,
    name: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    subscribers: Sequence[str] | None = None,
    limit: int = REPLAY_LIMIT,
    webhook_attempts: int = 10,
    clock: Clock | None = None,
) -> list[Delivery]:
    """replay_event for every event named `name` emitted in [since, until), oldest first, at
    most `limit` events (at most 1000 per call: page with since/until)."""
    clock = clock or SystemClock()
    check_event_name(name)
    lo, hi = _check_window(since, until)
    docs = await storage.events.find(name, lo, hi, _check_limit(limit, REPLAY_LIMIT))
    targets = _select(await current_targets(storage, name, webhook_attempts), subscribers, name)
    out: list[Delivery] = []
    for doc in reversed(docs):
        out += await _replay(storage, doc, targets, clock.now())
    return out


async def list_subscribers(
    storage: Storage, *, worker_timeout: float = 30.0, clock: Clock | None = None
) -> list[SubscriberInfo]:
    """Every registered (event, subscriber), with the live workers that claim its deliveries."""
    now = (clock or SystemClock()).now()
    cutoff = now - dt.timedelta(seconds=worker_timeout)
    out: list[SubscriberInfo] = []
    for row in await storage.subscribers.all():
        info = SubscriberInfo.model_validate(row)
        info.live_workers = [
            str(w["_id"]) for w in await storage.workers.serving(info.job_name, cutoff)
        ]
        out.append(info)
    return out
