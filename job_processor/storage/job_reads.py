"""Reads on the jobs collection (by id, listings, counts, due times) and the change stream that
wakes idle workers. A mixin of `JobStore`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING

from ..core import documents as D
from ..core.status import JobStatus
from .compat import (
    DEPENDENTS_COUNTED_PARTS,
    ServerProfile,
    aggregate,
    all_docs,
    close_stream,
    counted_part,
    decode,
    decode_opt,
    id_key,
    open_stream,
)
from .job_flows import FlowRecords

Doc = dict[str, Any]
S = JobStatus
#: The most documents the sweep's one query reads (`attention_cursor`).
ATTENTION_LIMIT = 1000


def light() -> Doc:
    """A job read without the fields that can hold megabytes (`get_light`): a new dict at each
    call, as mongomock adds `_id: 1` to the one it is given (a shared one then read only `_id`
    on nx-27017, for every later read of the process)."""
    return {"payload": 0, "state": 0, "output": 0, "logs": 0}


#: Listing order: newest first.
LIST_SORT = [("created_at", DESCENDING), ("_id", DESCENDING)]


def recovery_branches(cutoff: dt.datetime, now: dt.datetime) -> list[Doc]:
    """Running jobs whose run started before `cutoff`, owed hooks recorded before `now`."""
    return [
        {"status": S.RUNNING.value, "run_started_at": {"$lt": cutoff}},
        {"exit_hook": "owed", "exit_hook_at": {"$lt": now}},
    ]


@dataclass
class Attention:
    """What the sweep's one query found (`JobReads.needing_attention`)."""

    running: list[Doc]
    """Running jobs whose run started before the cutoff."""
    owed: list[Doc]
    """Owed on_job_exited hooks."""
    flows: list[Doc]
    """The flows' records."""
    bare: list[Doc]
    """Bare inserts old enough to adopt."""
    full: bool = False
    """The query filled its limit: what it did not return may hold bare inserts too."""


def _same_run(light: Doc, whole: Doc) -> bool:
    return all(light.get(k) == whole.get(k) for k in ("status", "run_id", "exit_hook_id"))


