"""The operator's verbs on one job: kill (or request it of the running worker) and retry, each a
compare-and-set on what the caller saw. A mixin of `JobStore`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pydantic import TypeAdapter, ValidationError
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..core import documents as D
from ..core import flows as F
from ..core.errors import JobNotFoundError
from ..core.status import JobStatus
from .compat import ServerProfile, decode, decode_opt
from .job_flows import FlowRecords

Doc = dict[str, Any]
AFTER = ReturnDocument.AFTER
S = JobStatus


class JobActions(FlowRecords):
    coll: Any
    profile: ServerProfile

    async def kill(
        self,
        job_id: ObjectId,
        now: dt.datetime,
        writer: str | None,
        *,
        kill_id: str | None = None,
        retried: bool = False,
        attempt: int | None = None,
    ) -> tuple[str, Doc]:
        """Returns ("killed", doc) if this call moved a pending/paused/waiting job (or a bare
        insert not adopted yet) to killed (its on_job_exited, or the record that it has none,
        is then owed by `writer`; None: by a worker's sweep), ("requested", doc) if the job is
        running and its worker will abort it, ("ended", doc) if it had already ended; with an
        `attempt` (the run a user confirmed the kill of), ("moved", doc) if it is at another.
        `retried` after a lost reply: a job killed by this call's `kill_id` is reported as
        killed by it."""
        pin = {} if attempt is None else D.at_attempt(attempt)
        if attempt is not None:  # an attempt another program stored as text reads as a number
            # (or 0): pinned as stored when it reads as the attempt the caller saw (a claim's
            # $inc cannot move it)
            found = await self.coll.find_one({"_id": job_id}, {"attempt": 1}) or {}
            stored = found.get("attempt")
            text = stored is not None and not isinstance(stored, int | float)
            if text and _shown_attempt(stored) == attempt:
                pin = {"attempt": stored}
        for _ in range(10):
            doc = await self.coll.find_one_and_update(
                {  # None: a bare insert another program made, not adopted yet
                    "_id": job_id,
                    "status": {"$in": [S.PENDING.value, S.PAUSED.value, S.WAITING.value, None]},
                }
                | pin,
                D.kill_update(now, writer, kill_id),
                return_document=AFTER,
            )
            if doc is not None:
                return "killed", decode(doc)
            doc = await self.coll.find_one_and_update(
                {"_id": job_id, "status": S.RUNNING.value} | pin,
                {"$set": {"kill_requested_at": now, "updated_at": now}},
                return_document=AFTER,
            )
            if doc is not None:
                return "requested", decode(doc)
            doc = await self.coll.find_one({"_id": job_id})
            if doc is None:
                raise JobNotFoundError(f"no job with id {str(job_id)!r}")
            active = {s.value for s in (S.PENDING, S.PAUSED, S.RUNNING, S.WAITING)} | {None}
            if doc.get("status") not in active:
                mine = retried and kill_id is not None and doc.get("end_id") == kill_id
                return ("killed" if mine else "ended"), decode(doc)
            if attempt is not None and _shown_attempt(doc.get("attempt")) != attempt:
                return "moved", decode(doc)
            # it moved between our two updates: try again
        raise RuntimeError(f"could not kill job {job_id}: its status keeps changing")

    async def retry(
        self,
        job_id: ObjectId,
        now: dt.datetime,
        exclusive: bool,
        *,
        retry_id: str | None = None,
        retried: bool = False,
        expect: Doc | None = None,
    ) -> Doc | None:
        """errored | killed -> pending now. Raises DuplicateKeyError when another active job
        holds the exclusive / dedup key. Returns None when the job is not errored or killed, or
        when its on_job_exited is still owed (each exit's hook runs with that exit's status:
        settle it first, see `HookRunner.settle`). `retry_id` is recorded on the job: a call
        `retried` after a lost reply recognises its own write by it. `expect`: the job as the
        caller listed it; None too when it has another status or attempt now."""
        current = await self.coll.find_one({"_id": job_id}, {"payload": 0, "state": 0})
        if current is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        if retried and retry_id is not None and current.get("retry_id") == retry_id:
            return decode(await self.coll.find_one({"_id": job_id}) or current)
        if expect is not None and D.run_of(current) != D.run_of(expect):
            return None
        update = D.retry_update(decode(current), now, exclusive)
        if retry_id is not None:
            update["$set"]["retry_id"] = retry_id
        query = {
            "_id": job_id,
            "status": {"$in": [S.ERRORED.value, S.KILLED.value]},
            "exit_hook": {"$ne": "owed"},
            # the run `current` describes is still the last (each claim increments the
            # attempt): the update computed from it (history, deadlines) is right
            "attempt": current.get("attempt"),
        }
        if expect is not None:  # and the status it was listed with, as an $in: nx-27017 then
            # evaluates the filter as MongoDB does (its SQL finds `exit_hook: {$ne}` false
            # where the field is missing, as a new job's is: testing.md)
            query["status"] = {"$in": [expect.get("status")]}
        if update["$set"].get("status") == S.WAITING.value:  # killed while it waited: it waits
            # again; its dependencies are marked first, as a new job's are (`mark_dependents`)
            deps = [ObjectId(d) for d in F.uncounted_dependencies(current) if ObjectId.is_valid(d)]
            await self.mark_dependents(deps, now)
        result = await self.coll.find_one_and_update(query, update, return_document=AFTER)
        if (
            result is None
            and self.profile.silent_duplicates
            and (exclusive or current.get("key") is not None)  # it restores a unique key
            and await self.coll.find_one(query, {"_id": 1}) is not None  # it matched: refused
        ):
            raise DuplicateKeyError("another active job holds a unique key of this job")
        doc = decode_opt(result)
        if doc is not None and doc.get("status") == S.WAITING.value:  # killed while waiting
            doc = await self.count_ended_dependencies(doc, now)
        return doc

    async def count_ended_dependencies(self, doc: Doc, now: dt.datetime) -> Doc:
        """A waiting job written by an admin path (a retry of a job killed while it waited, a
        duplicate) waits for the dependencies it has not counted: registered on them, and
        those that have ended counted now (it may be released, or skipped by its policy, at
        once; one that no longer exists counts as "deleted")."""
        deps = [ObjectId(d) for d in F.uncounted_dependencies(doc) if ObjectId.is_valid(d)]
        await self.register_waiting(deps, now, {doc["_id"]: deps})
        if not deps:  # every one counted already (a duplicate's): released here
            await self.coll.update_one(*F.released_where({"_id": doc["_id"]}, now))
        return decode(await self.coll.find_one({"_id": doc["_id"]}) or doc)


def _shown_attempt(value: Any) -> Any:
    """A stored attempt as a job reads it (`Job.read`: text holding a number as that number,
    anything else it cannot read, listed in invalid_fields, as 0)."""
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return 0


_INT: TypeAdapter[int] = TypeAdapter(int)
