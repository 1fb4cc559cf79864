"""A dependency's end carried down a flow (`FlowRecords.settle_all`), on every backend: the
jobs it fails are ended level by level, each with the status its own policy gives, and a job
waiting on several failed dependencies is ended once; on the test server, a level costs three
commands whatever its width."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from job_processor.core import documents as D
from job_processor.core import flows as F
from job_processor.storage import Storage
from job_processor.storage.job_flows import FlowRecords
from tests.helpers import CommandNames, Interposed

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@contextlib.asynccontextmanager
async def counted_storage(mongo_url: str, db: Any) -> AsyncIterator[tuple[Storage, CommandNames]]:
    """The flows' store on a client of its own whose commands are recorded."""
    count = CommandNames()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[count]
    )
    try:
        storage = await Storage.open(client[db.name], "t_")
        await storage.ensure_indexes()
        yield storage, count
    finally:
        await client.close()


async def add(
    storage: Storage, after: list[ObjectId] | None = None, policy: str = "skip"
) -> ObjectId:
    doc = D.new_job("j", {}, now=NOW)
    if after:
        doc |= F.waiting_fields(after, policy)
        await storage.jobs.mark_dependents(list(after), NOW)
    inserted = await storage.jobs.insert(doc)
    assert inserted is not None
    return ObjectId(inserted["_id"])


async def statuses(storage: Storage) -> dict[ObjectId, tuple[str, str | None]]:
    docs = await storage.jobs.coll.find({}, {"status": 1, "failed_dependency": 1}).to_list(None)
    return {d["_id"]: (d["status"], d.get("failed_dependency")) for d in docs}


async def test_a_failure_is_carried_down_level_by_level_once_per_job(any_db: Any) -> None:
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    root, other = await add(storage), await add(storage)
    # level 1: skip (with dependents), error (with dependents), run (counted, released)
    skip1 = await add(storage, [root])
    error1 = await add(storage, [root], "error")
    run1 = await add(storage, [root], "run")
    # level 2: waits on both failed jobs of level 1 (ended once, by the first); a chain below
    both = await add(storage, [skip1, error1])
    below = await add(storage, [both])
    leaf = await add(storage, [below], "run")
    untouched = await add(storage, [other])  # waits on a job that has not ended
    # a job with two dependencies that fail in the same call
    pair = await add(storage, [root, other])

    released = await storage.jobs.settle_all([(root, "errored")], NOW)

    got = await statuses(storage)
    assert got[skip1] == ("skipped", str(root))
    assert got[error1] == ("errored", str(root))
    assert got[run1] == ("pending", None)
    assert got[both][0] == "skipped" and got[both][1] in (str(skip1), str(error1))
    assert got[below] == ("skipped", str(both))
    assert got[leaf] == ("pending", None)  # "run": its dependency's failure counted, it runs
    assert got[untouched] == ("waiting", None)
    assert got[pair] == ("skipped", str(root))
    assert released == 2  # run1 and leaf
    assert (await storage.jobs.settle_all([(root, "errored")], NOW)) == 0  # applied once


async def test_a_wide_failure_costs_three_commands_a_level(mongo_url: str, db: Any) -> None:
    """A failure that skips 30 jobs with dependents of their own, and their 60 dependents:
    2 levels of 3 commands (the leaves have no dependents: the second level's updates end
    them). It was 5 commands per job with dependents: 155."""
    async with counted_storage(mongo_url, db) as (storage, count):
        root = await add(storage)
        middle = [await add(storage, [root]) for _ in range(30)]
        leaves = [await add(storage, [m]) for m in middle for _ in range(2)]
        count.names.clear()
        await storage.jobs.settle_all([(root, "killed")], NOW)
        assert count.names == ["update", "update", "find"] * 2
        got = await statuses(storage)
        assert {got[j][0] for j in middle + leaves} == {"skipped"}


async def test_a_dependency_given_twice_is_settled_as_its_first_status(any_db: Any) -> None:
    """`settle_all` given one dependency twice, finished then failed: the ordered writes apply
    the first (the job waiting on it counts it and is released), so the failure must not be
    carried on to that job's own dependents, which still wait for it to run."""
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    root = await add(storage)
    child = await add(storage, [root])
    grandchild = await add(storage, [child])

    released = await storage.jobs.settle_all([(root, "finished"), (root, "errored")], NOW)

    got = await statuses(storage)
    assert got[child] == ("pending", None)
    assert got[grandchild] == ("waiting", None)  # its dependency has not run yet
    assert released == 1


