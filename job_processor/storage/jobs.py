"""The jobs collection: the domain verbs on jobs, and nothing else talks to it.

Every status change is ONE single-document atomic update whose filter restates what must still be
true (compare-and-set), built by `documents`. A verb that returns None / False lost the race: the
caller re-reads and decides; it never retries blindly. Writes use write concern "majority" (see
docs/guide.md, "Durability").
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bson
from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import OperationFailure, PyMongoError, WriteConcernError

from ..core import documents as D
from ..core import foreign as FD
from ..core import notes as N
from ..core.documents import CLAIM_SORT
from ..core.errors import JobNotFoundError
from ..core.models import Job
from ..core.outcome import Outcome
from ..core.retention import Retention
from ..core.status import JobStatus
from .compat import (
    IndexKeys,
    ServerProfile,
    all_docs,
    decode,
    not_in,
    open_stream,
)
from .job_actions import JobActions
from .job_crons import CronTasks
from .job_flows import FlowRecords
from .job_hooks import HookRecords
from .job_inserts import JobInserts
from .job_reads import JobReads
from .job_strays import TYPE_MISMATCH, ForeignJobs
from .transient import TRANSIENT, WriteStop, driver_bound, ride_out

#: A claim that raised one of these may have landed: read back by its run id.
MAY_HAVE_LANDED: tuple[type[BaseException], ...] = (*TRANSIENT, WriteConcernError)
#: MaxTimeMSExpired: a claim's driver bound (`driver_bound`) ran out on the server. A
#: multi-update keeps the documents it updated before (as a command error or a write error);
#: a single one may have committed as it ran out: read back too.
TIME_LIMIT = 50


def timed_out(exc: OperationFailure) -> bool:
    """A claim cut by its time limit (`TIME_LIMIT`): it may have landed, in part."""
    return exc.code == TIME_LIMIT


Doc = dict[str, Any]
AFTER = ReturnDocument.AFTER
S = JobStatus

#: MongoDB merges one sorted index scan per name for the claim up to this many names; past
#: it the claim sorts in memory (init_job_processor warns).
MAX_SORTED_NAMES = 200


#: (keys, options). Each query a worker or a user runs often has its index here; the real-server
#: tier (tests/storage/test_real_mongodb.py) asserts the plans.
INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    # claim_next: {claim_name: $in, due_ms: $lte} sorted by CLAIM_SORT. One $in (claim_name
    # exists only while claimable, so it carries status and name): the planner merges one
    # sorted scan per name, no blocking SORT (up to 200 names per worker).
    ([("claim_name", 1), ("priority", -1), ("due_ms", 1), ("_id", 1)], {}),
    # only one active job per name / dedup key / cron slot: fields present only while active
    ([("exclusive_key", 1)], {"unique": True, "sparse": True}),
    ([("dedup_key", 1)], {"unique": True, "sparse": True}),
    ([("cron_slot_key", 1)], {"unique": True, "sparse": True}),
    # the jobs waiting on a dependency that just ended (multikey: `after` lists their ids)
    ([("after", 1), ("status", 1)], {}),
    # a job's dependents newest first (its dashboard page); only jobs scheduled after others
    ([("after", 1), ("_id", -1)], {"partialFilterExpression": {"after": {"$exists": True}}}),
    # the sweep: ended jobs with dependents not yet seen settled; waiting jobs in `_id` order
    ([("has_dependents", 1), ("status", 1)], {"partialFilterExpression": {"has_dependents": True}}),
    ([("status", 1), ("_id", 1)], {"partialFilterExpression": {"status": "waiting"}}),
    # jobs skipped by a failed dependency, until a sweep applies their name's retention
    ([("expiry_pending", 1)], {"partialFilterExpression": {"expiry_pending": True}}),
    # cron tasks that waited past their check-in margin
    ([("type", 1), ("status", 1), ("start_deadline", 1)], {}),
    # a worker's running jobs (kill checks, reconciliation, the recovery sweep)
    ([("status", 1), ("worker_id", 1)], {}),
    # listings, newest first: all jobs, by status, by name (and cron history), by name+status;
    # {status, name} is also the covered scan behind counts_by_name
    ([("created_at", -1), ("_id", -1)], {}),
    ([("status", 1), ("created_at", -1), ("_id", -1)], {}),
    ([("name", 1), ("created_at", -1), ("_id", -1)], {}),
    ([("status", 1), ("name", 1), ("created_at", -1), ("_id", -1)], {}),
    # operator listings by tag and by dedup key (job_processor.admin)
    ([("tag", 1), ("created_at", -1), ("_id", -1)], {}),
    ([("key", 1), ("created_at", -1), ("_id", -1)], {}),
    # ended jobs by end time: purges, and jobs per minute (a covered scan)
    ([("status", 1), ("ended_at", 1)], {}),
    # on_job_exited hooks owed by a worker that died
    ([("exit_hook", 1), ("exit_hook_at", 1)], {}),
    # retention: ended jobs expire at expires_at (set with the final write or the hook record)
    ([("expires_at", 1)], {"expireAfterSeconds": 0}),
]

#: BSON's document limit, less room for the rest of the job document.
MAX_VALUE_BYTES = D.MAX_PAYLOAD_BYTES
#: The ids of the last writes that pushed log lines, kept on a running job (`save_notes`).
NOTES_IDS_KEPT = 8


def object_id(job_id: str | ObjectId) -> ObjectId:
    """A job id as given (a str or an ObjectId; a Job is taken for its id). An error never
    shows more of what was given than a short string (a payload could be in it)."""
    if isinstance(job_id, ObjectId):
        return job_id
    given: Any = job_id
    if isinstance(given, Job):
        given = given.id
    if not isinstance(given, str):
        raise JobNotFoundError(
            f"a {type(given).__name__} is not a job id: pass the job's id, a str of 24 hex "
            "characters (job.id)"
        )
    try:
        return ObjectId(given)
    except bson.errors.InvalidId:
        shown = given if len(given) <= 40 else given[:40] + "..."
        raise JobNotFoundError(f"{shown!r} is not a job id (24 hex characters)") from None


class LostClaim(Exception):
    """A claim's reply was lost and could not be read back (MongoDB unreachable past the
    budget): jobs may be running under `run_id` that this worker never started."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"claim {run_id}: reply lost, not readable")
        self.run_id = run_id


