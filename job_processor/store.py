"""The only module that talks to MongoDB.

Every status change is ONE single-document atomic update whose filter restates what must still be
true (compare-and-set). A verb that returns None / False lost the race: the caller re-reads and
decides; it never retries blindly. The same code serves PyMongo's AsyncMongoClient, motor and
mongomock-motor: only `async for`, awaited collection methods, and `_aggregate` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import bson
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import AutoReconnect, DuplicateKeyError

from .clock import as_utc
from .errors import InvalidDatabaseError, JobNotFoundError
from .models import CLAIMABLE, JobStatus, check_transition

Doc = dict[str, Any]
AFTER = ReturnDocument.AFTER
S = JobStatus

#: Claim query: equality on status and name, range on scheduled_for; sort below.
CLAIM_SORT = [("priority", DESCENDING), ("due_ms", ASCENDING), ("_id", ASCENDING)]
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "jobs": [
        # claim_next: {status: $in, name: $in, due_ms: $lte} sorted by CLAIM_SORT
        (
            [
                ("status", ASCENDING),
                ("name", ASCENDING),
                ("priority", DESCENDING),
                ("due_ms", ASCENDING),
            ],
            {},
        ),
        # "only one active job of this name": exists only while active, $unset when terminal
        ([("exclusive_key", ASCENDING)], {"unique": True, "sparse": True}),
        # dedup keys: the same, for `schedule_job(key=...)`
        ([("dedup_key", ASCENDING)], {"unique": True, "sparse": True}),
        # one task per cron slot, ever ("<cron>|<slot UTC>"); absent on other jobs
        ([("cron_slot_key", ASCENDING)], {"unique": True, "sparse": True}),
        # cron tasks that waited past their check-in margin
        ([("type", ASCENDING), ("status", ASCENDING), ("start_deadline", ASCENDING)], {}),
        # a worker's running jobs (kill checks, recovery sweep)
        ([("status", ASCENDING), ("worker_id", ASCENDING)], {}),
        # listing a job's history
        ([("name", ASCENDING), ("created_at", DESCENDING)], {}),
    ],
    "workers": [([("last_seen", ASCENDING)], {})],
}


#: Top-level date fields. nx-27017 stores a date written by a top-level `$set` as a string
#: ("2030-01-01 10:00:00.123000"); comparisons still work there, and we decode on read.
DATE_FIELDS = frozenset(
    {
        "scheduled_for",
        "created_at",
        "updated_at",
        "started_at",
        "run_started_at",
        "ended_at",
        "kill_requested_at",
        "last_seen",
        "next_slot",
        "start_deadline",
    }
)
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?$")


def decode(doc: Doc) -> Doc:
    """Documents read back: dates as aware UTC datetimes, whatever the server stored."""
    for key in DATE_FIELDS.intersection(doc):
        value = doc[key]
        if isinstance(value, str) and _DATE_TEXT.match(value):
            doc[key] = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        elif isinstance(value, dt.datetime):
            doc[key] = as_utc(value)
    return doc


def check_database(db: Any) -> None:
    """Refuse sync databases and clients with a message that says what to pass instead."""
    from pymongo.database import Database
    from pymongo.mongo_client import MongoClient

    if isinstance(db, Database):
        raise InvalidDatabaseError(
            "db is a synchronous pymongo Database; pass an async one: "
            "pymongo.AsyncMongoClient(url)['mydb'] (or motor's AsyncIOMotorClient(url)['mydb'])"
        )
    if isinstance(db, MongoClient) or type(db).__name__ in {
        "AsyncMongoClient",
        "AsyncIOMotorClient",
        "AsyncMongoMockClient",
    }:
        raise InvalidDatabaseError(
            "db is a client, not a database: pass client['mydb'] (or client.get_default_database())"
        )
    if type(db).__module__.startswith("mongomock.") or not hasattr(db, "get_collection"):
        raise InvalidDatabaseError(
            f"db must be an async MongoDB database (pymongo AsyncDatabase or motor "
            f"AsyncIOMotorDatabase), got {type(db).__name__}"
        )


#: Seconds between retries of a final write after a transient network error.
TRANSIENT_BACKOFF = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)


def _applied(current: Doc, claimed: Doc, status: JobStatus, now: dt.datetime) -> bool:
    """Is `current` our own end_run write, made by an attempt whose reply was lost?"""
    if current["status"] != status.value or current.get("updated_at") != now:
        return False
    return status == S.PAUSED or current.get("run_id") == claimed["run_id"]


def epoch_ms(value: dt.datetime) -> int:
    """`due_ms`: scheduled_for as an integer, the field claims filter and sort on. Integers compare
    the same on every server (nx-27017 stores a `$set` date as text, which breaks `$in` + range)."""
    return int(as_utc(value).timestamp() * 1000)


def decode_opt(doc: Doc | None) -> Doc | None:
    return None if doc is None else decode(doc)


async def _all(cursor: Any) -> list[Doc]:
    return [decode(doc) async for doc in cursor]


async def _aggregate(collection: Any, pipeline: list[Doc]) -> list[Doc]:
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):  # PyMongo async returns a coroutine; motor a cursor
        cursor = await cursor
    return [doc async for doc in cursor]


def object_id(job_id: str | ObjectId) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    try:
        return ObjectId(job_id)
    except (bson.errors.InvalidId, TypeError):
        raise JobNotFoundError(f"{job_id!r} is not a job id (24 hex characters)") from None


class Store:
    def __init__(self, db: Any, prefix: str = "job_processor_") -> None:
        check_database(db)
        self.db = db
        self.jobs = db.get_collection(f"{prefix}jobs")
        self.workers = db.get_collection(f"{prefix}workers")
        self.crons = db.get_collection(f"{prefix}crons")

    async def ensure_indexes(self) -> None:
        """Idempotent: created from key specs, never looked up by name."""
        for coll_name, specs in INDEXES.items():
            coll = getattr(self, coll_name)
            for keys, opts in specs:
                await coll.create_index(keys, **opts)

    # ---- jobs: creation -------------------------------------------------------------------

    @staticmethod
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
    ) -> Doc:
        """A complete job document: every field written (see the test-server notes)."""
        doc: Doc = {
            "_id": ObjectId(),
            "name": name,
            "type": job_type,
            "status": S.PENDING.value,
            "payload": dict(payload),
            "priority": priority,
            "tag": tag,
            "scheduled_for": scheduled_for or now,
            "due_ms": epoch_ms(scheduled_for or now),
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "run_started_at": None,
            "ended_at": None,
            "worker_id": None,
            "run_id": None,
            "attempt": 0,
            "state": None,
            "output": None,
            "kill_requested_at": None,
            "skip_reason": None,
            "conflicting_job_id": None,
            "key": key,
            "max_attempts": max_attempts,
            "failures": 0,
            "history": [],
            **(extra or {}),
        }
        if exclusive:
            doc["exclusive_key"] = name
        if key is not None:
            doc["dedup_key"] = key
        return doc

    async def insert_job(self, doc: Doc) -> Doc | None:
        """Insert a pending (or running) job. With a dedup key held by an active job, that job is
        returned instead (compare `_id`). An exclusive job whose name already has an active job is
        inserted as `skipped`, recording the conflicting job's id. Race-free: unique sparse
        indexes on `dedup_key` / `exclusive_key` decide. Returns None only for a cron slot whose
        task already exists (`cron_slot_key`): another replica created it."""
        check_transition(None, S(doc["status"]))
        for _ in range(10):
            try:
                await self.jobs.insert_one(doc)
                return doc
            except DuplicateKeyError:
                if await self._slot_taken(doc):
                    return None
                if "dedup_key" in doc:
                    same = await self.jobs.find_one({"dedup_key": doc["dedup_key"]})
                    if same is not None:
                        return decode(same)
                    if "exclusive_key" not in doc:
                        continue  # it ended meanwhile: try again
                if "exclusive_key" not in doc:
                    raise
                holder = await self.jobs.find_one(
                    {"exclusive_key": doc["exclusive_key"]}, {"_id": 1}
                )
                if holder is None:  # it ended between our insert and this read: try again
                    continue
                check_transition(None, S.SKIPPED)
                dropped = {"exclusive_key", "dedup_key", "_id"}
                skipped = {k: v for k, v in doc.items() if k not in dropped} | {
                    "_id": ObjectId(),
                    "status": S.SKIPPED.value,
                    "skip_reason": "exclusive",
                    "conflicting_job_id": holder["_id"],
                    "ended_at": doc["created_at"],
                    "worker_id": None,
                    "run_id": None,
                    "run_started_at": None,
                    "attempt": 0,
                }
                try:
                    await self.jobs.insert_one(skipped)
                except DuplicateKeyError:
                    if await self._slot_taken(doc):
                        return None
                    raise
                return skipped
        raise RuntimeError(f"could not insert exclusive job {doc['name']!r}: constant contention")

    async def _slot_taken(self, doc: Doc) -> bool:
        key = doc.get("cron_slot_key")
        return (
            key is not None
            and await self.jobs.find_one({"cron_slot_key": key}, {"_id": 1}) is not None
        )

    # ---- crons ------------------------------------------------------------------------------

    @staticmethod
    def slot_key(name: str, slot: dt.datetime) -> str:
        return f"{name}|{as_utc(slot).isoformat(timespec='milliseconds')}"

    def _cron_task(self, name: str, cron: Any, slot: dt.datetime, now: dt.datetime) -> Doc:
        deadline = slot + dt.timedelta(minutes=cron.checkin_margin)
        return self.new_job(
            name,
            {},
            now=now,
            scheduled_for=slot,
            tag=cron.tag,
            exclusive=cron.concurrency == "exclusive",
            job_type="cron_task",
            extra={
                "trigger": "schedule",
                "start_deadline": deadline,
                "cron_slot_key": self.slot_key(name, slot),
            },
        )

    async def insert_cron_task(
        self, name: str, cron: Any, slot: dt.datetime, now: dt.datetime
    ) -> Doc | None:
        """The slot's task (pending, or skipped on an exclusive conflict); None if it existed."""
        return await self.insert_job(self._cron_task(name, cron, slot, now))

    async def insert_missed_slot(
        self, name: str, cron: Any, slot: dt.datetime, now: dt.datetime
    ) -> bool:
        """Record a slot that was not started within its margin: skipped, reason "missed"."""
        doc = self._cron_task(name, cron, slot, now)
        doc.pop("exclusive_key", None)
        doc |= {"status": S.SKIPPED.value, "skip_reason": "missed", "ended_at": now}
        return await self.insert_job(doc) is not None

    async def expire_missed_cron_tasks(self, now: dt.datetime) -> int:
        """Pending cron tasks past their start deadline never run late: skipped, "missed"."""
        check_transition(S.PENDING, S.SKIPPED)
        res = await self.jobs.update_many(
            {"type": "cron_task", "status": S.PENDING.value, "start_deadline": {"$lt": now}},
            {
                "$set": {
                    "status": S.SKIPPED.value,
                    "skip_reason": "missed",
                    "ended_at": now,
                    "updated_at": now,
                },
                "$unset": {"exclusive_key": "", "dedup_key": ""},
            },
        )
        return int(res.modified_count)

    async def register_crons(
        self, crons: Mapping[str, Any], first_slots: Mapping[str, dt.datetime], now: dt.datetime
    ) -> dict[str, str]:
        """Upsert one document per cron; reschedule from now when its schedule changed; remove
        crons no longer defined with their pending tasks. Safe when replicas start together.
        A process that defines no cron (a web app that only schedules jobs) removes nothing.
        Returns what happened to each cron name ("created", "rescheduled", "kept", "removed")."""
        outcome: dict[str, str] = {}
        for name, cron in crons.items():
            settings = {
                "cron_string": cron.cron_string,
                "timezone": cron.timezone,
                "checkin_margin": cron.checkin_margin,
                "max_runtime_in_minutes": cron.max_runtime_in_minutes,
                "tag": cron.tag,
                "concurrency": cron.concurrency,
                "resumable": cron.resumable,
            }
            existing = await self.crons.find_one({"_id": name})
            if existing is None:
                with contextlib.suppress(DuplicateKeyError):  # a replica starting now made it
                    await self.crons.update_one(
                        {"_id": name},
                        {
                            "$setOnInsert": settings
                            | {"next_slot": first_slots[name], "created_at": now, "updated_at": now}
                        },
                        upsert=True,
                    )
                outcome[name] = "created"
            elif (existing["cron_string"], existing["timezone"]) != (
                cron.cron_string,
                cron.timezone,
            ):
                await self.crons.update_one(
                    {
                        "_id": name,
                        "cron_string": existing["cron_string"],
                        "timezone": existing["timezone"],
                    },
                    {"$set": settings | {"next_slot": first_slots[name], "updated_at": now}},
                )
                outcome[name] = "rescheduled"
            else:
                await self.crons.update_one({"_id": name}, {"$set": settings})
                outcome[name] = "kept"
        names = list(crons)
        if not names:
            return outcome
        async for gone in self.crons.find({"_id": {"$nin": names}}, {"_id": 1}):
            outcome[gone["_id"]] = "removed"
        await self.crons.delete_many({"_id": {"$nin": names}})
        await self.jobs.delete_many(
            {"type": "cron_task", "status": S.PENDING.value, "name": {"$nin": names}}
        )
        return outcome

    async def cron_docs(self, names: list[str]) -> list[Doc]:
        return await _all(self.crons.find({"_id": {"$in": names}}))

    async def advance_cron(
        self, name: str, old: dt.datetime, new: dt.datetime, now: dt.datetime
    ) -> bool:
        """Compare-and-set: only moves a cron whose next slot is still `old`."""
        res = await self.crons.update_one(
            {"_id": name, "next_slot": old}, {"$set": {"next_slot": new, "updated_at": now}}
        )
        return bool(res.modified_count)

    async def recent_tasks(self, name: str, limit: int = 5) -> list[Doc]:
        cursor = (
            self.jobs.find({"name": name, "type": "cron_task"})
            .sort([("scheduled_for", DESCENDING)])
            .limit(limit)
        )
        return await _all(cursor)

    # ---- jobs: claim and run --------------------------------------------------------------

    async def claim_next(
        self, names: Iterable[str], worker_id: str, now: dt.datetime
    ) -> Doc | None:
        """Atomically take the best due job among `names` (pending or paused)."""
        check_transition(S.PENDING, S.RUNNING)
        check_transition(S.PAUSED, S.RUNNING)
        result: Doc | None = await self.jobs.find_one_and_update(
            {
                "status": {"$in": [s.value for s in CLAIMABLE]},
                "name": {"$in": list(names)},
                "due_ms": {"$lte": epoch_ms(now)},
            },
            {
                "$set": {
                    "status": S.RUNNING.value,
                    "worker_id": worker_id,
                    "run_id": str(ObjectId()),
                    "run_started_at": now,
                    "updated_at": now,
                },
                "$inc": {"attempt": 1},
            },
            sort=CLAIM_SORT,
            return_document=AFTER,
        )
        return decode_opt(result)

    @staticmethod
    def mark_running(doc: Doc, worker_id: str, now: dt.datetime) -> Doc:
        """For run_job: a new document claimed at insert by the calling process."""
        return doc | {
            "status": S.RUNNING.value,
            "worker_id": worker_id,
            "run_id": str(ObjectId()),
            "run_started_at": now,
            "attempt": 1,
        }

    async def save_checkpoint(
        self, job_id: ObjectId, run_id: str, state: Doc, now: dt.datetime
    ) -> bool:
        res = await self.jobs.update_one(
            {"_id": job_id, "status": S.RUNNING.value, "run_id": run_id},
            {"$set": {"state": state, "updated_at": now}},
        )
        return bool(res.matched_count)

    async def end_run(
        self,
        claimed: Doc,
        status: JobStatus,
        now: dt.datetime,
        output: Doc | None,
        extra: Doc | None = None,
    ) -> Doc | None:
        """Running -> finished | errored | killed | paused, only if this run still owns the job.

        Returns the updated document, or None when another process changed the job first (it was
        recovered after this worker was declared dead, for instance): the caller must not act.
        Transient network errors are retried with backoff; a retry that finds the write already
        applied (the first attempt landed, its answer was lost) returns the document.
        """
        check_transition(S.RUNNING, status)
        for delay in (*TRANSIENT_BACKOFF, None):
            try:
                result = await self._end_run_once(claimed, status, now, output, extra)
            except AutoReconnect:  # includes NetworkTimeout
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            if result is None and delay != TRANSIENT_BACKOFF[0]:
                current = await self.get_job(claimed["_id"])
                if current is not None and _applied(current, claimed, status, now):
                    return current
            return result
        raise AssertionError("unreachable")

    async def _end_run_once(
        self,
        claimed: Doc,
        status: JobStatus,
        now: dt.datetime,
        output: Doc | None,
        extra: Doc | None,
    ) -> Doc | None:
        update: Doc = {
            "$set": {"status": status.value, "updated_at": now, "output": output, **(extra or {})},
        }
        if extra and "scheduled_for" in extra:
            update["$set"]["due_ms"] = epoch_ms(extra["scheduled_for"])
        if claimed.get("started_at") is None:
            update["$set"]["started_at"] = claimed["run_started_at"]
        if status in (S.PAUSED, S.PENDING):  # still active: resumes, or retries at scheduled_for
            update["$set"] |= {"worker_id": None, "run_id": None}
        else:
            if status == S.SKIPPED:  # claimed too late to run: it never started
                update["$set"]["started_at"] = None
            update["$set"]["ended_at"] = now
            update["$unset"] = {"exclusive_key": "", "dedup_key": ""}
        result: Doc | None = await self.jobs.find_one_and_update(
            {"_id": claimed["_id"], "status": S.RUNNING.value, "run_id": claimed["run_id"]},
            update,
            return_document=AFTER,
        )
        return decode_opt(result)

    # ---- jobs: kill ---------------------------------------------------------------------

    async def kill(self, job_id: ObjectId, now: dt.datetime) -> tuple[str, Doc]:
        """Returns ("killed", doc) if this call moved a pending/paused job to killed (the caller
        then owns on_job_exited), ("requested", doc) if the job is running and its worker will
        abort it, ("ended", doc) if it had already ended."""
        check_transition(S.PENDING, S.KILLED)
        check_transition(S.PAUSED, S.KILLED)
        doc = await self.jobs.find_one_and_update(
            {"_id": job_id, "status": {"$in": [S.PENDING.value, S.PAUSED.value]}},
            {
                "$set": {
                    "status": S.KILLED.value,
                    "kill_requested_at": now,
                    "ended_at": now,
                    "updated_at": now,
                    "worker_id": None,
                    "run_id": None,
                },
                "$unset": {"exclusive_key": "", "dedup_key": ""},
            },
            return_document=AFTER,
        )
        if doc is not None:
            return "killed", decode(doc)
        doc = await self.jobs.find_one_and_update(
            {"_id": job_id, "status": S.RUNNING.value},
            {"$set": {"kill_requested_at": now, "updated_at": now}},
            return_document=AFTER,
        )
        if doc is not None:
            return "requested", decode(doc)
        doc = await self.jobs.find_one({"_id": job_id})
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        if doc["status"] in {S.PENDING.value, S.PAUSED.value, S.RUNNING.value}:
            return await self.kill(job_id, now)  # it moved between our two updates
        return "ended", decode(doc)

    async def kill_requests(self, worker_id: str) -> list[Doc]:
        """One query: this worker's running jobs that someone asked to kill."""
        return [
            doc
            async for doc in self.jobs.find(
                {"status": S.RUNNING.value, "worker_id": worker_id},
                {"_id": 1, "run_id": 1, "kill_requested_at": 1},
            )
            if doc.get("kill_requested_at") is not None
        ]

    # ---- workers and recovery -------------------------------------------------------------

    async def register_worker(self, doc: Doc) -> None:
        await self.workers.insert_one(doc)

    async def beat(self, worker_id: str, now: dt.datetime) -> bool:
        """False when this worker's document is gone: it was declared dead."""
        res = await self.workers.update_one({"_id": worker_id}, {"$set": {"last_seen": now}})
        return bool(res.matched_count)

    async def unregister_worker(self, worker_id: str) -> None:
        await self.workers.delete_one({"_id": worker_id})

    async def list_workers(self) -> list[Doc]:
        return await _all(self.workers.find({}))

    async def delete_stale_worker(self, worker_id: str, cutoff: dt.datetime) -> bool:
        res = await self.workers.delete_one({"_id": worker_id, "last_seen": {"$lt": cutoff}})
        return bool(res.deleted_count)

    async def orphaned_jobs(self, live_worker_ids: list[str], cutoff: dt.datetime) -> list[Doc]:
        """Running jobs whose worker is not alive, claimed before `cutoff` (a worker registering
        right now is never mistaken for a dead one)."""
        # worker_id is filtered here: nx-27017 silently matches nothing for `$nin` combined with
        # a date range, and running jobs are few.
        live = set(live_worker_ids)
        candidates = await _all(
            self.jobs.find({"status": S.RUNNING.value, "run_started_at": {"$lt": cutoff}})
        )
        return [doc for doc in candidates if doc.get("worker_id") not in live]

    async def recover(
        self, doc: Doc, status: JobStatus, error: str | None, now: dt.datetime, extra: Doc
    ) -> Doc | None:
        """Exactly once per job across all sweepers: CAS on the dead run's id."""
        output = dict(doc.get("output") or {}) | {"error": error} if error else doc.get("output")
        return await self.end_run(doc, status, now, output, extra)

    async def retry(self, job_id: ObjectId, now: dt.datetime, exclusive: bool) -> Doc | None:
        """errored | killed -> pending now, attempts counted afresh, history kept. Restores the
        exclusive / dedup keys: a DuplicateKeyError means another active job holds them.
        Returns None when the job is not errored or killed."""
        check_transition(S.ERRORED, S.PENDING)
        check_transition(S.KILLED, S.PENDING)
        current = await self.jobs.find_one({"_id": job_id}, {"key": 1, "name": 1})
        if current is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        fields: Doc = {
            "status": S.PENDING.value,
            "scheduled_for": now,
            "due_ms": epoch_ms(now),
            "updated_at": now,
            "ended_at": None,
            "failures": 0,
            "worker_id": None,
            "run_id": None,
            "kill_requested_at": None,
        }
        if exclusive:
            fields["exclusive_key"] = current["name"]
        if current.get("key") is not None:
            fields["dedup_key"] = current["key"]
        result = await self.jobs.find_one_and_update(
            {"_id": job_id, "status": {"$in": [S.ERRORED.value, S.KILLED.value]}},
            {"$set": fields},
            return_document=AFTER,
        )
        return decode_opt(result)

    # ---- change streams (the one driver difference: motor's watch() is not awaited) --------

    async def watch_jobs(self, max_await_ms: int) -> Any:
        stream = self.jobs.watch(
            [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}],
            max_await_time_ms=max_await_ms,
        )
        if inspect.isawaitable(stream):
            stream = await stream
        return stream

    @staticmethod
    async def close_stream(stream: Any) -> None:
        result = stream.close()
        if inspect.isawaitable(result):
            await result

    # ---- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: ObjectId) -> Doc | None:
        return decode_opt(await self.jobs.find_one({"_id": job_id}))

    async def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Doc]:
        query: Doc = {}
        if name is not None:
            query["name"] = name
        if status is not None:
            query["status"] = status
        cursor = self.jobs.find(query).sort([("created_at", DESCENDING)]).limit(limit)
        return await _all(cursor)

    async def running_jobs(self) -> list[Doc]:
        return await _all(
            self.jobs.find(
                {"status": S.RUNNING.value},
                {"_id": 1, "name": 1, "worker_id": 1, "run_started_at": 1, "started_at": 1},
            )
        )

    async def count(self, query: Doc) -> int:
        return int(await self.jobs.count_documents(query))

    async def counts_by_name(self, status: JobStatus) -> dict[str, int]:
        rows = await _aggregate(
            self.jobs,
            [{"$match": {"status": status.value}}, {"$group": {"_id": "$name", "n": {"$sum": 1}}}],
        )
        return {str(r["_id"]): int(r["n"]) for r in rows}
