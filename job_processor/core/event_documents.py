"""Pure document building for events: event documents, the targets of a fan-out, delivery jobs.

No I/O here. A *target* is one recipient of an event, recorded on the event when it is emitted:

    {"kind": "subscriber", "target": "send-email", "mode": "async", "position": 0,
     "job_name": "shipment_created:send-email", "tag": None, "max_attempts": 3}
    {"kind": "webhook", "target": "webhook:<endpoint id>", "endpoint_id": "<endpoint id>",
     "mode": None, "position": None, "job_name": "webhook-delivery", "tag": None,
     "max_attempts": 10}

A delivery is a job (built by `documents.new_job`) named after its target's `job_name`, with
`event_id` and a `delivery_key` that is unique and never unset: "<event id>|<target>|" for the
event's own deliveries, "<event id>|<target>|<replay id>" for a replay's, so the database
accepts one delivery per (event, target, replay), whoever completes the fan-out.

Serial subscribers: only the first one's delivery is created at fan-out; its payload carries
`chain`, the targets still to run after it, in declaration order. When it ends, its
`on_job_exited` (recorded as owed by the final write, so it survives a crash) creates the next
one, or records the rest as skipped ("chain_stopped") if it failed for good.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from bson import ObjectId

from . import documents as D
from .status import JobStatus, check_transition

Doc = dict[str, Any]
#: What a webhook endpoint listens to in `events` to receive every event.
ANY_EVENT = "*"
S = JobStatus

#: The job name of every webhook delivery (one delivery per endpoint and event).
WEBHOOK_JOB = "webhook-delivery"


#: Set on the handler of an event delivery's JobDef; recorded as `delivery: true` in the registry.
DELIVERY_MARK = "event_delivery"


def is_delivery(name: str, registered: Doc, subscriber_jobs: Collection[str] = ()) -> bool:
    """Whether a registered job name is one of event deliveries ('webhook-delivery',
    '<event>:<subscriber>'): such jobs are made by emit() and replays, never by hand. A
    registry document written before the mark: a delivery if a subscriber's job has its name
    (`subscriber_jobs`, from the subscribers collection)."""
    if name == WEBHOOK_JOB:
        return True
    if "delivery" in registered:
        return bool(registered["delivery"])
    return name in subscriber_jobs


def delivery_job_name(event: str, subscriber: str) -> str:
    """A subscriber's deliveries are jobs named "<event>:<subscriber>" (subscriber names have no
    ':', so the name splits back unambiguously at its last ':')."""
    return f"{event}:{subscriber}"


def webhook_target(endpoint_id: str) -> str:
    return f"webhook:{endpoint_id}"


def delivery_event_id(payload: Any) -> ObjectId | None:
    """The event a job's payload says it delivers, when it is an event's delivery (its payload
    as the fan-out writes it); None for any other job (a user's own job whose payload has a
    field named `event_id` is not one)."""
    if not isinstance(payload, Mapping):
        return None
    event_id = payload.get("event_id")
    if (
        payload.get("kind") in ("subscriber", "webhook")
        and isinstance(payload.get("event"), str)
        and isinstance(payload.get("target"), str)
        and isinstance(event_id, str)
        and ObjectId.is_valid(event_id)
    ):
        return ObjectId(event_id)
    return None


def delivery_key(event_id: str, target: str, replay_id: str | None) -> str:
    return f"{event_id}|{target}|{replay_id or ''}"


def subscriber_row(
    event: str,
    name: str,
    *,
    mode: str,
    position: int,
    tag: str | None,
    max_attempts: int,
    now: dt.datetime,
    declared_by: str,
) -> Doc:
    """The registry document of one (event, subscriber)."""
    return {
        "_id": f"{event}|{name}",
        "event": event,
        "subscriber": name,
        "mode": mode,
        "position": position,
        "job_name": delivery_job_name(event, name),
        "tag": tag,
        "max_attempts": max_attempts,
        "declared_at": now,
        "declared_by": declared_by,
    }


def subscriber_target(row: Mapping[str, Any]) -> Doc:
    return {
        "kind": "subscriber",
        "target": row["subscriber"],
        "mode": row["mode"],
        "position": row["position"],
        "job_name": row["job_name"],
        "tag": row.get("tag"),
        "max_attempts": int(row.get("max_attempts") or 1),
    }


def endpoint_target(endpoint_id: str, max_attempts: int) -> Doc:
    return {
        "kind": "webhook",
        "target": webhook_target(endpoint_id),
        "endpoint_id": endpoint_id,
        "mode": None,
        "position": None,
        "job_name": WEBHOOK_JOB,
        "tag": None,
        "max_attempts": max_attempts,
    }


def targets_of(
    rows: Iterable[Mapping[str, Any]], endpoints: Iterable[str], attempts: int
) -> list[Doc]:
    """Subscribers in declaration order, then webhook endpoints (by id)."""
    ordered = sorted(rows, key=lambda r: (r["position"], r["subscriber"]))
    return [subscriber_target(r) for r in ordered] + [
        endpoint_target(e, attempts) for e in sorted(endpoints)
    ]


def new_event(
    name: str,
    payload: Mapping[str, Any],
    *,
    key: str | None,
    now: dt.datetime,
    emitted_by: str,
    instance_id: str | None,
    targets: list[Doc],
    expires_at: dt.datetime | None = None,
) -> Doc:
    """A complete event document; its fan-out recorded as owed when it has targets. With
    `expires_at` (keep_events) a TTL index deletes it then."""
    doc: Doc = {
        "_id": ObjectId(),
        "name": name,
        "payload": dict(payload),
        "key": key,
        "emitted_at": now,
        "emitted_by": emitted_by,
        "instance_id": instance_id,
        "targets": targets,
        "fanout": "owed" if targets else "done",
        "fanout_done_at": None if targets else now,
        "replays": 0,
        "last_replayed_at": None,
    }
    if targets:
        doc["fanout_owed_at"] = now
    else:  # nobody listens: flagged for status pages (a misspelt name, often)
        doc["no_targets"] = True
    if key is not None:
        doc["dedup_key"] = f"{name}|{key}"
    if expires_at is not None:
        doc["expires_at"] = expires_at
    return doc


def delivery(
    event: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    now: dt.datetime,
    replay_id: str | None = None,
    chain: list[Doc] | None = None,
) -> Doc:
    """The pending delivery job of one target."""
    event_id = str(event["_id"])
    payload: Doc = {
        "event_id": event_id,
        "event": event["name"],
        "target": target["target"],
        "kind": target["kind"],
        "mode": target.get("mode"),
        "replay_id": replay_id,
    }
    if target["kind"] == "webhook":
        payload["endpoint_id"] = target["endpoint_id"]
    if chain is not None:
        payload["chain"] = chain
    return D.new_job(
        target["job_name"],
        payload,
        now=now,
        tag=target.get("tag"),
        max_attempts=int(target.get("max_attempts") or 1),
        extra={
            "event_id": event_id,
            "delivery_key": delivery_key(event_id, target["target"], replay_id),
        },
    )


def fanout(
    event: Mapping[str, Any],
    targets: list[Doc],
    *,
    now: dt.datetime,
    replay_id: str | None = None,
) -> list[Doc]:
    """The deliveries to create now: every async, sync and webhook target, and the first serial
    subscriber (carrying the rest of the chain)."""
    serial = sorted((t for t in targets if t.get("mode") == "serial"), key=lambda t: t["position"])
    docs = [
        delivery(event, t, now=now, replay_id=replay_id)
        for t in targets
        if t.get("mode") != "serial"
    ]
    if serial:
        docs.append(delivery(event, serial[0], now=now, replay_id=replay_id, chain=serial[1:]))
    return docs


def next_in_chain(
    event: Mapping[str, Any], chain: list[Doc], *, now: dt.datetime, replay_id: str | None
) -> Doc:
    """The delivery of the next serial subscriber, carrying the rest of the chain."""
    return delivery(event, chain[0], now=now, replay_id=replay_id, chain=chain[1:])


def carries_chain(doc: Mapping[str, Any]) -> bool:
    """A delivery whose end may create the next of a serial chain."""
    payload = doc.get("payload")
    return isinstance(payload, dict) and bool(payload.get("chain"))


def chain_stopped(
    event: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    now: dt.datetime,
    replay_id: str | None,
    reason: str,
    expires_at: dt.datetime | None = None,
) -> Doc:
    """A serial subscriber that will not run because one before it failed for good: recorded
    as a skipped delivery (holding its delivery key), with the reason, kept until `expires_at`
    (its name's retention for a skipped job; None: until a count trims it, or for ever)."""
    check_transition(None, S.SKIPPED)
    doc = delivery(event, target, now=now, replay_id=replay_id)
    doc.pop("claim_name")
    return doc | {
        "status": S.SKIPPED.value,
        "skip_reason": "chain_stopped",
        "ended_at": now,
        "output": {"result": None, "error": reason, "duration_ms": None},
        **({"expires_at": expires_at} if expires_at is not None else {}),
    }