@dataclass(frozen=True)
class EndItem:
    """One final write waiting to be grouped with others (`JobStore.end_runs`)."""

    claimed: Doc
    outcome: Outcome
    now: dt.datetime
    writer: str | None
    duration_ms: int | None = None
    notes: Doc | None = None
    """The run's pending progress and log lines, written with it."""
    stop: WriteStop | None = None  # set when the writer gives the run up: no try after it


@dataclass(frozen=True)
class EndWrite:
    """What a final write did: `doc` is the job after it, or None when it did not apply.
    `kill_requested`: it did not apply because a kill was requested meanwhile (decide again)."""

    doc: Doc | None
    kill_requested: bool = False
    dependents: bool = False
    """It did not apply because jobs were scheduled after this one since its claim (write
    again, knowing it: `JobStore.end_run` does)."""


class JobStore(JobInserts, CronTasks, JobActions, FlowRecords, ForeignJobs, HookRecords, JobReads):
    """The domain verbs on jobs (see the module docstring); creation, those on documents other
    programs wrote, on on_job_exited records and the reads are in `job_inserts`, `job_strays`,
    `job_hooks`, `job_reads`."""

    def __init__(self, collection: Any, profile: ServerProfile) -> None:
        self.coll = collection
        self.profile = profile
        #: How long a name's jobs errored without running are kept (set by the processor:
        #: the definition's keep_failed, else the processor's; None: a name unknown here, kept).
        self.retention_of: Callable[[str], Retention | None] = lambda name: Retention()

    @property
    def name(self) -> str:
        return str(self.coll.name)

    # ---- creation ---------------------------------------------------------------------------

    def due_by_key_cursor(
        self, names: list[str], now: dt.datetime, skip_keys: list[str], n: int
    ) -> Any:
        query = D.claim_filter(names, now)
        if skip_keys:
            query["limit_key"] = {"$nin": sorted(skip_keys)}
        fields = {"_id": 1, "limit_key": 1, "payload": 1, "priority": 1, "due_ms": 1}
        return self.coll.find(query, fields).sort(CLAIM_SORT).limit(n)

    async def fill_limit_key(self, docs: list[Doc], key: str) -> None:
        """Jobs read as candidates of a per-value limit (`docs`, as `due_by_key` read them)
        whose recorded key is not `key`: inserted by another program (the field missing, null
        or empty), or scheduled under another limit (a static one a deploy made per value):
        their key (from their payload) recorded, as a producer records it (`due_by_key` then
        leaves them out while it is full). One update per key they had (usually one)."""
        by_filter: dict[Any, list[Any]] = {}
        for doc in docs:
            by_filter.setdefault(doc.get("limit_key", ...), []).append(doc["_id"])
        for was, ids in by_filter.items():
            missing = {"$exists": False} if was is ... else was
            await self.coll.update_many(
                {"_id": {"$in": ids}, "limit_key": missing}, {"$set": {"limit_key": key}}
            )

    async def due_by_key(
        self, names: list[str], now: dt.datetime, skip_keys: list[str], n: int
    ) -> list[Doc]:
        """The best `n` due jobs of these names whose limit key is not one of `skip_keys` (per-
        value limits: the keys found full), in claim order; `_id`, `limit_key` and `payload`."""
        return await all_docs(self.due_by_key_cursor(names, now, skip_keys, n))

    # ---- claim and run ----------------------------------------------------------------------

    async def claim_next(
        self,
        names: Iterable[str],
        worker_id: str,
        now: dt.datetime,
        run_id: str | None = None,
        limit_key: str | None = None,
        budget: float = 30.0,
        only: ObjectId | None = None,
        bound: float | None = None,
    ) -> Doc | None:
        """Atomically take the best due job among `names` (pending or paused); `only`: that
        job, if still claimable. A reply lost to a network error is read back by the claim's
        run id (within `budget`); if that fails too, LostClaim says which run id may hold one.
        `bound`: seconds within which the driver sends the claim or gives it up (`driver_bound`:
        the worker's lease), whoever waits for it."""
        update = D.claim_update(worker_id, now, run_id, limit_key)
        names = list(names)
        if only is None:
            as_or = self.profile.in_as_or and len(names) <= MAX_SORTED_NAMES
            query = D.claim_filter(names, now, as_or=as_or)
        else:
            query = D.claim_filter(names, now) | {"_id": only}
        for _ in range(3):
            try:
                with driver_bound(bound):  # the claim alone: a read-back has its own budget
                    result: Doc | None = await self.coll.find_one_and_update(
                        query,
                        update,
                        sort=CLAIM_SORT,
                        projection=dict(D.CLAIM_PROJECTION),  # a copy: mongomock alters it
                    )
            except MAY_HAVE_LANDED:  # it may have landed: read it back
                return await self._claim_read_back(update, names, budget)
            except OperationFailure as exc:
                if timed_out(exc):  # it may have landed: read it back (never sent: nothing)
                    return await self._claim_read_back(update, names, budget)
                if exc.code != TYPE_MISMATCH or not await self.error_uncountable(names, now):
                    raise
                continue  # the document no claim could take is errored: claim again
            return None if result is None else D.claimed_doc(decode(result), update)
        return None

    async def _claim_read_back(self, update: Doc, names: list[str], budget: float) -> Doc | None:
        """The job a claim whose outcome is unknown took, if it landed."""
        found = await self._read_back(update["$set"]["run_id"], budget)
        if found and found[0].get("name") not in names:  # claimed under another name:
            was = names[0] if len(names) == 1 else "one of the names claimed"
            return found[0] | {"claim_name": was}  # misnamed: errored, not run
        return found[0] if found else None

    async def _read_back(self, run_id: str, budget: float) -> list[Doc]:
        """The jobs a claim under `run_id` took, when its reply was lost."""
        mine = {"status": S.RUNNING.value, "run_id": run_id}
        try:
            return await ride_out(lambda: all_docs(self.coll.find(mine)), budget)
        except TRANSIENT:
            raise LostClaim(run_id) from None

    def claim_more_cursor(self, names: list[str], now: dt.datetime, k: int) -> Any:
        """A batch claim's read: the best `k` due jobs (the claim index, no sort in memory)."""
        return self.coll.find(D.claim_filter(names, now), {"logs": 0}).sort(CLAIM_SORT).limit(k)

    async def claim_more(
        self,
        names: list[str],
        worker_id: str,
        now: dt.datetime,
        k: int,
        budget: float = 30.0,
        bound: float | None = None,
    ) -> list[Doc]:
        """Up to `k` more due jobs, in order, in two commands: find the best `k`, then claim
        those still claimable AND unchanged since (the same `end_id`: any write that makes a
        job claimable again sets a new one) with one update_many; they share its run id. Only
        when another worker took some meanwhile are the ones claimed here read back. `bound`:
        as for `claim_next`, over the two commands."""
        with driver_bound(bound):
            candidates = await all_docs(self.claim_more_cursor(names, now, k))
        unclaimable = [c for c in candidates if FD.uncountable(c)]
        if unclaimable:  # no claim could take these (another program wrote them): error them
            await self._error_uncountable_docs(unclaimable, now)
            candidates = [c for c in candidates if not FD.uncountable(c)]
        if not candidates:
            return []
        update = D.claim_update(worker_id, now)
        ids = [c["_id"] for c in candidates]
        # distinct by their text: another program's end_id may be a number or a document
        seen = list({repr(c.get("end_id")): c.get("end_id") for c in candidates}.values())
        query = {"_id": {"$in": ids}, "end_id": {"$in": seen}} | D.claim_filter(names, now)
        mismatch = False
        try:
            with driver_bound(bound):
                res = await self.coll.update_many(query, update)
        except MAY_HAVE_LANDED:  # it may have landed: take what carries our run id
            res = None
        except OperationFailure as exc:
            # changed since read (another program): MongoDB stops a multi-update at the first
            # document it cannot apply to and keeps the ones before; take those, error the cause
            # (cut by its time limit: it keeps those too, taken by their run id)
            if exc.code != TYPE_MISMATCH and not timed_out(exc):
                raise
            res = None
            mismatch = exc.code == TYPE_MISMATCH
        if res is not None and res.modified_count == len(ids):
            return [D.claimed_doc(c, update) for c in candidates]
        if res is not None and res.modified_count == 0:
            return []
        claimed = {d["_id"]: d for d in await self._read_back(update["$set"]["run_id"], budget)}
        if mismatch:  # after taking what landed; failing here only delays it to the next claim
            with contextlib.suppress(PyMongoError, TimeoutError):
                await self._error_uncountable_docs(
                    await all_docs(
                        self.coll.find({"_id": {"$in": ids}, "claim_name": {"$in": names}})
                    ),
                    now,
                )
        # read back, a job's claim_name is gone: a misnamed one keeps it (errored, not run)
        wrong = {c["_id"]: c["claim_name"] for c in candidates if D.misnamed(c)}
        return [
            claimed[i] | ({"claim_name": wrong[i]} if i in wrong else {})
            for i in ids
            if i in claimed
        ]

    async def save_checkpoint(
        self,
        job_id: ObjectId,
        run_id: str,
        state: Doc,
        now: dt.datetime,
        budget: float,
        notes: Doc | None = None,
    ) -> bool:
        """False when this run no longer owns the job. `notes`: the run's pending progress and
        log lines (`core.notes.notes_update`), written in the same update."""
        update = N.merged({"$set": {"state": state, "updated_at": now}}, notes or {})
        return await self.save_notes(job_id, run_id, update, budget)

    async def save_notes(
        self,
        job_id: ObjectId,
        run_id: str,
        update: Doc,
        budget: float,
        notes_id: str | None = None,
    ) -> bool:
        """Apply `update` to the job while this run owns it (False when it no longer does). One
        that pushes log lines carries an id of its own (`notes_id`, given or made here):
        retried after a lost reply, it is recognised as landed, and its lines are not pushed
        twice; past the budget, `notes_landed` tells."""
        if "$push" not in update:
            notes_id = None
        elif notes_id is None:
            notes_id = D.new_id()
        if notes_id is not None:  # the last few: one that landed is found after later ones
            ids = {"$each": [notes_id], "$slice": -NOTES_IDS_KEPT}
            update = N.merged(update, {"$push": {"notes_ids": ids}})
        tried = False

        async def once() -> bool:
            nonlocal tried
            owned = {"_id": job_id, "status": S.RUNNING.value, "run_id": run_id}
            landed = {"notes_ids": notes_id}  # the try before may have landed
            if tried and notes_id is not None and await self.coll.find_one(owned | landed):
                return True
            tried = True
            res = await self.coll.update_one(owned, update)
            return bool(res.matched_count)

        return await ride_out(once, budget)

    async def notes_landed(
        self, job_id: ObjectId, run_id: str, notes_id: str, budget: float
    ) -> bool:
        """Whether the notes write that carried `notes_id` landed (among the last
        NOTES_IDS_KEPT: a checkpoint in flight beside it may have landed after it)."""
        owned = {"_id": job_id, "run_id": run_id, "notes_ids": notes_id}
        return await ride_out(lambda: self.coll.find_one(owned, {"_id": 1}), budget) is not None

    async def end_run(
        self,
        claimed: Doc,
        outcome: Outcome,
        now: dt.datetime,
        *,
        writer: str | None,
        budget: float,
        duration_ms: int | None = None,
        end_id: str | None = None,
        notes: Doc | None = None,
        stop: WriteStop | None = None,
    ) -> EndWrite:
        """Running -> outcome.status, only if this run still owns the job (and, for outcomes a
        kill overrides, no kill was requested). Transient errors are retried within `budget`
        (until `stop` is set); a lost reply is recognised by `end_id` (of a retried write)."""
        written = await self._end_run(
            claimed, outcome, now, writer, budget, duration_ms, end_id, notes, stop
        )
        if written.dependents:  # scheduled after it since its claim: write again, knowing it
            claimed = claimed | {"has_dependents": True}
            written = await self._end_run(
                claimed, outcome, now, writer, budget, duration_ms, None, notes, stop
            )
        return written

    async def _end_run(
        self,
        claimed: Doc,
        outcome: Outcome,
        now: dt.datetime,
        writer: str | None,
        budget: float,
        duration_ms: int | None,
        end_id: str | None,
        notes: Doc | None,
        stop: WriteStop | None = None,
    ) -> EndWrite:
        end_id = end_id or D.new_id()
        query = D.end_filter(claimed, outcome)
        update = N.merged(
            D.end_update(
                claimed, outcome, now, end_id=end_id, writer=writer, duration_ms=duration_ms
            ),
            notes or {},
        )

        async def once() -> bool:
            res = await self.coll.update_one(query, update)
            return bool(res.matched_count)

        # no document comes back: the job after the write is computed here (one write, a
        # small reply); only a write that did not apply reads the job to tell why
        stops = (stop,) if stop else ()
        if await ride_out(once, budget, stops=stops):
            return EndWrite(D.applied(claimed, update))
        current = await ride_out(lambda: self.get(claimed["_id"]), budget, stops=stops)
        return self._resolve(claimed, current, end_id, query)

    async def end_runs(self, items: list[EndItem], budget: float) -> list[EndWrite | Exception]:
        """Several final writes in one bulk_write (one command). When every write matched, the
        documents are computed here; otherwise each is resolved from one read (its `end_id`
        tells whether it landed; a kill requested meanwhile is reported). A write that cannot be
        encoded (e.g. over 16 MB) makes the batch fall back to single writes, so only that job
        gets the error."""
        if len(items) == 1 or not self.profile.bulk_ok:
            return [await self._end_one(item, budget) for item in items]
        stops = [i.stop for i in items if i.stop]  # sent while one writer still owns its run
        stops = stops if len(stops) == len(items) else []  # (none for a writer without one)
        end_ids = [D.new_id() for _ in items]
        built = [
            (
                D.end_filter(i.claimed, i.outcome),
                N.merged(
                    D.end_update(
                        i.claimed,
                        i.outcome,
                        i.now,
                        end_id=end_id,
                        writer=i.writer,
                        duration_ms=i.duration_ms,
                    ),
                    i.notes or {},
                ),
            )
            for i, end_id in zip(items, end_ids, strict=True)
        ]
        ops = [UpdateOne(q, u) for q, u in built]
        try:
            res = await ride_out(
                lambda: self.coll.bulk_write(ops, ordered=False), budget, stops=stops
            )
        except TRANSIENT:
            raise
        except Exception:  # some writes may have landed (unordered): the same end ids tell
            return [
                await self._end_one(item, budget, end_id)
                for item, end_id in zip(items, end_ids, strict=True)
            ]
        if res.matched_count == len(ops):
            return [
                EndWrite(D.applied(i.claimed, u)) for i, (_, u) in zip(items, built, strict=True)
            ]
        ids = [i.claimed["_id"] for i in items]
        got = await ride_out(lambda: self.get_many(ids), budget, stops=stops)
        current = {d["_id"]: d for d in got}
        out: list[EndWrite | Exception] = []
        for item, end_id, (query, _) in zip(items, end_ids, built, strict=True):
            written = self._resolve(item.claimed, current.get(item.claimed["_id"]), end_id, query)
            if written.dependents:  # write this one again, alone, knowing them
                item.claimed["has_dependents"] = True
                out.append(await self._end_one(item, budget))
            else:
                out.append(written)
        return out

    async def get_many(self, ids: list[ObjectId]) -> list[Doc]:
        return await all_docs(self.coll.find({"_id": {"$in": ids}}))

    async def _end_one(
        self, item: EndItem, budget: float, end_id: str | None = None
    ) -> EndWrite | Exception:
        try:
            return await self.end_run(
                item.claimed,
                item.outcome,
                item.now,
                writer=item.writer,
                budget=budget,
                duration_ms=item.duration_ms,
                end_id=end_id,
                notes=item.notes,
                stop=item.stop,
            )
        except Exception as exc:
            return exc

    @staticmethod
    def _resolve(claimed: Doc, current: Doc | None, end_id: str, query: Doc) -> EndWrite:
        """What a final write sent with `query` that matched nothing means, from the job as it
        is now. Whether it excluded dependents is read from `query`, not from `claimed`: the run's
        document may have learnt of them meanwhile (the kill-request check notes them), and the
        write must then be made again knowing them, not given up as lost."""
        if current is None:
            return EndWrite(None)
        if current.get("end_id") == end_id:  # our write landed (its reply may have been lost)
            return EndWrite(current)
        still_ours = current["status"] == S.RUNNING.value and current.get("run_id") == claimed.get(
            "run_id"
        )
        if still_ours and current.get("has_dependents") and "has_dependents" in query:
            return EndWrite(None, dependents=True)
        return EndWrite(None, kill_requested=still_ours and bool(current.get("kill_requested_at")))

    def watch_one(self, job_id: ObjectId, max_await_ms: int, baseline: int = 0) -> Any:
        """A change stream of one job's changes (`compat.open_stream` opens it)."""
        match = [{"$match": {"documentKey._id": job_id}}]
        return open_stream(self.coll, match, max_await_ms, baseline)

    # ---- a worker's own jobs, and recovery ----------------------------------------------------

    def running_on_cursor(self, worker_id: str) -> Any:
        return self.coll.find({"status": S.RUNNING.value, "worker_id": worker_id})

    async def running_on(self, worker_id: str) -> list[Doc]:
        """One query: the jobs the database says this worker is running (kill requests are
        read from these; reconciliation compares them with what the worker really runs)."""
        return await all_docs(self.running_on_cursor(worker_id))

    async def orphaned(self, live_worker_ids: list[str], cutoff: dt.datetime) -> list[Doc]:
        """Running jobs whose worker is not alive, claimed before `cutoff` (a worker registering
        right now is never mistaken for a dead one)."""
        candidates = await all_docs(
            self.coll.find({"status": S.RUNNING.value, "run_started_at": {"$lt": cutoff}})
        )
        return not_in(candidates, "worker_id", set(live_worker_ids))
