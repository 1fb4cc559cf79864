"""Dependencies between jobs on the jobs collection (see `core.flows`): registering a waiting
job on its dependencies, and what a dependency's end does to the jobs waiting on it. A mixin of
`JobStore`.

`settle_dependents(dep, status)` is what a dependency's end triggers (the worker after its final
write, a kill, a recovery, the sweep for what a crash left undone): for a finished dependency
two commands whatever the number of dependents (their count, then their release); for a failed
one, a read after them, to carry the failure on to the dependents of the jobs it skipped or
errored, level by level (`settle_all`: three commands a level; a bulk write holds at most 300
updates, three per failed dependency).
Every step is filtered on the dependency still being counted as waiting, so it applies once
however many processes run it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo import UpdateMany

from ..core import documents as D
from ..core import flows as F
from ..core.status import JobStatus
from .compat import DEPENDENTS_COUNTED_PARTS, ServerProfile, all_docs, decode

Doc = dict[str, Any]
S = JobStatus

#: How far one dependency's end is carried on (a skipped job's own dependents, and theirs...).
#: Finished dependencies a job just scheduled after them counts in one update.
COUNT_AT_ONCE = 100
CASCADE_LIMIT = 10_000

#: Updates in one of a cascade level's bulk writes (three a failed dependency).
BULK_UPDATES = 300


#: A job some of whose dependents have not counted its end yet: its expiry is held back
#: (`expires_after_settle`) until a sweep has seen them all settled (`mark_settled`).
HELD: Doc = {"has_dependents": True, "dependents_settled": {"$exists": False}}


def expiry_pending(ids: list[ObjectId]) -> Doc:
    """These jobs, where their retention is yet to be applied (skipped by a failed dependency)."""
    return {"_id": {"$in": ids}, "expiry_pending": True}


def with_expiry(
    query: Doc, update: Doc, expires_at: dt.datetime | None, profile: ServerProfile
) -> list[tuple[Doc, Doc]]:
    """`update` over `query` with the jobs' expiry, held back where their dependents have not
    all counted them (flows.md: a job with dependents is kept until they have), else set:
    (query, update) pairs made in order, the held ones first, then the others: in one filter
    that leaves held jobs out (`$nor`), or, where the server cannot negate a filter on a
    missing field (`profile.nor_ok`), one per part of "not held" (equalities and `$exists`).
    A job marked between two updates (`mark_dependents`: a job scheduled after it) is matched
    by none of the later ones: it is left for the caller's next pass, never given an
    `expires_at` the TTL index would act on. Without an expiry, the update as it is."""
    if expires_at is None:
        return [(query, update)]

    def plus(key: str) -> Doc:
        return update | {"$set": {**update.get("$set", {}), key: expires_at}}

    held = [(query | HELD, plus("expires_after_settle"))]
    if profile.nor_ok:
        return [*held, (query | {"$nor": [*query.get("$nor", []), HELD]}, plus("expires_at"))]
    return held + [(query | part, plus("expires_at")) for part in DEPENDENTS_COUNTED_PARTS]


class FlowRecords:
    coll: Any
    profile: ServerProfile

    async def statuses(self, ids: list[ObjectId]) -> dict[ObjectId, str]:
        """The status of each of these jobs that exists (one query)."""
        found = await all_docs(self.coll.find({"_id": {"$in": ids}}, {"status": 1}))
        return {d["_id"]: str(d.get("status")) for d in found}

    async def ends(self, ids: list[ObjectId]) -> dict[ObjectId, tuple[str, dt.datetime | None]]:
        """The status and end time of each of these jobs that exists (one query)."""
        found = await all_docs(self.coll.find({"_id": {"$in": ids}}, {"status": 1, "ended_at": 1}))
        out: dict[ObjectId, tuple[str, dt.datetime | None]] = {}
        for doc in map(decode, found):
            ended = doc.get("ended_at")
            out[doc["_id"]] = (
                str(doc.get("status")),
                ended if isinstance(ended, dt.datetime) else None,
            )
        return out

    async def mark_dependents(self, ids: list[ObjectId], now: dt.datetime) -> None:
        """These jobs have jobs waiting on them, or about to (their end settles them; until
        the sweep has seen them settled, `dependents_settled` is unset, and the expiry of one
        that has already ended is held back, as its final write would have: `mark_settled`
        gives it back). `marked_ms`: no sweep marks them settled within `MARK_GRACE` of it (a
        job scheduled after them may not be written yet). Each document in one update: one
        for those without an expiry, then one for those with one, renamed (nx-27017's `$rename`
        of a missing field writes a null)."""
        fields = {
            "$set": {"has_dependents": True, "marked_ms": D.epoch_ms(now)},
            "$unset": {"dependents_settled": ""},
        }
        ids_in = {"_id": {"$in": ids}}
        await self.coll.update_many(ids_in | {"expires_at": {"$exists": False}}, fields)
        await self.coll.update_many(
            ids_in | {"expires_at": {"$exists": True}},
            fields | {"$rename": {"expires_at": "expires_after_settle"}},
        )

    async def register_waiting(
        self,
        deps: list[ObjectId],
        now: dt.datetime,
        waiting: Mapping[ObjectId, Sequence[ObjectId]] | None = None,
    ) -> int:
        """Jobs now wait on `deps`: mark them as having dependents, then settle at once those
        that have already ended (one that no longer exists counts as "deleted", a failure).
        `waiting`: the jobs just scheduled after them, with their dependencies: one waiting on
        many that finished counts them `COUNT_AT_ONCE` at a time (one update per dependency
        rewrote its document each time: seconds for a fan-in after 2,000 ended jobs); the
        others are counted dependency by dependency (`settle_all`). Every step applies once
        however often it runs (a retried call repeats none of its effects). Returns how many of
        `deps` had ended (0: the jobs waiting on them are as they were written)."""
        if not deps:
            return 0
        await self.mark_dependents(deps, now)
        found = await self.statuses(deps)
        ended = {d: s for d, s in found.items() if s in F.ENDED}
        ended |= dict.fromkeys(set(deps) - set(found), "deleted")
        had_ended = len(ended)
        finished = {d for d, s in ended.items() if s == S.FINISHED.value}
        counted: dict[ObjectId, bool] = {}  # dependency -> every new job waiting on it counted it
        released_here: list[ObjectId] = []
        waiting = waiting or {}
        for job_id, after in waiting.items():
            mine = sorted(set(after) & finished)
            if not mine or (len(mine) < COUNT_AT_ONCE // 10 and len(waiting) > 1):
                for dep in mine:  # a few: counted with the others waiting on them, below
                    counted[dep] = False
                continue
            all_counted = True
            for start in range(0, len(mine), COUNT_AT_ONCE):
                part = mine[start : start + COUNT_AT_ONCE]
                query, update = F.counted_at_once(job_id, part)
                done = bool((await self.coll.update_one(query, update)).modified_count)
                all_counted &= done
                for dep in part:
                    counted[dep] = counted.get(dep, True) and done
            if all_counted:
                released_here.append(job_id)
        for dep, done in counted.items():
            if done:  # every new job waiting on it counted it here
                del ended[dep]
        if released_here:  # those that wait on nothing more now (the others: below, or later)
            query, update = F.released_where({"_id": {"$in": released_here}}, now)
            await self.coll.update_many(query, update)
        await self.settle_all(sorted(ended.items()), now)
        return had_ended

    async def settle_dependents(self, dep_id: ObjectId, status: str, now: dt.datetime) -> int:
        """`dep_id` ended with `status`: count it for the jobs waiting on it, skip or error
        those it fails (and carry that on to their own dependents), release those with nothing
        left to wait for. Returns how many jobs were released (due now)."""
        return await self.settle_all([(dep_id, status)], now)

    async def settle_all(self, ended: list[tuple[ObjectId, str]], now: dt.datetime) -> int:
        """`settle_dependents` for several dependencies at once, and a failure carried on level
        by level: for each level, every count, skip and error (one bulk write), the releases
        (one more), then the jobs its failures ended that have dependents of their own (one
        read): the next level. A failure that skips a chain of N jobs with dependents costs 3
        commands per level (one more per 100 failures in a level: `BULK_UPDATES`), not 5 per
        job. Returns how many jobs were released.

        The read comes after the level's write: a job scheduled after one the write ends marks
        it as having dependents before reading its status, so either its read sees it ended
        (and settles itself) or this read sees the mark. Read before the write, a job marked
        in between was ended here without its dependents, and read as still waiting by theirs:
        left to a sweep."""
        released = 0
        # one status per dependency, the first given: the ordered writes below apply only the
        # first one's pairs (each is filtered on the dependency still "waiting")
        first: dict[ObjectId, str] = {}
        for dep, status in ended:
            first.setdefault(dep, status)
        level = list(first.items())
        carried = 0
        while level and carried < CASCADE_LIMIT:
            carried += len(level)
            await self._update_each(
                [pair for dep, status in level for pair in F.dependency_ended(dep, status, now)]
            )
            # the releases of the whole level in one update (one per dependency made a fan-in
            # registered after 2,000 ended jobs take seconds; on nx-27017, a scan each)
            query, update = F.released_where({"after": {"$in": [str(d) for d, _ in level]}}, now)
            released += int((await self.coll.update_many(query, update)).modified_count)
            level = await self._ended_by(
                [str(dep) for dep, status in level if status != S.FINISHED.value]
            )
        return released

    async def _ended_by(self, failed: list[str]) -> list[tuple[ObjectId, str]]:
        """The jobs with dependents of their own that these failed dependencies ended (skipped
        or errored them: those with "run" counted them and run), with the status they got;
        each once, however many of them failed it, unless a sweep has seen them settled."""
        if not failed:
            return []
        failing = set(failed)  # a level may hold thousands: one lookup per job read
        return [
            (doc["_id"], str(doc["status"]))
            for doc in await all_docs(self.ended_by_cursor(failed))
            if doc.get("failed_dependency") in failing
        ]

    def ended_by_cursor(self, failed: list[str]) -> Any:
        """`_ended_by`'s read (the {after, status} index)."""
        query = {
            "after": {"$in": failed},
            "status": {"$in": [S.SKIPPED.value, S.ERRORED.value]},
            "failed_dependency": {"$in": failed},
            "has_dependents": True,
            "dependents_settled": {"$exists": False},
        }
        return self.coll.find(query, {"_id": 1, "status": 1, "failed_dependency": 1})

    async def _update_each(self, pairs: list[tuple[Doc, Doc]]) -> int:
        """Apply each (filter, update) with `update_many`, in order: ordered bulk writes of up
        to BULK_UPDATES each where the server takes them (one command for most levels; a level
        of thousands does not hold a server that runs commands one at a time, as nx-27017
        does, for the whole level). Returns how many documents were modified."""
        if len(pairs) > 1 and self.profile.bulk_ok:
            modified = 0
            for start in range(0, len(pairs), BULK_UPDATES):
                chunk = pairs[start : start + BULK_UPDATES]
                ops = [UpdateMany(query, update) for query, update in chunk]
                modified += int((await self.coll.bulk_write(ops, ordered=True)).modified_count)
            return modified
        modified = 0
        for query, update in pairs:
            modified += int((await self.coll.update_many(query, update)).modified_count)
        return modified

    async def release_counted(self, dep_ids: list[ObjectId], now: dt.datetime) -> int:
        """Release the jobs waiting on any of `dep_ids` that have counted all their
        dependencies but are still waiting: a process that counted them died, or lost MongoDB,
        before its release (the {after, status} index). Returns how many."""
        query, update = F.released_where({"after": {"$in": [str(d) for d in dep_ids]}}, now)
        return int((await self.coll.update_many(query, update)).modified_count)

    async def release_ready(self, ids: list[ObjectId], now: dt.datetime) -> int:
        """The same for these waiting jobs (the slow pass, for one left so before the sweep
        released counted jobs: it had marked their dependencies settled)."""
        query, update = F.released_where({"_id": {"$in": ids}}, now)
        return int((await self.coll.update_many(query, update)).modified_count)

    @staticmethod
    def flow_branches() -> list[Doc]:
        """What the sweep looks for in flows: ended jobs with dependents that no sweep has seen
        settled yet, and jobs skipped by a failed dependency whose retention is not applied
        (each on its partial index; few documents, each leaves the query once handled). Also
        branches of the recovery sweep's one query (`JobReads.attention_cursor`)."""
        # one branch per ended status, and `$exists`: with `$in` or `$ne` in one of its branches,
        # nx-27017 evaluates an `$or` so that a date written by `$set` in another branch no
        # longer compares (the recovery sweep's running jobs went missing); see storage.compat
        unsettled = [
            {"has_dependents": True, "dependents_settled": {"$exists": False}, "status": status}
            for status in sorted(F.ENDED)
        ]
        return [*unsettled, {"expiry_pending": True}]

    def flow_attention_cursor(self, limit: int = 1000) -> Any:
        """The flow branches alone (a sweep run on its own, e.g. in tests)."""
        fields = {
            "status": 1,
            "ended_at": 1,
            "name": 1,
            "has_dependents": 1,
            "dependents_settled": 1,
            "expiry_pending": 1,
            "marked_ms": 1,
            "expires_after_settle": 1,
        }
        return self.coll.find({"$or": self.flow_branches()}, fields).limit(limit)

    async def flow_attention(self) -> tuple[list[Doc], list[Doc]]:
        """(ended jobs with dependents not seen settled, skipped jobs awaiting their expiry)."""
        return self.split_flow([decode(d) for d in await all_docs(self.flow_attention_cursor())])

    @staticmethod
    def split_flow(docs: list[Doc]) -> tuple[list[Doc], list[Doc]]:
        """The documents of the flow branches, by branch (one may be in both)."""
        unsettled = [
            d
            for d in docs
            if d.get("has_dependents")
            and not d.get("dependents_settled")
            and d.get("status") in F.ENDED
        ]
        return unsettled, [d for d in docs if d.get("expiry_pending")]

    def uncounted_cursor(self, dep_ids: list[ObjectId]) -> Any:
        """The waiting jobs of any of these dependencies (the {after, status} index)."""
        query = {"after": {"$in": [str(d) for d in dep_ids]}, "status": S.WAITING.value}
        return self.coll.find(query, {"deps": 1, "created_at": 1})

    async def uncounted(
        self,
        dep_ids: list[ObjectId],
        ends: dict[ObjectId, dt.datetime | None] | None = None,
        cutoff: dt.datetime | None = None,
    ) -> tuple[set[ObjectId], set[ObjectId]]:
        """Which of these jobs some waiting job has not counted yet (one query on `after`):
        (those to settle, those only waiting jobs being registered have not counted). With
        `ends` (each one's end) and `cutoff`, a waiting job created after the end, at or after
        `cutoff`, is being registered (`registering`): its own process settles it."""
        texts = {str(d): d for d in dep_ids}
        settle: set[ObjectId] = set()
        left: set[ObjectId] = set()
        for doc in await all_docs(self.uncounted_cursor(dep_ids)):
            for dep, state in (doc.get("deps") or {}).items():
                if state != "waiting" or dep not in texts:
                    continue
                oid = texts[dep]
                ended = (ends or {}).get(oid)
                (left if registering(doc, ended, cutoff) else settle).add(oid)
        return settle, left - settle

    async def mark_settled(
        self,
        dep_ids: list[ObjectId],
        marked_before: dt.datetime,
        seen: Mapping[ObjectId, Doc] | None = None,
    ) -> None:
        """Every job waiting on these has counted them: they leave the sweep's query, and the
        expiry their final write (or a mark) held back applies now; only those not marked
        since `marked_before` (a job being scheduled after one, not written yet, keeps it:
        `mark_dependents`). Each document in one update (see there), by whether it was ever
        marked and whether it holds an expiry back: as `seen` (the documents as the sweep
        read them: one update per case found, usually one; a document that changed since
        matches none and is left for the next sweep), else every case (four updates)."""
        before_ms = D.epoch_ms(marked_before)
        marks = ({"marked_ms": {"$exists": False}}, {"marked_ms": {"$lte": before_ms}})
        holds = (
            {"expires_after_settle": {"$exists": False}},
            {"expires_after_settle": {"$exists": True}},
        )
        groups: dict[tuple[int, int], list[ObjectId]] = {}
        for dep in dep_ids:
            doc = (seen or {}).get(dep)
            if doc is None:
                cases = [(m, h) for m in (0, 1) for h in (0, 1)]
            elif "marked_ms" in doc and not (
                isinstance(doc["marked_ms"], int) and doc["marked_ms"] <= before_ms
            ):
                continue  # marked a moment ago: a job scheduled after it may not be written yet
            else:
                cases = [(int("marked_ms" in doc), int("expires_after_settle" in doc))]
            for case in cases:
                groups.setdefault(case, []).append(dep)
        for (mark, hold), ids in sorted(groups.items()):
            query = {"_id": {"$in": ids}, "has_dependents": True} | marks[mark] | holds[hold]
            update: Doc = {"$set": {"dependents_settled": True}}
            if hold:
                update["$rename"] = {"expires_after_settle": "expires_at"}
            await self.coll.update_many(query, update)

    async def set_expiry(self, ids: list[ObjectId], expires_at: dt.datetime | None) -> None:
        """Their retention applied (`None`: kept until purged, as the name's keep says)."""
        pending = expiry_pending(ids)
        for query, update in with_expiry(
            pending, {"$unset": {"expiry_pending": ""}}, expires_at, self.profile
        ):
            await self.coll.update_many(query, update)

    def stale_waiting_cursor(self, after_id: ObjectId | None, limit: int = 200) -> Any:
        """Waiting jobs in `_id` order from `after_id` (the slow pass for dependencies deleted
        by hand: each pass goes on where the last stopped, so every waiting job is seen)."""
        query: Doc = {"status": S.WAITING.value}
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        fields = {"deps": 1, "waiting_on": 1, "created_at": 1}
        return self.coll.find(query, fields).sort([("_id", 1)]).limit(limit)

    async def stale_waiting(self, after_id: ObjectId | None, limit: int = 200) -> list[Doc]:
        return await all_docs(self.stale_waiting_cursor(after_id, limit))

    def dependents_cursor(self, dep_id: ObjectId, limit: int = 100) -> Any:
        """The jobs scheduled after `dep_id`, newest first, without their log lines (the
        {after, _id} index: no sort in memory)."""
        cursor = self.coll.find({"after": str(dep_id)}, {"logs": 0}).sort([("_id", -1)])
        return cursor.limit(limit)

    async def dependents_of(self, dep_id: ObjectId, limit: int = 100) -> list[Doc]:
        return await all_docs(self.dependents_cursor(dep_id, limit))

    async def count_dependents(self, dep_id: ObjectId) -> int:
        """How many jobs were scheduled after `dep_id` (the `after` index; text, so nx-27017
        counts it right)."""
        return int(await self.coll.count_documents({"after": str(dep_id)}))

    async def has_waiting_dependents(self, dep_id: ObjectId) -> bool:
        """Whether jobs still wait on `dep_id` without having counted it (a `find`: nx-27017
        counts 0 for a filter on an ObjectId)."""
        return bool(await all_docs(self.waiting_on_cursor(dep_id).limit(1)))

    def waiting_on_cursor(self, dep_id: ObjectId) -> Any:
        """The jobs waiting on `dep_id` that have not counted it (the {after, status} index:
        what `dependency_ended`'s updates select)."""
        query = {"after": str(dep_id), "status": S.WAITING.value, f"deps.{dep_id}": "waiting"}
        return self.coll.find(query, {"_id": 1})


def registering(doc: Doc, ended: Any, cutoff: dt.datetime | None) -> bool:
    """A waiting job created after its dependency `ended` (a known end: a datetime), at or
    after `cutoff` (None: none is): its registration (mark its dependencies, read their
    statuses, settle those that ended) may be under way, and settles it; a sweep that settled
    it too would warn of a late settlement for a healthy flow. With `ended` "any", whatever
    its dependencies' ends. One whose process died first is settled once older."""
    created = doc.get("created_at")
    if cutoff is None or not isinstance(created, dt.datetime) or created < cutoff:
        return False
    return ended == "any" or (isinstance(ended, dt.datetime) and created >= ended)
