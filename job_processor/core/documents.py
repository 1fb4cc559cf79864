"""Pure document building: every job, worker and update document the storage layer writes.

No I/O here. Each builder writes every field (the test servers treat a missing field and null
alike in places; see docs/testing.md), and the "only while active" fields (`claim_name`,
`exclusive_key`, `dedup_key`) are set and `$unset` by the same builders that change the status,
so the unique sparse indexes and the claim index always agree with the status.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

from .clock import as_utc
from .flows import NEVER_DUE, uncounted_dependencies
from .outcome import Outcome
from .runs import last_run
from .status import HOOKED, JobStatus, check_transition

Doc = dict[str, Any]
S = JobStatus

#: Run records kept on a job.
HISTORY_LIMIT = 20

#: What a payload, a checkpoint or a result may weigh: BSON's 16 MB document limit, less room
#: for the rest of the job document.
MAX_PAYLOAD_BYTES = 15 * 1024 * 1024


def epoch_ms(value: dt.datetime) -> int:
    """`due_ms`: scheduled_for as an integer, the field claims filter and sort on. Integers compare
    the same on every server (nx-27017 stores a `$set` date as text, which breaks `$in` + range)."""
    return int(as_utc(value).timestamp() * 1000)


class _Ids:
    """Run, end, kill, retry and hook ids: a random 64-bit prefix per process (drawn again
    after a fork) and a counter, in base 36. They only need to differ between the writes of one
    job (and between the runs holding one limit's slots); 13 to 16 characters instead of an
    ObjectId's 24 on every claim and final write, and no ObjectId to build per call."""

    def __init__(self) -> None:
        self.pid = -1
        self.prefix = ""
        self.count = 0

    def next(self) -> str:
        if self.pid != os.getpid():
            self.pid, self.count = os.getpid(), 0
            self.prefix = _base36(int.from_bytes(os.urandom(8), "big")).rjust(13, "0")
        self.count += 1
        return self.prefix + _base36(self.count)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


_IDS = _Ids()


def new_id() -> str:
    return _IDS.next()


#: Processes that write without a worker document (a web app that only schedules, a CLI) are
#: "client-<pid>-<id>": their liveness cannot be read, so a hook they own is taken over only
#: once it has had time to finish (see `engine.hooks`).
CLIENT_PREFIX = "client-"


def new_client_id() -> str:
    return f"{CLIENT_PREFIX}{os.getpid()}-{ObjectId()}"


def is_client(owner: str | None) -> bool:
    return owner is not None and owner.startswith(CLIENT_PREFIX)


def dedup_key(name: str, key: str) -> str:
    """Dedup keys are scoped by job name: "a" keyed "k" and "b" keyed "k" never collide."""
    return f"{name}|{key}"


def slot_key(name: str, slot: dt.datetime) -> str:
    """One task per cron slot, ever: "<cron>|<slot in UTC, ms>"."""
    return f"{name}|{as_utc(slot).isoformat(timespec='milliseconds')}"


# ---- jobs: creation -----------------------------------------------------------------------


def new_job(
    name: str,
    payload: Mapping[str, Any],
    *,
    now: dt.datetime,
    scheduled_for: dt.datetime | None = None,
    tag: str | None = None,
    priority: int = 0,
    exclusive: bool = False,
    job_type: str = "simple",
    extra: Mapping[str, Any] | None = None,
    key: str | None = None,
    max_attempts: int = 1,
    resumable: bool = False,
    limit_key: str | None = None,
) -> Doc:
    """A pending job document, lean: a field that holds its default (None, 0, False, an empty
    list, "simple") is left out, and readers (`Job.read`) fill the defaults in. What queries
    select on is always written: `status`, `claim_name` (only while claimable), `priority` (the
    claim sorts on it), `due_ms`, `created_at`; and the active-only unique keys."""
    when = scheduled_for or now
    doc: Doc = {
        "_id": ObjectId(),
        "name": name,
        "status": S.PENDING.value,
        "claim_name": name,
        "payload": dict(payload),
        "priority": priority,
        "scheduled_for": when,
        "due_ms": epoch_ms(when),
        "created_at": now,
    }
    optional = {
        "type": job_type if job_type != "simple" else None,
        "tag": tag,
        "key": key,
        "max_attempts": max_attempts if max_attempts != 1 else None,
        "resumable": True if resumable else None,
        "limit_key": limit_key,
    }
    doc |= {k: v for k, v in optional.items() if v is not None}
    doc |= dict(extra or {})
    if exclusive:
        doc["exclusive_key"] = name
    if key is not None:
        doc["dedup_key"] = dedup_key(name, key)
    return doc


def cron_task(
    name: str,
    *,
    slot: dt.datetime,
    now: dt.datetime,
    margin: dt.timedelta,
    tag: str | None,
    exclusive: bool,
    max_attempts: int,
    resumable: bool,
) -> Doc:
    """The pending task of one cron slot."""
    extra = {
        "trigger": "schedule",
        "start_deadline": slot + margin,
        "cron_slot_key": slot_key(name, slot),
        "attempt": 0,  # the missed-task pass selects the tasks that never started by it
    }
    return _cron_job(name, now, slot, tag, exclusive, max_attempts, resumable, extra)


def _cron_job(
    name: str,
    now: dt.datetime,
    scheduled_for: dt.datetime | None,
    tag: str | None,
    exclusive: bool,
    max_attempts: int,
    resumable: bool,
    extra: Doc,
) -> Doc:
    return new_job(
        name,
        {},
        now=now,
        scheduled_for=scheduled_for,
        tag=tag,
        exclusive=exclusive,
        job_type="cron_task",
        max_attempts=max_attempts,
        resumable=resumable,
        extra=extra,
    )


def as_missed(task: Doc, now: dt.datetime, expires_at: dt.datetime | None = None) -> Doc:
    """A cron slot that was not started within its margin, recorded as skipped "missed"."""
    check_transition(None, S.SKIPPED)
    doc = {k: v for k, v in task.items() if k not in {"exclusive_key", "dedup_key", "claim_name"}}
    doc |= {"status": S.SKIPPED.value, "skip_reason": "missed", "ended_at": now}
    return doc | ({"expires_at": expires_at} if expires_at is not None else {})


def as_skipped(doc: Doc, holder_id: Any, expires_at: dt.datetime | None = None) -> Doc:
    """An exclusive job whose name already has an active job: recorded as skipped (kept like a
    finished job, until `expires_at`), under the `_id` chosen for the job (a retried write of it
    is recognised). Without `expires_at` (a producer that does not know the name's retention,
    or one that keeps it), `expiry_pending`: a worker's sweep applies the name's retention, as
    for a job skipped by a failed dependency."""
    check_transition(None, S.SKIPPED)
    dropped = {"exclusive_key", "dedup_key", "claim_name"}
    expiry = {"expires_at": expires_at} if expires_at is not None else {"expiry_pending": True}
    return (
        {k: v for k, v in doc.items() if k not in dropped}
        | expiry
        | {
            "status": S.SKIPPED.value,
            "skip_reason": "exclusive",
            "conflicting_job_id": holder_id,
            "ended_at": doc["created_at"],
            "worker_id": None,
            "run_id": None,
            "run_started_at": None,
            "attempt": 0,
        }
    )


def as_running(doc: Doc, worker_id: str, now: dt.datetime, run_id: str | None = None) -> Doc:
    """For run_job: a new document claimed at insert by the calling process."""
    check_transition(None, S.RUNNING)
    out = {k: v for k, v in doc.items() if k != "claim_name"}
    return out | {
        "status": S.RUNNING.value,
        "worker_id": worker_id,
        "run_id": run_id or new_id(),
        "run_started_at": now,
        "attempt": 1,
    }


# ---- jobs: claim, checkpoint, end of a run -------------------------------------------------


#: The claim's sort: priority first (descending), then due time, then the id (creation order
#: within a producer process; across processes, by the second).
CLAIM_SORT: list[tuple[str, int]] = [("priority", -1), ("due_ms", 1), ("_id", 1)]


def claim_filter(names: list[str], now: dt.datetime, as_or: bool = False) -> Doc:
    """Claimable jobs of these names, due now. `claim_name` exists only while the job is pending
    or paused, so one `$in` on it is both the status and the name condition.

    `as_or`: the same condition as an `$or` of one `$eq` per name, each with the due bound, and
    one name as one `$eq` (`ServerProfile.in_as_or`: a server that evaluates `$in` row by row
    and reads an explicit `$eq`, not a bare value, as an index lookup)."""
    due = {"$lte": epoch_ms(now)}
    if not as_or:
        return {"claim_name": {"$in": names}, "due_ms": due}
    if len(names) == 1:
        return {"claim_name": {"$eq": names[0]}, "due_ms": due}
    return {"$or": [{"claim_name": {"$eq": name}, "due_ms": due} for name in names]}


def claim_update(
    worker_id: str, now: dt.datetime, run_id: str | None = None, limit_key: str | None = None
) -> Doc:
    """`run_id` and `limit_key`: given when a limit slot was reserved for this run (the slot's
    holder has the run's id, so whoever ends the run gives that slot back)."""
    check_transition(S.PENDING, S.RUNNING)
    check_transition(S.PAUSED, S.RUNNING)
    fields: Doc = {
        "status": S.RUNNING.value,
        "worker_id": worker_id,
        "run_id": run_id or new_id(),
        "run_started_at": now,
    }
    if limit_key is not None:
        fields["limit_key"] = limit_key
    return {
        "$set": fields,
        "$unset": {"claim_name": ""},
        "$inc": {"attempt": 1},
    }


#: What a claim's reply leaves out. The claim returns the job as it was before its update
#: (the worker knows what the update sets, so it need not come back), without its status (the
#: update replaces it) and its log lines (shown to people, never read by a run). Its claim
#: name comes back: a job another program wrote with a `name` other than its `claim_name` is
#: told apart (`claimed_doc`), and errored, not run as the other job.
CLAIM_PROJECTION: Doc = {"status": 0, "logs": 0}


def claimed_doc(reply: Doc, update: Doc) -> Doc:
    """The claimed job: the claim's reply (the document before the claim, without what
    CLAIM_PROJECTION leaves out) with the claim's update applied. A `claim_name` other than
    its `name` stays in this copy (not in the database: the claim removed it), for the worker
    to error the job (`misnamed`)."""
    out = applied(reply, update)
    if misnamed(reply):
        out["claim_name"] = reply["claim_name"]
    return out


def misnamed(doc: Doc) -> bool:
    """A job claimed under a `claim_name` other than its `name` (another program wrote it):
    running it as its `name` would bypass that name's tag and limits."""
    claim_name = doc.get("claim_name")
    return claim_name is not None and claim_name != doc.get("name")


def applied(doc: Doc, update: Doc) -> Doc:
    """`doc` after `update` (the $set / $unset / $inc these builders write), computed here: a
    batch claim or a grouped final write that matched every document need not read them back."""
    out = {k: v for k, v in doc.items() if k not in update.get("$unset", {})}
    out |= update.get("$set", {})
    for key, n in update.get("$inc", {}).items():
        out[key] = (out.get(key) or 0) + n
    for key, push in update.get("$push", {}).items():  # {"$each": [...], "$slice": -n}
        both = [*(out.get(key) or []), *push["$each"]]
        out[key] = both[push["$slice"] :] if "$slice" in push else both
    return out


def history_entry(claimed: Doc, outcome: Outcome, now: dt.datetime) -> Doc:
    """One run's record (its error only when it has one: readers show None)."""
    entry = {
        "attempt": claimed.get("attempt"),
        "worker_id": claimed.get("worker_id"),
        "started_at": claimed.get("run_started_at"),
        "ended_at": now,
        "status": outcome.status.value,
    }
    if outcome.error:
        entry["error"] = outcome.error.splitlines()[0][:500]
    return entry


def with_history(doc: Doc, entry: Doc) -> list[Doc]:
    past = doc.get("history")  # not a list: written by another program (the run is errored)
    return [*(past if isinstance(past, list) else []), entry][-HISTORY_LIMIT:]


def end_filter(claimed: Doc, outcome: Outcome) -> Doc:
    """The final write applies only while this run still owns the job. An outcome that a kill
    request should override (a retry, a pause, an error) also requires that no kill was
    requested meanwhile: if one was, the write matches nothing and the caller decides again."""
    query: Doc = {"_id": claimed["_id"], "status": S.RUNNING.value, "run_id": claimed["run_id"]}
    if outcome.status not in (S.KILLED, S.FINISHED):
        query["kill_requested_at"] = _unset_as_seen(claimed.get("kill_requested_at"))
    if (outcome.status in HOOKED or outcome.status == S.SKIPPED) and not claimed.get(
        "has_dependents"
    ):
        # a job scheduled after this one since its claim (a cron task claimed too late is
        # skipped: it counts for its dependents too): the write matches nothing, the
        # caller reads the job once and writes again knowing it (its end settles them).
        # `None` (absent or null: the field is absent or true), as `kill_requested_at`: 15
        # bytes less than `$exists: False`; not `$ne: true`, which nx-27017 does not match
        # on a missing field in an update's filter (storage.compat)
        query["has_dependents"] = _unset_as_seen(claimed.get("has_dependents"))
    return query


def _unset_as_seen(value: Any) -> Any:
    """The condition "still unset" on a field the job held as `value`: None (absent or null),
    or the very false value another program wrote there (`false`, `0`, `""`), which `None`
    would never match: the write would miss for ever and the job stay `running`."""
    return None if value or value is None else value


def end_update(
    claimed: Doc,
    outcome: Outcome,
    now: dt.datetime,
    *,
    end_id: str,
    writer: str | None,
    duration_ms: int | None = None,
) -> Doc:
    """running -> outcome.status, in one update. A terminal status `$unset`s the active-only
    keys and records `on_job_exited` as owed by `writer` (when the job has a hook).

    Lean: what holds its default is left out (an output's None result or error, failures that
    did not change, the record of a hook the job does not have, keys it does not hold); readers
    fill the defaults in (`Job.read`). `updated_at` is always set: the end is the last change."""
    check_transition(S.RUNNING, outcome.status)
    output: Doc = {"duration_ms": duration_ms}
    if outcome.result is not None:
        output["result"] = outcome.result
    if outcome.error is not None:
        output["error"] = outcome.error
    fields: Doc = {"status": outcome.status.value, "output": output, "end_id": end_id}
    if outcome.failures != (claimed.get("failures") or 0):
        fields["failures"] = outcome.failures
    update: Doc = {"$set": fields}
    if outcome.status in (S.PAUSED, S.PENDING):  # still active: resumes, or retries later
        # it runs again: this run's record goes to history, its first start is kept
        fields["history"] = with_history(claimed, history_entry(claimed, outcome, now))
        if not outcome.started:  # claimed, never run: back as it was (a cron task that is
            update["$inc"] = {"attempt": -1}  # then late is still missed, never run late)
        elif claimed.get("started_at") is None:
            fields["started_at"] = claimed["run_started_at"]
        fields |= {"worker_id": None, "run_id": None, "claim_name": claimed["name"]}
        fields["updated_at"] = now
        if outcome.retry_at is not None:
            fields |= {"scheduled_for": outcome.retry_at, "due_ms": epoch_ms(outcome.retry_at)}
        return update
    # ended: this run's record is the job's own fields (`runs.last_run`), and a first run's
    # start its `run_started_at`; `retry_job` moves both into place before the job runs again
    if outcome.status == S.SKIPPED:  # claimed too late to run: it never started
        fields["started_at"] = None
        fields["skip_reason"] = "missed"
    # always: a checkpoint or a kill request during the run wrote `updated_at` (the claimed
    # document does not show it), and the end is the job's last change
    fields |= {"ended_at": now, "updated_at": now}
    hook = hook_owed_fields(outcome.status, outcome.hook_owed, end_id, writer, now)
    if hook.get("exit_hook") == "owed" or claimed.get("exit_hook") is not None:
        fields |= hook  # owed; or "none" over a previous exit's record
    elif outcome.status in HOOKED:  # written, not left to readers: `{"$ne": "owed"}` matches
        fields["exit_hook"] = "none"  # no missing field on nx-27017 (purge, retention queries)
    if outcome.expires_at is not None:
        # a job with dependents is kept until they have counted it (the sweep that finds them
        # settled renames the field: `FlowRecords.mark_settled`)
        key = "expires_after_settle" if claimed.get("has_dependents") else "expires_at"
        fields[key] = outcome.expires_at
    held = [k for k in ("exclusive_key", "dedup_key") if k in claimed]
    if held:
        update["$unset"] = dict.fromkeys(held, "")
    return update


def hook_owed_fields(
    status: JobStatus, owed: bool, hook_id: str, writer: str | None, now: dt.datetime
) -> Doc:
    """What a terminal write records about on_job_exited: owed by `writer`, or nothing to do."""
    if status not in HOOKED or not owed:
        state = None if status not in HOOKED else "none"
        return {"exit_hook": state, "exit_hook_id": None, "exit_hook_owner": None}
    return {
        "exit_hook": "owed",
        "exit_hook_id": hook_id,
        "exit_hook_owner": writer,
        "exit_hook_at": now,
        "exit_hook_error": None,
    }


# ---- jobs: kill and retry ------------------------------------------------------------------


def run_of(doc: Mapping[str, Any]) -> tuple[Any, Any]:
    """A job document's status and attempt: what an action decided on (a bulk retry's
    listing) and must find unchanged."""
    return doc.get("status"), doc.get("attempt") or 0


def at_attempt(attempt: int) -> Doc:
    """A filter on the job's run being `attempt` (0: never claimed, `attempt` unset included:
    a bare insert another program made)."""
    return {"attempt": {"$in": [0, None]}} if attempt == 0 else {"attempt": attempt}


def kill_update(now: dt.datetime, writer: str | None, kill_id: str | None = None) -> Doc:
    """pending | paused | waiting (or a bare insert not adopted yet) -> killed. `kill_id`
    (recorded as the job's `end_id` and hook id): a kill retried after a lost reply recognises
    its own write."""
    check_transition(None, S.KILLED)
    check_transition(S.PENDING, S.KILLED)
    check_transition(S.PAUSED, S.KILLED)
    check_transition(S.WAITING, S.KILLED)
    hook_id = kill_id or new_id()
    return {
        "$set": {
            "status": S.KILLED.value,
            "kill_requested_at": now,
            "ended_at": now,
            "updated_at": now,
            "worker_id": None,
            "run_id": None,
            "end_id": hook_id,
            "output": {"result": None, "error": "killed", "duration_ms": None},
            **hook_owed_fields(S.KILLED, True, hook_id, writer, now),
        },
        "$unset": {"exclusive_key": "", "dedup_key": "", "claim_name": ""},
    }


def retry_update(current: Doc, now: dt.datetime, exclusive: bool) -> Doc:
    """errored | killed -> pending now: attempts counted afresh, history and checkpoint kept,
    the exclusive / dedup keys restored (a duplicate-key error means another job holds them).
    A cron task that never started gets a fresh start deadline (its margin, from now): a retry
    runs it, where the old deadline would record it as missed."""
    check_transition(S.ERRORED, S.PENDING)
    check_transition(S.KILLED, S.PENDING)
    fields: Doc = {
        "status": S.PENDING.value,
        "claim_name": current["name"],
        "scheduled_for": now,
        "due_ms": epoch_ms(now),
        "updated_at": now,
        "ended_at": None,
        "failures": 0,
        "worker_id": None,
        "run_id": None,
        "kill_requested_at": None,
    }
    deadline = fresh_deadline(current, now)
    if deadline is not None:
        fields["start_deadline"] = deadline
    last = last_run(current)
    if last is not None:  # its record was the job's own fields: they change with the next run
        fields["history"] = with_history(current, last)
    if current.get("started_at") is None and current.get("run_started_at") is not None:
        fields["started_at"] = current["run_started_at"]
    if exclusive:
        fields["exclusive_key"] = current["name"]
    if current.get("key") is not None:
        fields["dedup_key"] = dedup_key(current["name"], current["key"])
    uncounted = uncounted_dependencies(current)
    if uncounted and not current.get("failed_dependency"):
        # killed while it waited: it waits again (the caller counts those that ended
        # meanwhile); one errored by a failed dependency (policy "error") runs: the operator
        # retries it to run it anyway
        check_transition(S.KILLED, S.WAITING)
        fields |= {
            "status": S.WAITING.value,
            "due_ms": NEVER_DUE,
            "waiting_on": len(set(uncounted)),
        }
    # active again: nothing may expire it (its next end sets a new expiry; a job with
    # dependents goes through the sweep's settling again, which applies that expiry)
    # the last run's output is in `history` now: a pending job shows no old error
    held = ("expires_at", "expires_after_settle", "dependents_settled", "output")
    unset = dict.fromkeys(held, "")
    return {"$set": fields, "$unset": unset}


def fresh_deadline(current: Doc, now: dt.datetime) -> dt.datetime | None:
    """A never-started cron task's start deadline moved to now plus its margin (the time its
    slot allowed it), or None when it has none to move."""
    deadline, slot = current.get("start_deadline"), current.get("scheduled_for")
    if current.get("type") != "cron_task" or current.get("started_at") is not None:
        return None
    if not isinstance(deadline, dt.datetime) or not isinstance(slot, dt.datetime):
        return None
    return now + max(as_utc(deadline) - as_utc(slot), dt.timedelta(0))


def run_now_update(now: dt.datetime) -> Doc:
    """A pending job scheduled for later becomes due now (no status change: the filter requires
    pending and a due time still in the future)."""
    return {"$set": {"scheduled_for": now, "due_ms": epoch_ms(now), "updated_at": now}}


def run_now_foreign_update(now: dt.datetime) -> Doc:
    """A job another program inserted as the minimal document (no status until its first
    claim), due later, becomes due now. Only its due time: it stays minimal, so that its first
    claim still fills in the rest (`foreign.completion`, which derives `scheduled_for` from
    `due_ms`: one it was given, now past, goes)."""
    return {"$set": {"due_ms": epoch_ms(now)}, "$unset": {"scheduled_for": ""}}


def manual_cron_task(
    name: str,
    *,
    now: dt.datetime,
    tag: str | None,
    exclusive: bool,
    max_attempts: int,
    resumable: bool,
) -> Doc:
    """A cron run outside its schedule (trigger "manual"): no slot, no start deadline."""
    extra = {"trigger": "manual", "start_deadline": None}
    return _cron_job(name, now, None, tag, exclusive, max_attempts, resumable, extra)


# ---- workers -------------------------------------------------------------------------------


def new_worker(
    now: dt.datetime,
    worker_tags: list[str] | None,
    instance_id: str | None,
    concurrency: int,
    names: list[str],
    worker_timeout: float | None = None,
    paused: list[str] | None = None,
    definitions: Mapping[str, str] | None = None,
    crons: list[str] | None = None,
    zone_rules: list[list[str]] | None = None,
) -> Doc:
    """`worker_timeout` is recorded so that a process without the settings (the CLI, a
    dashboard) can tell whether this worker is alive; `definitions`, name -> the digest of its
    definition here, so that live workers that disagree on a name are seen; `crons`, the names
    among `names` it defines as crons (it registers and fires those); `zone_rules`, their zones'
    [zone, digest, source] (`engine.zone_rules`)."""
    host = socket.gethostname()
    return {
        "_id": f"{host}-{os.getpid()}-{ObjectId()}",  # unique per process start
        "hostname": host,
        "pid": os.getpid(),
        "instance_id": instance_id,
        "tags": worker_tags,
        "concurrency": concurrency,
        "names": names,
        "started_at": now,
        "last_seen": now,
        "worker_timeout": worker_timeout,
        # the paused names, kept here by pause/resume and read with each heartbeat
        "paused": sorted(paused or []),
        "definitions": dict(definitions or {}),
        "crons": sorted(crons or []),
        "zone_rules": zone_rules or [],
    }
