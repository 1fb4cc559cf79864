"""Bare inserts (`{name, payload}` written by another program) are adopted by the sweep that
finds them 30 s old, a burst too (up to 2,000 a sweep), and documents with no usable name
never hold the others back (docs/scale.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef
from tests.helpers import Interposed, make


def oid_at(t: dt.datetime) -> ObjectId:
    """An ObjectId made at `t` (unique: random low bytes)."""
    return ObjectId(int(t.timestamp()).to_bytes(4, "big") + os.urandom(8))


async def send(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def test_a_burst_of_bare_inserts_is_adopted_by_one_sweep(db: Any) -> None:
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)
    await coll.insert_many(
        [{"_id": oid_at(at), "name": "send-email", "payload": {"n": n}} for n in range(250)]
    )
    await processor.recovery.sweep(processor.clock.now())  # one sweep, as the loop makes it
    assert await coll.count_documents({"status": "pending"}) == 250


async def test_a_batch_another_sweep_adopted_in_part_does_not_end_the_sweep(db: Any) -> None:
    """The sweep went on while batches came back fully adopted by it: one job of the first
    batch adopted by another worker's sweep meanwhile ended it after 99, the other 150 left
    to a later sweep (15 s at the defaults, and again while sweeps overlapped)."""
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)
    await coll.insert_many(
        [{"_id": oid_at(at), "name": "send-email", "payload": {"n": n}} for n in range(250)]
    )
    first = await coll.find_one({"status": None})
    assert first is not None

    async def adopted_elsewhere() -> None:
        fields = {"status": "pending", "claim_name": "send-email", "due_ms": 0, "priority": 0}
        await coll.update_one({"_id": first["_id"]}, {"$set": fields})

    processor.storage.jobs.coll = Interposed(coll, "update_one", adopted_elsewhere)
    await processor.recovery.sweep(processor.clock.now())
    assert await coll.count_documents({"status": "pending"}) == 250


async def test_workers_sweeping_at_once_adopt_a_whole_burst(db: Any) -> None:
    """Two workers' sweeps at the same moment shared the first batch, each adopting about half
    of it, and each stopped there: 200 of 1,000 adopted; the rest waited for later sweeps."""
    coll = db["job_processor_jobs"]
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)
    await coll.insert_many(
        [{"_id": oid_at(at), "name": "send-email", "payload": {"n": n}} for n in range(1000)]
    )
    one, two = [
        await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0) for _ in "12"
    ]
    now = one.clock.now()
    await asyncio.gather(one.recovery.sweep(now), two.recovery.sweep(now))
    assert await coll.count_documents({"status": "pending"}) == 1000


async def test_documents_with_no_usable_name_never_hold_a_bare_insert_back(db: Any) -> None:
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    nameless = [{"nmae": "send-email"}, {"name": ""}, {"name": 7}, {"name": None}]
    await coll.insert_many(
        [{"_id": oid_at(old), "payload": {}} | nameless[n % 4] for n in range(120)]
    )
    good = oid_at(old + dt.timedelta(seconds=1))
    await coll.insert_one({"_id": good, "name": "send-email", "payload": {}})
    await processor.recovery.sweep(processor.clock.now())
    doc = await coll.find_one({"_id": good})
    assert doc is not None and doc.get("status") == "pending"
    # the nameless ones are left as they were
    assert await coll.count_documents({"status": {"$exists": False}}) == 120


async def test_a_bare_insert_behind_a_full_sweep_query_is_adopted(db: Any) -> None:
    """More nameless documents than the sweep's one query returns: the bare insert it did not
    list is looked for all the same."""
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    await coll.insert_many([{"_id": oid_at(old), "payload": {}} for _ in range(1100)])
    good = oid_at(old + dt.timedelta(seconds=1))
    await coll.insert_one({"_id": good, "name": "send-email", "payload": {}})
    await processor.recovery.sweep(processor.clock.now())
    doc = await coll.find_one({"_id": good})
    assert doc is not None and doc.get("status") == "pending"


async def test_minimal_documents_waiting_their_turn_never_hold_a_bare_insert_back(db: Any) -> None:
    """docs/scale.md's minimal document (claim_name and due_ms, no status) is claimable as it
    is, never adopted: 100 of them due tomorrow filled every batch before."""
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    tomorrow_ms = int((dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).timestamp() * 1000)
    minimal = {"name": "send-email", "claim_name": "send-email", "due_ms": tomorrow_ms}
    await coll.insert_many(
        [{"_id": oid_at(old), "payload": {"n": n}} | minimal for n in range(120)]
    )
    bare = oid_at(old + dt.timedelta(seconds=1))
    await coll.insert_one({"_id": bare, "name": "send-email", "payload": {}})
    await processor.recovery.sweep(processor.clock.now())
    doc = await coll.find_one({"_id": bare})
    assert doc is not None and doc.get("status") == "pending", doc


async def test_a_bare_insert_due_at_a_text_date_is_adopted_due_then(db: Any) -> None:
    """scale.md: a bare insert is adopted "due at its scheduled_for if it has one", and "a date
    written as ISO text ... reads as that date". A JSON producer's `scheduled_for` as text
    read as 2030 (get_job), yet adoption made it due at its insert time: it ran at once."""
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    bare = oid_at(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    text = "2030-01-02T10:00:00+00:00"
    await coll.insert_one({"_id": bare, "name": "send-email", "payload": {}, "scheduled_for": text})
    read = await processor.get_job(str(bare))
    assert read.scheduled_for == dt.datetime(2030, 1, 2, 10, tzinfo=dt.UTC)
    await processor.recovery.sweep(processor.clock.now())
    doc = await coll.find_one({"_id": bare})
    assert doc is not None and doc.get("status") == "pending", doc
    due = dt.datetime.fromtimestamp(doc["due_ms"] / 1000, tz=dt.UTC)
    assert due == dt.datetime(2030, 1, 2, 10, tzinfo=dt.UTC), due


async def test_a_bare_insert_with_a_due_ms_of_its_own_is_adopted_due_then(db: Any) -> None:
    """A program that wrote `due_ms` (epoch ms) but forgot `claim_name`: get_job read it as due
    then, yet adoption made it due at its insert time: a job due in 2030 ran at once."""
    processor = await make(db, {"send-email": JobDef(handler=send)}, worker_timeout=30.0)
    coll = db["job_processor_jobs"]
    bare = oid_at(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    when = dt.datetime(2030, 1, 2, 10, tzinfo=dt.UTC)
    due_ms = int(when.timestamp() * 1000)
    await coll.insert_one({"_id": bare, "name": "send-email", "payload": {}, "due_ms": due_ms})
    assert (await processor.get_job(str(bare))).scheduled_for == when
    await processor.recovery.sweep(processor.clock.now())
    doc = await coll.find_one({"_id": bare})
    assert doc is not None and doc.get("status") == "pending", doc
    assert doc["due_ms"] == due_ms
    assert (await processor.get_job(str(bare))).scheduled_for == when
