"""The functions behind list / show / replay of events, from a `Storage` alone.

They need no handler: a CLI or a dashboard calls them directly (`list_events`, `get_event`,
`replay_event`, `replay_events`, `list_subscribers`), and so do the processor's methods of the
same names. The delivery side (emit, fan-out, sync waits, serial chains, recovery) is in
`bus.py`. See docs/events.md.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import bson
from bson import ObjectId

from ..core import event_documents as E
from ..core.clock import Clock, SystemClock, check_window, to_millis
from ..core.definitions import check_event_name
from ..core.errors import EventNotFoundError, InvalidArgumentError, did_you_mean
from ..core.lenient import read_leniently, texts
from ..core.log import EventLog, make_log
from ..core.models import NOT_A_DOCUMENT, Delivery, Event, SubscriberInfo
from ..core.status import JobStatus
from ..core.values import INT64_MAX, checked_payload
from ..storage import Storage
from ..storage.jobs import MAX_VALUE_BYTES

Doc = dict[str, Any]
S = JobStatus

#: At most this many events per replay_events call.
REPLAY_LIMIT = 1000
#: At most this many events per list_events call.
LIST_LIMIT = 10_000


def check_payload(name: str, payload: Any) -> dict[str, Any]:
    """An event's payload: a dict (or a pydantic model) that MongoDB can store."""
    return checked_payload("event", name, payload, MAX_VALUE_BYTES)


# ---- functions for the processor, a CLI or a dashboard ---------------------------------------


def event_id_of(event_id: str | ObjectId) -> ObjectId:
    """An event id as given (a str of 24 hex characters or an ObjectId). Another type (5,
    [], True, None, bytes) is a wrong argument, InvalidArgumentError naming it, not an id no
    event has (None made a new ObjectId, 12 bytes were read as one)."""
    if isinstance(event_id, ObjectId):
        return event_id
    if not isinstance(event_id, str):
        raise InvalidArgumentError(
            f"event_id must be an event id (a str of 24 hex characters, event.id, or an "
            f"ObjectId), got a {type(event_id).__name__}"
        )
    try:
        return ObjectId(event_id)
    except bson.errors.InvalidId:
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
    check_window(out[0], out[1], "since", "until")
    return out[0], out[1]


def check_limit(limit: Any, most: int | None = None) -> int:
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
    docs = await storage.events.find(name, lo, hi, check_limit(limit, LIST_LIMIT))
    return [e for e in map(readable_event, docs) if e is not None]