async def schedule_after(storage: Storage, dep: ObjectId) -> ObjectId:
    """A job scheduled after `dep` as the API does it: inserted waiting, then registered (its
    dependency marked as having dependents, then settled at once if it has ended)."""
    doc = D.new_job("j", {}, now=NOW) | F.waiting_fields([dep], "skip")
    inserted = await storage.jobs.insert(doc)
    assert inserted is not None
    await storage.jobs.register_waiting([dep], NOW)
    return ObjectId(inserted["_id"])


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_job_scheduled_while_a_failure_is_carried_is_ended_with_it(
    any_db: Any, when: str
) -> None:
    """A job scheduled after `middle` while its dependency's failure is being carried down
    (just before the write that skips `middle`, or just after) is ended at once, by that call
    or by its own registration: not left waiting for a sweep (5 s or more later, warning
    dependents_settled_late). The cascade read which jobs a level ends before writing it:
    `middle` had no dependents yet, so its skip was carried no further, while the new job's
    registration had read it still waiting (found reading settle_all for the chaos runs'
    deep flows)."""
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    root = await add(storage)
    middle = await add(storage, [root])
    late: list[ObjectId] = []
    write = storage.jobs._update_each
    calls = 0

    async def update_each(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1 and when == "before":
            late.append(await schedule_after(storage, middle))
        modified = await write(pairs)
        if calls == 1 and when == "after":
            late.append(await schedule_after(storage, middle))
        return modified

    storage.jobs._update_each = update_each  # type: ignore[method-assign]

    await storage.jobs.settle_dependents(root, "errored", NOW)

    got = await statuses(storage)
    assert got[middle] == ("skipped", str(root))
    assert got[late[0]] == ("skipped", str(middle))


class Failed(list[str]):
    """A level's failed dependencies, counting how often they are gone through."""

    passes = 0

    def __iter__(self) -> Any:
        Failed.passes += 1
        return super().__iter__()


async def test_a_wide_level_is_read_in_linear_time() -> None:
    """A level of 3,000 failed jobs, each ending one job: which of the jobs read they ended is
    one lookup per job, not a pass over the whole level per job (9 million comparisons,
    seconds of a blocked event loop)."""
    failed = [ObjectId() for _ in range(3000)]
    docs = [
        {"_id": ObjectId(), "status": "errored", "failed_dependency": str(dep)} for dep in failed
    ]

    class Rows:
        def __aiter__(self) -> Any:
            self.rows = iter(docs)
            return self

        async def __anext__(self) -> Any:
            try:
                return next(self.rows)
            except StopIteration:
                raise StopAsyncIteration from None

    class Coll:
        def find(self, query: Any, fields: Any) -> Rows:
            return Rows()

    records = FlowRecords()
    records.coll = Coll()
    Failed.passes = 0
    ended = await records._ended_by(Failed(str(dep) for dep in failed))
    assert ended == [(d["_id"], "errored") for d in docs]
    assert Failed.passes <= 2


async def test_a_level_of_150_failures_goes_in_bulk_writes_of_300_updates(
    mongo_url: str, db: Any
) -> None:
    """Each bulk write holds at most 300 updates (three per failed dependency), so that one
    command never holds a server that runs them one at a time for a whole wide level."""
    async with counted_storage(mongo_url, db) as (storage, count):
        root = await add(storage)
        middle = [await add(storage, [root]) for _ in range(150)]
        leaves = [await add(storage, [m]) for m in middle]
        count.names.clear()
        await storage.jobs.settle_all([(root, "errored")], NOW)
        # the root's level, then its read of the 150 jobs it ended (a getMore past the first
        # 101); then theirs: 450 updates in 2 writes, 150 releases in 1, and its read
        sent = [n for n in count.names if n != "getMore"]
        assert sent == ["update", "update", "find", "update", "update", "update", "find"]
        got = await statuses(storage)
        assert {got[j][0] for j in middle + leaves} == {"skipped"}


async def test_set_expiry_keeps_held_a_job_marked_between_its_two_updates(any_db: Any) -> None:
    """A job skipped by a failed dependency gets its expiry from `set_expiry`; one that a job
    scheduled after it marks (`mark_dependents`) while set_expiry runs gets it held back
    (`expires_after_settle`), never a plain `expires_at` (flows.md, retention: kept until its
    dependents have all counted it; the TTL index deletes on `expires_at`)."""
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    doc = D.new_job("j", {}, now=NOW) | {
        "status": "skipped",
        "ended_at": NOW,
        "expiry_pending": True,
    }
    inserted = await storage.jobs.insert(doc)
    assert inserted is not None
    job_id = ObjectId(inserted["_id"])
    coll = storage.jobs.coll

    async def marked() -> None:  # a job scheduled after it, right after the first update
        await storage.jobs.mark_dependents([job_id], NOW)

    expires = NOW + dt.timedelta(days=1)
    storage.jobs.coll = Interposed(coll, "update_many", marked, after=True)
    try:
        await storage.jobs.set_expiry([job_id], expires)
    finally:
        storage.jobs.coll = coll
    # a sweep's next pass (one the first left pending is given its expiry then)
    await storage.jobs.set_expiry([job_id], expires)
    got = await coll.find_one({"_id": job_id})  # its expiry is past: a plain one is a TTL delete
    assert got is not None, "deleted by the TTL index while its dependents had not counted it"
    assert got["has_dependents"] and "dependents_settled" not in got
    assert "expiry_pending" not in got
    assert "expires_at" not in got, got
    assert "expires_after_settle" in got, got
