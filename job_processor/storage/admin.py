"""Operator verbs on the jobs collection: listings with cursor pagination, run-now, deletes and
purges, and the numbers behind the overview. Used by `job_processor.admin` only.

Every listing is `{equality filters..., created_at range}` sorted by (created_at desc, _id desc),
which the jobs indexes serve without a blocking sort (asserted with explain() against a real
MongoDB in tests/storage/test_real_mongodb.py). Pages continue from a (created_at, _id) position:
the query bounds `created_at <= position` on the server, and the few jobs created in that same
instant that were already shown are dropped here (no `skip`, no `$or`). On nx-27017, whose date
comparisons have whole-second precision, the bound is a second wide; the client-side check
keeps pages exact there too.
"""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, ReturnDocument

from ..core import documents as D
from ..core.status import TERMINAL, JobStatus
from .compat import (
    DEPENDENTS_COUNTED_PARTS,
    HOOK_NOT_OWED_PARTS,
    ServerProfile,
    aggregate,
    all_docs,
    counted_part,
    decode,
    decode_opt,
)
from .job_reads import LIST_SORT
from .kinds import id_order

Doc = dict[str, Any]
S = JobStatus
#: Jobs read beyond a page to step over those created in the position's instant.
TIES_SLACK = 100


@dataclass(frozen=True)
class JobQuery:
    """Equality filters and a creation-time range; all optional."""

    name: str | None = None
    status: JobStatus | None = None
    tag: str | None = None
    key: str | None = None
    created_after: dt.datetime | None = None
    """Inclusive."""
    created_before: dt.datetime | None = None
    """Exclusive."""

    def filter(self) -> Doc:
        query: Doc = {}
        if self.name is not None:
            query["name"] = self.name
        if self.status is not None:
            query["status"] = self.status.value
        if self.tag is not None:
            query["tag"] = self.tag
        if self.key is not None:
            query["key"] = self.key
        created: Doc = {}
        if self.created_after is not None:
            created["$gte"] = self.created_after
        if self.created_before is not None:
            created["$lt"] = self.created_before
        if created:
            query["created_at"] = created
        return query

    def matches(self, doc: Doc) -> bool:
        """The same conditions, checked on a document read by id."""
        pairs = [("name", self.name), ("tag", self.tag), ("key", self.key)]
        if any(v is not None and doc.get(k) != v for k, v in pairs):
            return False
        if self.status is not None and doc.get("status") != self.status.value:
            return False
        created = doc.get("created_at")
        if self.created_after is not None and (created is None or created < self.created_after):
            return False
        return not (
            self.created_before is not None and (created is None or created >= self.created_before)
        )


Position = tuple[dt.datetime | None, Any]
"""A listing's position: a creation time (None: among the jobs without one, which come last)
and an `_id` (an ObjectId, or another program's)."""


def _before(doc: Doc, position: Position) -> bool:
    """Strictly after `position` in listing order (created_at desc, _id desc)."""
    created, oid = position
    if doc["created_at"] != created:  # another program's text or number: MongoDB's type order
        return _created_order(doc["created_at"]) < _created_order(created)
    return id_order(doc["_id"]) < id_order(oid)


def _created_order(value: Any) -> tuple[int, Any]:
    """A `created_at` as MongoDB orders values across types: null first, a date last."""
    if value is None:
        return (0, 0)
    if isinstance(value, dt.datetime):
        return (9, value)
    return id_order(value)