def listing_window(
    name: str | None, since: Any, until: Any
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """A listing's filters checked (the name, the window's datetimes): the window to read."""
    if name is not None:
        check_event_name(name)
    return _check_window(since, until)


#: The time an event without a readable one shows (its id's when it has one).
_NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def check_listed_name(storage: Storage, name: str | None) -> None:
    """A name filter of an empty listing that no subscriber, webhook endpoint or stored event
    has is a typo: InvalidArgumentError naming it, with the closest known names (those of the
    subscribers, the endpoints and the newest events nobody listened to), instead of an empty
    listing. An endpoint listening to every event ("*") names none."""
    if not name or await storage.events.find(name, limit=1):
        return
    known = {str(r.get("event")) for r in await storage.subscribers.all()}
    for endpoint in await storage.webhooks.all():
        known |= set(texts(endpoint.get("events")))
    known.discard(E.ANY_EVENT)
    if name in known:
        return
    known |= set(await storage.events.untargeted(_NEVER))
    hint = did_you_mean(name, known)
    shown = sorted(known)
    listing = ", ".join(shown[:20]) + (f", ... ({len(shown)} in all)" if len(shown) > 20 else "")
    raise InvalidArgumentError(
        f"unknown event {name!r}{hint}: no subscriber, webhook endpoint or stored event has "
        f"it; check the name (known events: {listing or 'none'})"
    )


def readable_event(doc: Doc) -> Event | None:
    """A stored event as the listings show it (`core.lenient`): a field another program wrote
    with a wrong type (a hand edit, an older version) reads as its default; a name that is no
    text as its text ("?" for none), an emitted_at that is no date as its id's time, a payload
    that is no document as stored, under NOT_A_DOCUMENT. None, with a warning, for one that
    cannot be read even so: the listing skips it."""
    oid, name, payload = doc.get("_id"), doc.get("name"), doc.get("payload")
    fallbacks = {
        "name": "?" if name is None else str(name),
        "emitted_at": oid.generation_time if isinstance(oid, ObjectId) else _NEVER,
        "payload": {NOT_A_DOCUMENT: payload},
    }
    event = read_leniently(Event, doc, fallbacks)
    if event is None:
        make_log(None).warning("unreadable_document_skipped", collection="events", id=str(oid))
    return event


async def get_event(storage: Storage, event_id: str | ObjectId) -> Event:
    """The event with every delivery (replays included, in creation order), and its serial
    subscribers still waiting for their turn."""
    return (await event_summary(storage, event_id, 0))[0]


async def event_summary(
    storage: Storage, event_id: str | ObjectId, shown: int
) -> tuple[Event, dict[str, int]]:
    """The event with its first `shown` deliveries (every one for 0; replays included, in
    creation order) and the rows of its targets still waiting or deleted; and how many of all
    its deliveries are in each status (those rows included). An event replayed 1,000 times
    reads `shown` deliveries, one per target, and one count."""
    oid = event_id_of(event_id)
    doc = await storage.events.get(oid)
    if doc is None:
        raise EventNotFoundError(f"no event with id {str(event_id)!r}")
    event = readable_event(doc)
    if event is None:
        raise EventNotFoundError(f"event {str(event_id)!r} is stored unreadable")
    jobs = await storage.deliveries.for_event(event.id, shown)
    event.deliveries = [Delivery.of_job(j) for j in jobs]
    own = event.deliveries
    full = shown and len(jobs) >= shown
    if full:  # an own delivery made after the first `shown` (a serial one, after replays)
        seen = {j["_id"] for j in jobs}
        more = await storage.deliveries.own_for_event(event.id, len(event.targets))
        own = own + [Delivery.of_job(j) for j in more if j["_id"] not in seen]
    rows = without_jobs(event, own)
    event.deliveries += rows
    counts: dict[str, int] = {}
    for x in event.deliveries:  # in the order the rows show them
        counts[x.status] = counts.get(x.status, 0) + 1
    if full:  # every delivery counted by the server, and the rows without one
        every = await storage.deliveries.counts_for_event(event.id)
        extra = Counter(x.status for x in rows)
        counts = {s: every.get(s, 0) + extra[s] for s in [*counts, *sorted(every)]}
    return event, counts


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
    endpoints = [  # as the listings read them: `events` a list, or one text
        str(e["_id"])
        for e in await storage.webhooks.matching(name)
        if {name, E.ANY_EVENT} & set(texts(e.get("events")))
    ]
    return E.targets_of(rows, endpoints, webhook_attempts)


async def complete_fanout(storage: Storage, event: Doc, now: dt.datetime) -> list[Doc]:
    """Create the event's first deliveries (idempotent: unique delivery keys) and record the
    fan-out as done. Returns the deliveries as stored."""
    targets = list(event.get("targets") or [])
    docs = await storage.deliveries.create(E.fanout(event, targets, now=now))
    # owed; or an owed time another program left beside another `fanout` (else each sweep
    # would make this fan-out again)
    if event.get("fanout") == "owed" or "fanout_owed_at" in event:
        await storage.events.fanout_done(event["_id"], now, event.get("fanout"))
    return docs


async def complete_owed(
    storage: Storage, event: Doc, now: dt.datetime, log: EventLog, damaged: set[Any]
) -> list[Doc] | None:
    """`complete_fanout` for the recovery sweep. None, said, and its id added to `damaged`,
    for an event whose targets are not as emit writes them (another program's damaged
    document): its fan-out stays owed for a person to fix, and never crashes every sweep."""
    try:
        return await complete_fanout(storage, event, now)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        damaged.add(event["_id"])
        log.error(
            "event_fanout_unreadable",
            event_id=str(event["_id"]),
            event_name=str(event.get("name")),
            error=f"{type(exc).__name__}: {exc}"[:300],
            hint="its targets are not as emit writes them: fix or delete the event "
            "document (its fan-out stays owed until then)",
        )
        return None


def check_webhook_attempts(value: Any) -> int:
    """A replay's `webhook_attempts` (the max_attempts of each webhook delivery it makes), as
    `WebhookOptions.max_attempts` takes it: an integer from 1 to 2**63 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT64_MAX:
        raise InvalidArgumentError(
            f"webhook_attempts must be an integer from 1 to 2**63 - 1 (the attempts of each "
            f"webhook delivery the replay makes; 10 by default), got {value!r:.60}"
        )
    return value


def check_subscribers(subscribers: Any) -> list[str] | None:
    """A replay's `subscribers`: None (every target) or a list (any iterable but a mapping) of
    subscriber names and "webhook:<endpoint id>", as a list; anything else is refused naming
    the field (a lone text too: as an iterable it would be its characters)."""
    if subscribers is None:
        return None
    if isinstance(subscribers, str | bytes):
        raise InvalidArgumentError(
            f"subscribers must be a list of names, got the "
            f"{'string' if isinstance(subscribers, str) else 'bytes'} "
            f"{subscribers!r:.60}: use [{subscribers!r:.60}]"
        )
    if isinstance(subscribers, Mapping) or not isinstance(subscribers, Iterable):
        raise InvalidArgumentError(
            f"subscribers must be a list of names (subscriber names, 'webhook:<endpoint id>'), "
            f"or None for every one, got a {type(subscribers).__name__}"
        )
    chosen = list(subscribers)
    if not chosen:  # it would replay nothing, saying no subscriber is registered
        raise InvalidArgumentError(
            "subscribers is an empty list: give at least one subscriber name (or "
            "'webhook:<endpoint id>'), or None for every one"
        )
    for name in chosen:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"subscribers entries must be subscriber names or 'webhook:<endpoint id>' "
                f"(non-empty strings), got {name!r:.60}"
            )
    return chosen


def _select(targets: list[Doc], subscribers: list[str] | None, event: str) -> list[Doc]:
    if subscribers is None:
        return targets
    known = {t["target"]: t for t in targets}
    unknown = [s for s in subscribers if s not in known]
    if unknown:
        listing = ", ".join(sorted(known)) or "none"
        raise InvalidArgumentError(
            f"event {event!r} has no subscriber or enabled webhook endpoint named "
            f"{', '.join(map(repr, unknown))}{did_you_mean(str(unknown[0]), list(known))}; "
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
    check_webhook_attempts(webhook_attempts)
    chosen = check_subscribers(subscribers)
    oid = event_id_of(event_id)
    doc = await storage.events.get(oid)
    if doc is None:
        raise EventNotFoundError(f"no event with id {str(event_id)!r}")
    targets = _select(
        await current_targets(storage, doc["name"], webhook_attempts), chosen, doc["name"]
    )
    return await _replay(storage, doc, targets, clock.now())


async def _replay(
    storage: Storage, doc: Doc, targets: list[Doc], now: dt.datetime
) -> list[Delivery]:
    if not targets:
        return []
    replay_id = str(ObjectId())
    created = await storage.deliveries.create(E.fanout(doc, targets, now=now, replay_id=replay_id))
    await storage.events.replayed(doc, now)
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
    """replay_event for every event named `name` emitted in [since, until), oldest first: the
    `limit` earliest of the window (at most 1000 per call: replay a bigger window in smaller
    windows, [since, t) then [t, until), which never replays an event twice nor skips one)."""
    clock = clock or SystemClock()
    check_event_name(name)
    lo, hi = _check_window(since, until)
    most = check_limit(limit, REPLAY_LIMIT)
    check_webhook_attempts(webhook_attempts)
    chosen = check_subscribers(subscribers)
    docs = await storage.events.find(name, lo, hi, most, oldest_first=True)
    targets = _select(await current_targets(storage, name, webhook_attempts), chosen, name)
    out: list[Delivery] = []
    for doc in docs:
        out += await _replay(storage, doc, targets, clock.now())
    return out


async def list_subscribers(
    storage: Storage, *, worker_timeout: float = 30.0, clock: Clock | None = None
) -> list[SubscriberInfo]:
    """Every registered (event, subscriber), with the live workers that claim its deliveries."""
    now = (clock or SystemClock()).now()
    out: list[SubscriberInfo] = []
    for row in await storage.subscribers.all():
        info = read_leniently(SubscriberInfo, row, {"position": 0})
        if info is None:  # no event or subscriber name: nothing to show it by
            continue
        served = await storage.workers.serving(info.job_name, now, worker_timeout)
        info.live_workers = [str(w["_id"]) for w in served]
        out.append(info)
    return out


async def untargeted_warnings(storage: Storage, now: dt.datetime, hours: float = 24) -> list[str]:
    """For status pages: events emitted in the last `hours` that no subscriber or webhook
    endpoint listened to, with the closest known event names (a misspelt name, often)."""
    counts = await storage.events.untargeted(now - dt.timedelta(hours=hours))
    if not counts:
        return []
    known = {str(r["event"]) for r in await storage.subscribers.all()}
    enabled: set[str] = set(known)
    for endpoint in await storage.webhooks.all():
        names = set(texts(endpoint.get("events")))
        known |= names
        if endpoint.get("state", "enabled") == "enabled":
            enabled |= names
    out = []
    for name, n in sorted(counts.items()):
        if name in enabled or E.ANY_EVENT in enabled:  # listened to now: a replay delivers them
            advice = "something listens to it now: replay them to deliver them"
            hint = ""
        elif name in known or E.ANY_EVENT in known:  # only by endpoints disabled now
            advice = "the endpoints listening to it are disabled: enable one, then replay them"
            hint = ""
        else:
            advice = (
                "add a subscriber or endpoint and replay them, "
                "or fix the name where they are emitted"
            )
            hint = did_you_mean(name, known - {E.ANY_EVENT})
        out.append(
            f"events with no subscriber or webhook: {name!r}{hint} ({n} in the last {hours:g} h; "
            f"stored undelivered: {advice})"
        )
    return out
