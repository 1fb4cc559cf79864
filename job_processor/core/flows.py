"""Dependencies between jobs (`schedule_job(..., after=[...])`): pure.

A job scheduled after others is inserted `waiting`: claimable by name (`claim_name`) but never
due (`due_ms` is `NEVER_DUE`), with `after` (its dependencies' ids, in order), `deps` (each
dependency's id -> "waiting", then the status it ended with), `waiting_on` (how many have not
ended) and `on_dependency_failure`. Each dependency carries `has_dependents`.

When a dependency ends, one update per outcome applies to every job waiting on it
(`dependency_ended`), each filtered on `deps.<id>: "waiting"` so that it counts once however
many processes apply it: finished (or failed, with policy "run") -> recorded, `waiting_on` - 1;
failed with "skip" -> the job is skipped, naming the dependency; with "error" -> errored. Then
one update releases those with nothing left to wait for (`released`): due now. A dependency
that ends before its dependent is registered is applied by the registering process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

from bson import ObjectId

from .status import JobStatus, check_transition

Doc = dict[str, Any]
S = JobStatus

#: `due_ms` of a waiting job: later than any date (a claim never takes it).
NEVER_DUE = 2**62

Policy = Literal["skip", "run", "error"]
POLICIES: tuple[str, ...] = ("skip", "run", "error")

#: The statuses a dependency ends with (a failure, unless "finished").
ENDED = frozenset({"finished", "errored", "killed", "skipped"})


def waiting_fields(after: Sequence[ObjectId], policy: str) -> Doc:
    """What a job scheduled after `after` adds to its document."""
    check_transition(None, S.WAITING)
    return {
        "status": S.WAITING.value,
        "due_ms": NEVER_DUE,
        "after": [str(d) for d in after],  # text: nx-27017 matches no ObjectId in an array
        "deps": {str(d): "waiting" for d in after},
        "waiting_on": len(set(after)),
        "on_dependency_failure": policy,
    }


def uncounted_dependencies(doc: Doc) -> list[str]:
    """The ids of the dependencies a job has not counted yet (`deps` values "waiting")."""
    deps = doc.get("deps")
    return [d for d, state in deps.items() if state == "waiting"] if isinstance(deps, dict) else []


def dependency_ended(dep_id: ObjectId, status: str, now: dt.datetime) -> list[tuple[Doc, Doc]]:
    """(filter, update) pairs to apply, with `update_many`, to the jobs waiting on `dep_id`,
    which ended with `status`."""
    key = f"deps.{dep_id}"
    base: Doc = {"after": str(dep_id), "status": S.WAITING.value, key: "waiting"}
    counted: Doc = {"$set": {key: status}, "$inc": {"waiting_on": -1}}
    if status == S.FINISHED.value:
        return [(base, counted)]
    why = f"dependency {dep_id} {status}"
    check_transition(S.WAITING, S.SKIPPED)
    check_transition(S.WAITING, S.ERRORED)
    skipped = {
        "$set": {
            key: status,
            "status": S.SKIPPED.value,
            "skip_reason": "dependency",
            "failed_dependency": str(dep_id),
            "expiry_pending": True,  # its name's retention: a worker's sweep applies it
            "ended_at": now,
            "updated_at": now,
            "output": {"result": None, "error": why},
        },
        "$unset": {"claim_name": "", "exclusive_key": "", "dedup_key": ""},
    }
    errored = {
        "$set": {
            key: status,
            "status": S.ERRORED.value,
            "failed_dependency": str(dep_id),
            "ended_at": now,
            "updated_at": now,
            "output": {"result": None, "error": f"{why}: not run (on_dependency_failure='error')"},
            "exit_hook": "owed",
            "exit_hook_id": str(ObjectId()),
            "exit_hook_owner": None,
            "exit_hook_at": now,
        },
        "$unset": {"claim_name": "", "exclusive_key": "", "dedup_key": ""},
    }
    return [
        (base | {"on_dependency_failure": "run"}, counted),
        (base | {"on_dependency_failure": "skip"}, skipped),
        (base | {"on_dependency_failure": "error"}, errored),
    ]


def counted_at_once(job_id: ObjectId, finished: Sequence[ObjectId]) -> tuple[Doc, Doc]:
    """(filter, update) counting these finished dependencies for one waiting job at once: only
    if it still waits on every one of them (else each is counted on its own)."""
    query: Doc = {"_id": job_id, "status": S.WAITING.value}
    query |= {f"deps.{d}": "waiting" for d in finished}
    update = {
        "$set": {f"deps.{d}": S.FINISHED.value for d in finished},
        "$inc": {"waiting_on": -len(finished)},
    }
    return query, update


def released_where(selector: Doc, now: dt.datetime) -> tuple[Doc, Doc]:
    """(filter, update) releasing the waiting jobs `selector` picks that wait on nothing more
    (every dependency counted): pending and due now. Also what the sweep runs for the jobs a
    process counted but did not release (it died, or lost MongoDB, between the two updates)."""
    check_transition(S.WAITING, S.PENDING)
    query = selector | {"status": S.WAITING.value, "waiting_on": {"$lte": 0}}
    ms = int(now.timestamp() * 1000)
    return query, {"$set": {"status": S.PENDING.value, "due_ms": ms, "scheduled_for": now}}
