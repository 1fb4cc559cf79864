"""Documents other programs wrote: what a worker fills in on a bare or minimal insert, and the
updates that error a job no worker can run (an unknown name, a field of the wrong type, a due
time that can never come). Pure, like `documents`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from .documents import Doc, S, misnamed, new_job
from .status import check_transition


def incomplete(doc: Doc) -> bool:
    """Inserted by another program, its first claim: without the dates every job scheduled
    here has (`created_at`, `scheduled_for`), which a minimal insert may give one of."""
    return "created_at" not in doc or "scheduled_for" not in doc


def due_time(due_ms: Any) -> dt.datetime | None:
    """The time a `due_ms` another program wrote stands for, as readers show it (`models`):
    None for one that is no number (text, a date, a bool) or out of a datetime's range."""
    if not isinstance(due_ms, int | float) or isinstance(due_ms, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(due_ms / 1000, tz=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


def completion(doc: Doc, definition: Any, now: dt.datetime) -> Doc:
    """The fields a job inserted by another program (the minimal `{name, claim_name, due_ms,
    payload}`) lacks, from its definition: written on its first claim, after which it is a job
    like any other. Only missing fields are given; wrong ones are left for validation to report."""
    due = doc.get("due_ms")
    when = (
        dt.datetime.fromtimestamp(due / 1000, tz=dt.UTC)
        if isinstance(due, int | float) and not isinstance(due, bool)
        else now
    )
    oid = doc.get("_id")
    created = oid.generation_time if isinstance(oid, ObjectId) else now
    full = new_job(
        str(doc.get("name")),
        {},
        now=now,
        scheduled_for=when,
        tag=getattr(definition, "tag", None),
        max_attempts=definition.attempts if definition is not None else 1,
        resumable=bool(getattr(definition, "resumable", False)),
        limit_key=_limit_key_of(definition, doc.get("payload")),
    ) | {"created_at": created}
    skip = {"_id", "claim_name", "exclusive_key", "dedup_key", "due_ms"}
    return {k: v for k, v in full.items() if k not in doc and k not in skip}


def _limit_key_of(definition: Any, payload: Any) -> str | None:
    """A foreign insert's limit key: filled from its payload (a per-value limit), else the
    limit's own key (it then shares one limit with the jobs that lack the field)."""
    limit = getattr(definition, "limit", None)
    if limit is None:
        return None
    try:
        return str(limit.key_for(payload))
    except ValueError:
        return str(limit.key)


def unknown_name_update(name: str, now: dt.datetime, expires_at: dt.datetime | None = None) -> Doc:
    """pending -> errored: a job of a name no worker has defined, past the grace period."""
    error = (
        f"unknown job name {name!r}: no worker defines it (a typo, or a job removed from the "
        "code); define it and retry the job"
    )
    return unclaimable_update(error, now, expires_at)


def unknown_hook_error(name: str, grace_seconds: float) -> str:
    """Why an owed on_job_exited was given up: no worker has defined its job's name."""
    return (
        f"not called: no worker has defined {name!r} for {grace_seconds:g} s "
        "(unknown_name_grace: a typo, or a name forgotten with `names forget`)"
    )


#: The fields a claim increments: another program's document must hold numbers there.
COUNTED = ("attempt",)


def uncountable(doc: Doc) -> str | None:
    """Why a claim cannot apply to `doc` (a field it increments is not a number), or None."""
    for key in COUNTED:
        if key not in doc:
            continue  # a claim creates it
        value = doc[key]
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return (
                f"invalid job document: {key} is {value!r} ({type(value).__name__}), it must be "
                "a number (or left out)"
            )
    return None


def undue_filters(names: list[str], inserted_before: dt.datetime) -> list[Doc]:
    """Claimable jobs of these names that can never be due: `due_ms` missing (or null), text,
    or a date; inserted before `inserted_before` (each bounded on the claim index)."""
    old = {"_id": {"$lt": ObjectId.from_datetime(inserted_before)}}
    wrong: list[Any] = [None, {"$type": "string"}, {"$type": "date"}]
    return [{"claim_name": {"$in": names}, "due_ms": w} | old for w in wrong]


def undue(value: Any) -> str:
    """Why a job whose `due_ms` is `value` (not a number) is never due."""
    got = "missing" if value is None else f"{value!r} ({type(value).__name__})"
    return (
        f"invalid job document: due_ms is {got}, it must be a number: the due time in "
        "milliseconds since the epoch (e.g. Date.now() in mongosh); the job could never be due"
    )


def unclaimable_update(error: str, now: dt.datetime, expires_at: dt.datetime | None = None) -> Doc:
    """pending -> errored without running: a job no claim can take, with why. It never ran, so
    no on_job_exited is owed; it expires like a failed job (`expires_at`)."""
    check_transition(S.PENDING, S.ERRORED)
    fields: Doc = {
        "status": S.ERRORED.value,
        "output": {"result": None, "error": error, "duration_ms": None},
        "ended_at": now,
        "updated_at": now,
        "exit_hook": None,
    }
    if expires_at is not None:
        fields["expires_at"] = expires_at
    return {"$set": fields, "$unset": {"claim_name": "", "exclusive_key": "", "dedup_key": ""}}


def bad_name(doc: Doc) -> str:
    """Why a claimed job is invalid when no definition runs it: its `name` is not its
    `claim_name` (`documents.misnamed`), or is missing or not a job this worker defines."""
    if isinstance(doc.get("name"), str) and misnamed(doc):
        return (
            f"invalid job document: its name {doc.get('name')!r} is not its claim_name "
            f"{doc.get('claim_name')!r} (they must be the same job name)"
        )
    return (
        f"invalid job document: its name {doc.get('name')!r} is missing or not a job this "
        "worker defines (name and claim_name must be the same job name)"
    )