class JobReads:
    coll: Any
    profile: ServerProfile

    def wake_pipeline(self) -> list[Doc]:
        """Only what can make a job claimable: inserts of pending jobs, and updates that set
        `claim_name` (a retry, a pause, retry_job). nx-27017 cannot filter with `$or` (and sends
        no updateDescription): there, inserts and updates pass and the waker decides."""
        if not self.profile.stream_or:
            return [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]
        return [
            {
                "$match": {
                    "$or": [
                        {"operationType": "insert", "fullDocument.claim_name": {"$exists": True}},
                        {"operationType": "replace"},
                        {
                            "operationType": "update",
                            "updateDescription.updatedFields.claim_name": {"$exists": True},
                        },
                        {  # an operator's run-now: a pending job's due time moved
                            "operationType": "update",
                            "updateDescription.updatedFields.due_ms": {"$exists": True},
                        },
                    ]
                }
            },
            {
                "$project": {
                    "operationType": 1,
                    "fullDocument.status": 1,
                    "fullDocument.scheduled_for": 1,
                    "updateDescription.updatedFields.status": 1,
                    "updateDescription.updatedFields.scheduled_for": 1,
                    "updateDescription.updatedFields.due_ms": 1,
                }
            },
        ]

    async def watch(self, max_await_ms: int) -> Any:
        return await open_stream(self.coll, self.wake_pipeline(), max_await_ms)

    @staticmethod
    async def close_stream(stream: Any) -> None:
        await close_stream(stream)

    async def get(self, job_id: ObjectId) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": job_id}))

    async def get_light(self, job_id: ObjectId) -> Doc | None:
        """The job without what can be large (payload, checkpoint state, output, log lines):
        what a wait's polls read (status, name, where it runs, when it is due)."""
        return decode_opt(await self.coll.find_one({"_id": job_id}, light()))

    def find_cursor(
        self, name: str | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> Any:
        query: Doc = {}
        if name is not None:
            query["name"] = name
        if status is not None:
            query["status"] = status.value
        return self.coll.find(query).sort(LIST_SORT).limit(limit)

    async def find(
        self, name: str | None = None, status: JobStatus | None = None, limit: int = 50
    ) -> list[Doc]:
        """Newest first, by name and/or status (each shape has its index)."""
        return await all_docs(self.find_cursor(name, status, limit))

    async def recent_tasks(self, name: str, limit: int = 5) -> list[Doc]:
        """A cron's latest tasks (the {name, created_at} index: a task is created at its slot)."""
        return await all_docs(self.find_cursor(name, None, limit))

    def attention_cursor(
        self, cutoff: dt.datetime, now: dt.datetime, bare_before: dt.datetime | None = None
    ) -> Any:
        """Running jobs whose run started before `cutoff` (their worker may be dead, or may not
        run them), owed on_job_exited hooks recorded before `now`, the flows' records and
        (with `bare_before`) bare inserts made before it: the sweep's one query (each branch on
        its index: {status, worker_id}, status missing reading as null, and
        {exit_hook, exit_hook_at})."""
        branches: list[Doc] = [*recovery_branches(cutoff, now), *FlowRecords.flow_branches()]
        if bare_before is not None:
            # their age is checked by `needing_attention`: an `_id` bound here would make
            # nx-27017 evaluate the whole $or in Python, where the other branches' dates
            # compare wrongly (MongoDB would take it)
            branches.append({"status": None})
        # without what can be megabytes (a flow's ended jobs: their results, read at every
        # sweep until seen settled); the few running jobs and owed hooks are read whole after
        return self.coll.find({"$or": branches}, light()).limit(ATTENTION_LIMIT)

    async def needing_attention(
        self, cutoff: dt.datetime, now: dt.datetime, bare_before: dt.datetime | None = None
    ) -> Attention:
        """What the sweep acts on (`attention_cursor`), from one query. When that query fills
        its limit (a backlog of flow records or bare inserts, say, or long runs on live
        workers), the running jobs, the owed hooks and the flows' records are read again on
        their own, so that such a backlog never delays a crashed worker's recovery nor a
        flow's settling."""
        docs = await all_docs(self.attention_cursor(cutoff, now, bare_before))
        full = len(docs) >= ATTENTION_LIMIT
        # another program's `_id` may be a string beside ObjectIds, or a document (unhashable):
        # ids are keyed with `id_key`, never sorted or hashed as they are
        if full:
            seen = {id_key(d["_id"]) for d in docs}
            reads = [
                self.coll.find(b).limit(ATTENTION_LIMIT) for b in recovery_branches(cutoff, now)
            ]
            # the flows' records too: long runs elsewhere (running past the cutoff on live
            # workers) must not keep a flow's dependency held, nor a skipped job unexpired
            reads.append(
                self.coll.find({"$or": FlowRecords.flow_branches()}, light()).limit(ATTENTION_LIMIT)
            )
            for cursor in reads:
                more = await all_docs(cursor)
                docs += [d for d in more if id_key(d["_id"]) not in seen]
                seen |= {id_key(d["_id"]) for d in more}
        wanted = {
            id_key(d["_id"]): d["_id"]
            for d in docs
            if (d.get("status") == S.RUNNING.value or d.get("exit_hook") == "owed")
            and "payload" not in d  # read light (the recovery branches read again are whole)
        }
        if wanted:  # recovering a run or calling a hook needs the whole job
            again = self.coll.find({"_id": {"$in": list(wanted.values())}})
            whole = {id_key(d["_id"]): d for d in await all_docs(again)}
            gone = wanted.keys() - whole.keys()
            # the whole copy only while it is still the run (or hook record) the query found: a
            # job recovered and claimed again meanwhile keeps its light copy, whose
            # compare-and-set on the old run id then matches nothing
            docs = [
                whole[k] if (k := id_key(d["_id"])) in whole and _same_run(d, whole[k]) else d
                for d in docs
                if id_key(d["_id"]) not in gone
            ]
        return Attention(
            running=[d for d in docs if d.get("status") == S.RUNNING.value],
            owed=[d for d in docs if d.get("exit_hook") == "owed"],
            flows=[decode(d) for d in docs if d.get("has_dependents") or d.get("expiry_pending")],
            bare=[
                d
                for d in docs
                if d.get("status") is None
                and isinstance(d.get("name"), str)
                and d["name"]
                and bare_before is not None
                and isinstance(d["_id"], ObjectId)
                and d["_id"].generation_time < bare_before
            ],
            full=full,
        )

    def running_cursor(self) -> Any:
        """Every running job, briefly (the overview, workers and crons pages: {status, ...})."""
        fields = {"_id": 1, "name": 1, "worker_id": 1, "run_started_at": 1, "started_at": 1}
        return self.coll.find({"status": S.RUNNING.value}, fields)

    async def running(self) -> list[Doc]:
        return await all_docs(self.running_cursor())

    async def count_due_upto(self, names: list[str], now: dt.datetime, most: int) -> int:
        """How many jobs of these names are claimable now, counting at most `most` (the claim
        index: a covered count of at most `most` keys)."""
        return int(await self.coll.count_documents(D.claim_filter(names, now), limit=most))

    async def key_holder(self, doc: Doc, exclusive: bool) -> str:
        """Which unique key a retry of `doc` restores (its dedup key; its name when
        `exclusive`) another active job holds, and that job, in words (a retry the database
        refused says which)."""
        name = str(doc.get("name"))
        keys: list[tuple[Doc, str]] = []
        if doc.get("key") is not None:
            held = {"dedup_key": D.dedup_key(name, str(doc["key"]))}
            keys.append((held, f"its dedup key {doc['key']!r}"))
        if exclusive:
            keys.append(({"exclusive_key": name}, f"the exclusive name {name!r}"))
        for held, what in keys:
            found = await self.coll.find_one(held)
            if found is not None:
                return f"job {found['_id']} ({found.get('status')}) holds {what}"
        said = " or ".join(what for _, what in keys) or "one of its unique keys"
        return f"another active job held {said}"  # it ended meanwhile

    async def due_names(
        self, names: list[str], now: dt.datetime, n: int, skip_keys: Sequence[str] = ()
    ) -> list[tuple[str, Any]]:
        """The names and limit keys of the best `n` jobs of these names claimable now, in
        claim order (the claim index), leaving out those whose limit key is one of `skip_keys`
        (a per-value limit's keys found full: their jobs cannot be claimed)."""
        cursor = self.due_names_cursor(names, now, n, skip_keys)
        return [(str(d.get("claim_name")), d.get("limit_key")) for d in await all_docs(cursor)]

    def due_names_cursor(
        self, names: list[str], now: dt.datetime, n: int, skip_keys: Sequence[str] = ()
    ) -> Any:
        query = D.claim_filter(names, now)
        if skip_keys:
            query["limit_key"] = {"$nin": sorted(skip_keys)}
        fields = {"_id": 0, "claim_name": 1, "limit_key": 1}
        return self.coll.find(query, fields).sort(D.CLAIM_SORT).limit(n)

    async def next_due(self, names: list[str]) -> dt.datetime | None:
        """When the earliest claimable job of these names is due (tests, `testing`)."""
        cursor = self.coll.find({"claim_name": {"$in": names}}).sort([("due_ms", ASCENDING)])
        async for doc in cursor.limit(1):
            return decode(doc)["scheduled_for"]  # type: ignore[no-any-return]
        return None

    def any_due_cursor(self, names: list[str], now: dt.datetime) -> Any:
        query = D.claim_filter(names, now, as_or=self.profile.in_as_or)
        return self.coll.find(query, {"_id": 1}).limit(1)

    async def any_due(self, names: list[str], now: dt.datetime) -> bool:
        """Is a job of these names claimable now? One read of the claim index, limit 1
        (through its `$eq` form on nx-27017, which reads `$in` document by document)."""
        async for _ in self.any_due_cursor(names, now):
            return True
        return False

    async def count_due(self, names: list[str], now: dt.datetime) -> int:
        return int(await self.coll.count_documents(D.claim_filter(names, now)))

    @staticmethod
    def trim_query(name: str, statuses: list[JobStatus], before: dt.datetime | None = None) -> Doc:
        """The ended jobs of `name` in `statuses` that a count may delete: never one whose hook
        is owed; with `before` (the retention floor), only those created before it (all newer
        ones are kept too; `created_at` is set by the insert). `trim` also keeps those that
        ended after it."""
        query: Doc = {
            "status": {"$in": [s.value for s in statuses]},
            "name": name,
            "exit_hook": {"$ne": "owed"},
        }
        if before is not None:
            query["created_at"] = {"$lt": before}
        return query

    def trim_cursor(self, query: Doc, keep: int, batch: int) -> Any:
        """Past the `keep` most recent, newest first by (created_at, _id) — exact even when
        many share a millisecond — at most `batch` (0: no limit; `trim` stops after a batch it
        may delete, or 10 batches read): keys of the {status, name, created_at, _id} index."""
        fields = {"_id": 1, "has_dependents": 1, "dependents_settled": 1, "ended_at": 1}
        fields["created_at"] = 1
        return self.coll.find(query, fields).sort(LIST_SORT).skip(keep).limit(batch)

    async def trim(
        self,
        name: str,
        statuses: list[JobStatus],
        keep: int,
        batch: int,
        before: dt.datetime | None = None,
        resume: dict[Any, dt.datetime] | None = None,
    ) -> tuple[int, bool]:
        """Delete the ended jobs of `name` in `statuses` past its `keep` most recently created
        (those created after `before`, the retention floor, when given, count among them and
        are kept, as are those ended after it), at most `batch` per call
        (see `trim_query` and `trim_cursor`). Returns how many were deleted, and whether the
        read found a whole batch past the count (more may be left: kept jobs and those another
        worker deleted first are not counted as deleted). The read goes on past the jobs
        created long ago that ended within the floor (kept: their producer may read them) to
        a batch of the others, reading at most 10 batches' worth; `resume` (the caller's, kept
        between passes) then records where it stopped, and the next pass goes on from there
        (a window of kept jobs re-read at every pass would never reach the older ones)."""
        query = self.trim_query(name, statuses, before)
        key = (name, tuple(s.value for s in statuses))
        after = resume.pop(key, None) if resume is not None else None
        read_query = query
        if after is not None:  # the count is already behind it: none of those is kept by it
            bound = after if before is None else min(after, before)
            read_query = query | {"created_at": {"$lt": bound}}
        skip = 0
        if after is None:  # the count: the `keep` most recent of them all, those within the
            # floor included (kept anyway), so only what they leave of it is kept of the older
            skip = keep - await self._created_since(name, statuses, before, keep)
        found: list[Doc] = []
        scan, read, last = 10 * batch, 0, None
        cursor = self.trim_cursor(read_query, skip, 0)
        try:
            async for d in cursor:
                read += 1
                doc = decode(d)
                last = doc.get("created_at")
                ended = doc.get("ended_at")
                if before is None or not isinstance(ended, dt.datetime) or ended < before:
                    found.append(d)
                if len(found) >= batch or read >= scan:
                    break
        finally:
            await close_stream(cursor)  # a cursor too: its server side freed
        capped = read >= scan and len(found) < batch
        if capped and resume is not None and isinstance(last, dt.datetime):
            resume[key] = last
        # a job whose dependents have not all counted it is kept until a sweep sees them
        # settled; the others by the part of that condition they were read in (usually one)
        by_part: dict[int, list[Any]] = {}
        for d in found:
            part = counted_part(d)
            if part is not None:
                by_part.setdefault(part, []).append(d["_id"])
        deleted = 0
        for part, ids in sorted(by_part.items()):
            # the same conditions again: a job retried, or scheduled after (marked), between
            # the read and here is kept
            where = {"_id": {"$in": ids}} | query | DEPENDENTS_COUNTED_PARTS[part]
            deleted += int((await self.coll.delete_many(where)).deleted_count)
        return deleted, len(found) >= batch or capped

    async def _created_since(
        self, name: str, statuses: list[JobStatus], since: dt.datetime | None, most: int
    ) -> int:
        """How many of the jobs a count ranks (`trim_query`) were created at or after `since`
        (the retention floor), up to `most`: counted on the server (`count_documents`, an
        aggregate `$match`, `$limit` `most`, `$group`), one small reply whatever `most` is.
        The range is read on the {status, name, created_at, _id} index, each job in it fetched
        to check `exit_hook` (not in that index), the scan ending at the `most`-th match.
        (A `$count` stage, or an aggregate's `$match` alone, ignores a date range on nx-27017;
        `count_documents` with a date written at insert, as `created_at` is, is right there:
        docs/testing.md.)"""
        if since is None or most < 1:  # a limit of 0 would count them all
            return 0
        query = self.trim_query(name, statuses) | {"created_at": {"$gte": since}}
        return int(await self.coll.count_documents(query, limit=most))

    @staticmethod
    def counts_pipeline(status: JobStatus) -> list[Doc]:
        """A covered scan of the {status, name, ...} index."""
        return [
            {"$match": {"status": status.value}},
            {"$group": {"_id": "$name", "n": {"$sum": 1}}},
        ]

    async def counts_by_name(self, status: JobStatus) -> dict[str, int]:
        rows = await aggregate(self.coll, self.counts_pipeline(status))
        return {str(r["_id"]): int(r["n"]) for r in rows}
