"""Jobs another program wrote, on the jobs collection: documents no claim can take (a counted
field that is not a number, a due time that can never come, a name no worker defines) are
errored with the reason; a minimal insert is completed on its first claim. A mixin of
`JobStore`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from ..core import documents as D
from ..core import foreign as FD
from ..core.documents import CLAIM_SORT
from ..core.retention import Retention
from ..core.status import JobStatus, check_transition
from .compat import ServerProfile, all_docs, decode
from .job_flows import with_expiry

Doc = dict[str, Any]
S = JobStatus
#: MongoDB's error code for an update that cannot apply to a field's type ($inc on a string).
TYPE_MISMATCH = 14
#: A bare insert's `name` that a job can be claimed under: a non-empty string.
NAMED: dict[str, Any] = {"$type": "string", "$gt": ""}


class ForeignJobs:
    coll: Any
    profile: ServerProfile
    retention_of: Callable[[str], Retention | None]

    async def _error_unclaimable(self, query: Doc, error: str, now: dt.datetime, name: str) -> int:
        """The job of `query` errored without running, with why; its expiry held back while
        jobs waiting on it have not counted it. How many it errored (0 or 1)."""
        keep = self.retention_of(name)
        expires = keep.expires_at(S.ERRORED, now) if keep else None
        for one, update in with_expiry(
            query, FD.unclaimable_update(error, now), expires, self.profile
        ):
            res = await self.coll.update_one(one, update)
            if res.modified_count:
                return int(res.modified_count)
        return 0

    async def error_uncountable(self, names: list[str], now: dt.datetime) -> int:
        """After a claim failed with TypeMismatch (another program wrote `attempt: "x"`; the
        claim's `$inc` cannot apply, on MongoDB): error the due jobs that caused it, with the
        reason, so they stop blocking the claims of their names. Returns how many."""
        query = D.claim_filter(names, now) | {"attempt": {"$exists": True}}
        docs = await all_docs(self.coll.find(query).sort(CLAIM_SORT).limit(100))
        return await self._error_uncountable_docs([d for d in docs if FD.uncountable(d)], now)

    async def _error_uncountable_docs(self, docs: list[Doc], now: dt.datetime) -> int:
        errored = 0
        for doc in docs:
            why = FD.uncountable(doc)
            if why is None:
                continue
            query = {"_id": doc["_id"], "claim_name": doc["claim_name"], "attempt": doc["attempt"]}
            errored += await self._error_unclaimable(query, why, now, str(doc["claim_name"]))
        return errored

    async def complete(self, job_id: Any, run_id: str, fields: Doc) -> bool:
        """Write the missing fields of a job inserted by another program (see
        `documents.completion`), while this run owns it."""
        if not fields:
            return True
        res = await self.coll.update_one({"_id": job_id, "run_id": run_id}, {"$set": fields})
        return bool(res.matched_count)

    def unknown_cursor(self, known: list[str], due_before: dt.datetime, ids: str = "") -> Any:
        """The claimable jobs of names not in `known` due and inserted before `due_before`, 100
        at most (the claim index, `_id` its last key; the real-server tier asserts it reads no
        other job): a job scheduled for a past time waits the grace too. `ids` "string" or
        "number": those whose `_id` of their own is text or a number instead (no insert time:
        by their due time). A string name: the
        index holds every job that is not claimable under null, which `$exists` (or `$nin`
        alone) would keep in the scan's bounds, every ended job read at each pass."""
        query = {
            "claim_name": {"$type": "string", "$nin": known},
            "due_ms": {"$lt": D.epoch_ms(due_before)},
            "_id": {"$type": ids} if ids else {"$lt": ObjectId.from_datetime(due_before)},
        }
        return self.coll.find(query, {"_id": 1, "claim_name": 1}).limit(100)

    async def error_unknown(
        self, known: list[str], due_before: dt.datetime, now: dt.datetime
    ) -> int:
        """Claimable jobs of names not in `known`, due and inserted before `due_before` (a
        grace period: a job scheduled for a past time, by a new release's producer, waits for
        its workers too): errored with the reason. At most 100 per call and kind of `_id`; one
        compare-and-set each."""
        errored = 0
        for ids in ("", "string", "number"):  # other `_id` types (binData): only flagged
            async for doc in self.unknown_cursor(known, due_before, ids):
                name = doc["claim_name"]
                res = await self.coll.update_one(
                    {"_id": doc["_id"], "claim_name": name},
                    FD.unknown_name_update(name, now),  # no definition here: kept until purged
                )
                errored += res.modified_count
        return errored

    async def error_undue(
        self, names: list[str], inserted_before: dt.datetime, now: dt.datetime
    ) -> int:
        """Claimable jobs of these names whose `due_ms` is missing, text or a date (another
        program wrote it: such a job is never due), inserted before `inserted_before`: errored
        with the reason. At most 100 per kind and call (index-bounded on the claim index)."""
        errored = 0
        for query in FD.undue_filters(names, inserted_before):
            fields = {"_id": 1, "claim_name": 1, "due_ms": 1}
            async for doc in self.coll.find(query, fields).limit(100):
                one = {
                    "_id": doc["_id"],
                    "claim_name": doc["claim_name"],
                    "due_ms": query["due_ms"],
                }
                why = FD.undue(doc.get("due_ms"))
                errored += await self._error_unclaimable(one, why, now, str(doc["claim_name"]))
        return errored

    def bare_cursor(self, inserted_before: dt.datetime, limit: int = 100) -> Any:
        """Documents with no status, inserted before `inserted_before` (the real-server tier
        asserts its plan: the {status, worker_id} index, status missing reading as null)."""
        old = {
            "status": None,
            "_id": {"$lt": ObjectId.from_datetime(inserted_before)},
            "name": NAMED,  # a document with no name to claim it under is left as it is
            # a minimal insert (claim_name and due_ms, no status) is claimable as it is: never
            # adopted, it must not fill the batch either
            "claim_name": {"$exists": False},
        }
        fields = {"_id": 1, "name": 1, "scheduled_for": 1, "due_ms": 1, "priority": 1}
        return self.coll.find(old, fields).limit(limit)

    async def count_bare(self, name: str) -> int:
        """The bare inserts of `name` not adopted yet (as `bare_cursor` finds them, whatever
        their age): queued, though neither a status nor the claim index holds them."""
        query = {"status": None, "name": name, "claim_name": {"$exists": False}}
        return int(await self.coll.count_documents(query))

    async def adopt_bare(
        self, inserted_before: dt.datetime, now: dt.datetime, limit: int = 100
    ) -> tuple[int, int]:
        """Jobs another program inserted as bare `{name, payload}` (no `status`, `claim_name`
        or `due_ms`), before `inserted_before`: made pending and claimable, due at their
        `scheduled_for` if they have one, else at a numeric `due_ms` they carry, else at their
        insert time, priority 0 if they have none (the claim sorts a missing priority after
        every number, -1 included: a reader shows 0). Their first claim fills in the rest (a
        missing `created_at` marks them as foreign, see `documents.completion`).
        At most `limit` per call; one compare-and-set each (on the {status, ...} index: status
        missing reads as null). Returns how many were read and how many adopted here (fewer
        when another worker's sweep adopted some of them first)."""
        check_transition(None, S.PENDING)
        read = adopted = 0
        async for doc in self.bare_cursor(inserted_before, limit):
            read += 1
            name = str(doc["name"])
            when = decode(doc).get("scheduled_for")  # aware UTC; ISO text read as its date
            if not isinstance(when, dt.datetime):  # a due_ms it carries (claim_name forgotten)
                when = FD.due_time(doc.get("due_ms")) or doc["_id"].generation_time
            query: Doc = {"_id": doc["_id"], "status": None, "claim_name": {"$exists": False}}
            fields: Doc = {
                "status": S.PENDING.value,
                "claim_name": name,
                "due_ms": D.epoch_ms(when),
            }
            if doc.get("priority") is None:  # missing or null: still so when adopted, or
                query["priority"] = {"$in": [None]}  # adopted at the next sweep
                fields["priority"] = 0
            res = await self.coll.update_one(query, {"$set": fields})
            adopted += res.modified_count
        return read, adopted