class JobAdminStore:
    def __init__(self, collection: Any, profile: ServerProfile) -> None:
        self.coll = collection
        self.profile = profile

    # ---- listings ---------------------------------------------------------------------------

    def page_query(self, query: JobQuery, after: Position | None) -> Doc:
        """The server-side filter of a page (exposed for the explain() tests)."""
        doc = query.filter()
        if after is not None:
            created = dict(doc.get("created_at", {}))
            bound = created.get("$lte")
            created["$lte"] = after[0] if bound is None else min(bound, after[0])
            doc["created_at"] = created
        return doc

    @staticmethod
    def tags_pipeline(most: int) -> list[Doc]:
        """The stored jobs' distinct tags, at most `most` (with None, jobs without one): on
        MongoDB a DISTINCT_SCAN of the `{tag, created_at, _id}` listing index, one seek per
        tag, never a job read (asserted in the real-server tier)."""
        return [{"$sort": {"tag": 1}}, {"$group": {"_id": "$tag"}}, {"$limit": most}]

    async def stored_tags(self, most: int) -> set[str]:
        """Up to `most` tags the stored jobs have (any other program's included)."""
        rows = await aggregate(self.coll, self.tags_pipeline(most + 1))
        return {r["_id"] for r in rows if isinstance(r["_id"], str) and r["_id"]}

    def untried_cursor(self, query: JobQuery, tried: list[Any], limit: int) -> Any:
        """Unsorted, so the filter's own index serves it (sorted by `_id`, the planner could
        walk every job by the `_id` index; exposed for the explain() tests)."""
        wanted = {"$and": [query.filter(), *([{"_id": {"$nin": tried}}] if tried else [])]}
        return self.coll.find(wanted, {"logs": 0}).limit(limit)

    async def untried(self, query: JobQuery, tried: list[Any], limit: int) -> list[Doc]:
        """The jobs of this filter but those `tried` (of any `_id` type: `$lt` compares one
        type only), in no set order: how a bulk action reaches the undated ones (bare inserts
        another program made: no creation-time position reaches them; told apart by the
        caller, `created_at` missing or null, which nx-27017 does not filter alike). None when
        the filter bounds the creation time (undated jobs match none)."""
        if query.created_after is not None or query.created_before is not None:
            return []
        return await all_docs(self.untried_cursor(query, tried, limit))

    def page_cursor(self, query: JobQuery, after: Position | None) -> Any:
        """Listings leave each job's log lines out (up to 400 KB a job: read one job for them)."""
        return self.coll.find(self.page_query(query, after), {"logs": 0}).sort(LIST_SORT)

    async def page(self, query: JobQuery, after: Position | None, limit: int) -> list[Doc]:
        """Up to `limit` jobs after `after`, newest first; those without a creation time last
        (a page's range on `created_at` cannot reach them: read apart, by `_id`, the first
        page's too, so that every page orders them alike)."""
        if after is not None and after[0] is None:
            return await self._undated(query, after[1], limit)
        if after is None:
            docs = await all_docs(self.page_cursor(query, None).limit(limit))
            out = list(itertools.takewhile(lambda d: d.get("created_at") is not None, docs))
        else:
            out = await self._dated(query, after, limit)
        if len(out) < limit:  # the dated jobs ran out: the undated ones follow
            out += await self._undated(query, None, limit - len(out))
        return out

    def undated_cursor(self, query: JobQuery, bound: Doc) -> Any:
        """The filter's jobs whose `created_at` is missing or null, of one `_id` type from
        `bound` (`$lt` compares one type only), by `_id` desc: the listing index's
        `created_at: null` keys (exposed for the explain() tests). `$eq: null` in an $and:
        nx-27017 reads a bare `None` beside other fields as "missing" only."""
        wanted = {"$and": [query.filter(), {"created_at": {"$eq": None}}, {"_id": bound}]}
        return self.coll.find(wanted, {"logs": 0}).sort("_id", -1)

    async def _undated(self, query: JobQuery, after_id: Any, limit: int) -> list[Doc]:
        """The filter's jobs without a creation time, by `_id` desc as MongoDB orders types
        (ObjectIds, then text, then numbers), after `after_id` (None: from the first): one
        read per `_id` type, each bounded on the server. Other `_id` types are not listed."""
        if query.created_after is not None or query.created_before is not None:
            return []
        passes: list[Doc] = [
            {"$lte": ObjectId("f" * 24)},  # every ObjectId (a bound brackets its type)
            {"$type": "string"},
            {"$type": "number"},
        ]
        kind = id_order(after_id)[0] if after_id is not None else None
        if kind is not None:
            first = {7: 0, 2: 1, 1: 2}.get(kind)
            if first is None:
                return []
            passes = [{"$lt": after_id}, *passes[first + 1 :]]
        out: list[Doc] = []
        for bound in passes:
            cursor = self.undated_cursor(query, bound).limit(limit - len(out))
            out += [d for d in await all_docs(cursor) if d.get("created_at") is None]
            if len(out) >= limit:
                break
        return out[:limit]

    async def _dated(self, query: JobQuery, after: Position, limit: int) -> list[Doc]:
        # after a position, the jobs created in its instant (its second on nx-27017) that were
        # already shown are read again and dropped: read a few more than a page, and only when
        # that many were dropped (a burst created in one instant), read on without a limit
        slack = limit + TIES_SLACK
        docs = await all_docs(self.page_cursor(query, after).limit(slack))
        out = [d for d in docs if _before(d, after)][:limit]
        if len(out) == limit or len(docs) < slack:
            return out
        out = []
        cursor = self.page_cursor(query, after)
        try:
            async for raw in cursor:
                doc = decode(raw)
                if _before(doc, after):
                    out.append(doc)
                    if len(out) >= limit:
                        break
        finally:
            result = cursor.close()
            if inspect.isawaitable(result):
                await result
        return out

    async def by_id(self, oid: ObjectId) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": oid}))

    # ---- actions ----------------------------------------------------------------------------

    async def run_now(self, oid: ObjectId, now: dt.datetime) -> Doc | None:
        """pending and scheduled later -> due now (compare-and-set); None if it was not. A job
        another program inserted as the minimal document (claimable, no status until its first
        claim: docs/scale.md) is pending too: its own compare-and-set, which leaves it minimal
        (`status: None` matches a missing status alike on every server)."""
        later = {"_id": oid, "due_ms": {"$gt": D.epoch_ms(now)}}
        doc = await self.coll.find_one_and_update(
            later | {"status": S.PENDING.value},
            D.run_now_update(now),
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self.coll.find_one_and_update(
                later | {"status": None, "claim_name": {"$type": "string"}},
                D.run_now_foreign_update(now),
                return_document=ReturnDocument.AFTER,
            )
        return decode_opt(doc)

    async def delete_ended(
        self, oid: ObjectId, hookless: frozenset[str] = frozenset()
    ) -> Doc | None:
        """Delete a job that has ended (finished, errored, killed, skipped) and owes no
        on_job_exited; None if it is active, owes its hook, or is gone. Active jobs are never
        deleted (kill them first), nor jobs whose hook has yet to run (it would be lost). A job
        of a name in `hookless` (the registry says its definition has no on_job_exited) owes
        only the record of that, and is deleted. A status this version does not know is not
        deleted: it may be a newer version's active job during a rolling deploy."""
        ended = {"_id": oid, "status": {"$in": sorted(s.value for s in TERMINAL)}}
        # never a dependency its dependents have not all counted (a job scheduled after it
        # marks it before it is written: the caller's check of waiting jobs alone could miss
        # one being written); one delete per part, the first usually matches (see compat)
        for counted in DEPENDENTS_COUNTED_PARTS:
            doc = await self.coll.find_one_and_delete(
                ended | {"exit_hook": {"$ne": "owed"}} | counted
            )
            if doc is None and hookless:
                doc = await self.coll.find_one_and_delete(
                    ended | {"exit_hook": "owed", "name": {"$in": sorted(hookless)}} | counted
                )
            if doc is not None:
                return decode(doc)
        return None

    def ended_query(self, status: JobStatus, ended_before: dt.datetime, name: str | None) -> Doc:
        """The jobs of an ended `status`, ended before `ended_before` (the {status, ended_at}
        index); a purge deletes those whose on_job_exited is not owed."""
        if status not in TERMINAL:
            raise ValueError(f"only ended jobs can be purged, not {status.value}")
        query: Doc = {"status": status.value, "ended_at": {"$lt": ended_before}}
        if name is not None:
            query["name"] = name
        return query

    async def purge(
        self,
        status: JobStatus,
        ended_before: dt.datetime,
        name: str | None,
        hookless: frozenset[str] = frozenset(),
        on_deleted: Callable[[int], None] | None = None,
    ) -> int:
        """Delete the jobs of `ended_query` that owe no on_job_exited, and those that owe only
        the record of a hook their definition does not have (names in `hookless`); never one
        whose dependents have not all counted its end (a sweep does it, then a purge takes it).
        Returns how many; `on_deleted` is told each command's count as it returns (several
        commands: one stopped by an outage or a cancellation leaves the earlier ones done)."""
        query = self.ended_query(status, ended_before, name)
        deleted = 0

        async def delete(part: Doc) -> int:
            n = int((await self.coll.delete_many(part)).deleted_count)
            if on_deleted is not None and n:
                on_deleted(n)
            return n

        for counted in DEPENDENTS_COUNTED_PARTS:  # never a dependency not yet counted
            for not_owed in HOOK_NOT_OWED_PARTS:  # two filters each: see storage/compat.py
                deleted += await delete(query | not_owed | counted)
        # the hook-less names that do have such jobs, one delete each, by equality: beside the
        # date range nx-27017 matches nothing for an `$in` (see HOOK_NOT_OWED_PARTS)
        owing = await self.owing_hooks(status, ended_before, name) if hookless else {}
        for hookless_name in sorted(hookless & owing.keys()):
            for counted in DEPENDENTS_COUNTED_PARTS:
                deleted += await delete(
                    query | {"exit_hook": "owed", "name": hookless_name} | counted
                )
        return deleted

    def owing_hooks_cursor(
        self, status: JobStatus, ended_before: dt.datetime, name: str | None
    ) -> Any:
        """The {status, ended_at} index (exposed for the explain() tests)."""
        query = self.ended_query(status, ended_before, name) | {"exit_hook": "owed"}
        return self.coll.find(query, {"_id": 0, "name": 1}).limit(10_000)

    async def owing_hooks(
        self, status: JobStatus, ended_before: dt.datetime, name: str | None
    ) -> dict[str, int]:
        """name -> how many jobs a purge of these leaves alone because their hook is still
        owed (counted up to 10,000 jobs)."""
        # find, not count_documents: nx-27017 counts nothing with a range on a date ($set)
        counts: dict[str, int] = {}
        for doc in await all_docs(self.owing_hooks_cursor(status, ended_before, name)):
            counts[str(doc.get("name"))] = counts.get(str(doc.get("name")), 0) + 1
        return counts

    def uncounted_dependencies_cursor(
        self, status: JobStatus, ended_before: dt.datetime, name: str | None
    ) -> Any:
        """The {status, ended_at} index (exposed for the explain() tests)."""
        query = self.ended_query(status, ended_before, name) | {"has_dependents": True}
        fields = {"_id": 0, "has_dependents": 1, "dependents_settled": 1, "exit_hook": 1}
        return self.coll.find(query, fields).limit(10_000)

    async def uncounted_dependencies(
        self, status: JobStatus, ended_before: dt.datetime, name: str | None
    ) -> int:
        """How many of these jobs a purge leaves alone because jobs scheduled after them have
        not all counted their end yet (counted up to 10,000 jobs)."""
        docs = await all_docs(self.uncounted_dependencies_cursor(status, ended_before, name))
        # one kept for its owed hook is counted there (`owing_hooks`), not twice
        return sum(
            1 for doc in docs if counted_part(doc) is None and doc.get("exit_hook") != "owed"
        )

    # ---- numbers ----------------------------------------------------------------------------

    @staticmethod
    def due_pipeline(names: list[str] | None, now: dt.datetime) -> list[Doc]:
        """Due claimable jobs per name with the earliest due time: the claim index, covered.
        `None`: of every name. A string `claim_name` bounds the scan to the claimable jobs (the
        index holds the others under null, which `$exists` would keep in its bounds)."""
        if names is None:
            match: Doc = {"claim_name": {"$type": "string"}, "due_ms": {"$lte": D.epoch_ms(now)}}
        else:
            match = D.claim_filter(names, now)
        return [
            {"$match": match},
            {"$group": {"_id": "$claim_name", "n": {"$sum": 1}, "oldest": {"$min": "$due_ms"}}},
        ]

    async def due_by_name(
        self, names: Iterable[str] | None, now: dt.datetime
    ) -> dict[str, tuple[int, int]]:
        """name -> (due jobs, earliest due time in epoch ms), for the names that have due jobs;
        `None`: every such name, also one that only jobs inserted by another program with no
        status yet (docs/scale.md's minimal document) are due under, which no count by status
        finds."""
        wanted = None if names is None else sorted(set(names))
        if wanted == []:
            return {}
        rows = await aggregate(self.coll, self.due_pipeline(wanted, now))
        return {str(r["_id"]): (int(r["n"]), int(r["oldest"])) for r in rows}

    def ended_cursor(self, status: JobStatus, since: dt.datetime, cap: int) -> Any:
        return (
            self.coll.find(
                {"status": status.value, "ended_at": {"$gte": since}},
                {"_id": 0, "ended_at": 1},
            )
            .sort([("ended_at", DESCENDING)])
            .limit(cap)
        )

    async def ended_since(
        self, status: JobStatus, since: dt.datetime, cap: int
    ) -> list[dt.datetime]:
        """End times of the jobs of `status` that ended since `since` (at most `cap`, the
        newest: a covered scan of the {status, ended_at} index, backwards; past the cap the
        oldest minutes are the ones undercounted, never the latest)."""
        return [d["ended_at"] for d in await all_docs(self.ended_cursor(status, since, cap))]
