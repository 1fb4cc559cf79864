"""Writes that decide in their own filters, racing another write: the on_job_exited record
never lost to a mark between its filters; a foreign job's limit key written whether the field
is missing, null or empty."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor.storage import Storage

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def test_a_mark_between_two_filters_loses_the_hook_record(any_db: Any) -> None:
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    jobs = storage.jobs
    oid = ObjectId()
    # an ended dependency whose dependents a sweep has seen settled; its hook owed
    await jobs.coll.insert_one(
        {
            "_id": oid,
            "name": "j",
            "status": "finished",
            "payload": {},
            "priority": 0,
            "created_at": NOW,
            "ended_at": NOW,
            "has_dependents": True,
            "dependents_settled": True,
            "exit_hook": "owed",
            "exit_hook_id": "h1",
        }
    )
    real = jobs.coll.update_one
    calls = 0

    async def update_one(query: Any, update: Any, *a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await real(query, update, *a, **kw)
        if calls == 2:  # a job is scheduled after it right now (schedule_job's mark)
            await jobs.mark_dependents([oid], NOW)
        return result

    jobs.coll.update_one = update_one  # type: ignore[method-assign]
    try:
        recorded = await jobs.hook_ended(
            oid, "h1", "done", None, NOW, 5.0, NOW + dt.timedelta(days=1)
        )
    finally:
        jobs.coll.update_one = real  # type: ignore[method-assign]
    doc = await jobs.coll.find_one({"_id": oid})
    assert doc is not None
    assert recorded, "the record matched none of its filters"
    assert doc["exit_hook"] == "done", "the hook is still owed: it will be called again"


async def test_a_job_with_a_null_limit_key_gets_its_key(any_db: Any) -> None:
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    oid = ObjectId()
    due = int(T0.timestamp() * 1000)
    await storage.jobs.coll.insert_one(
        {
            "_id": oid,
            "name": "sync",
            "claim_name": "sync",
            "status": "pending",
            "due_ms": due,
            "payload": {"tenant": "A"},
            "priority": 0,
            "limit_key": None,  # as new_job wrote it before the lean documents
        }
    )
    [doc] = await storage.jobs.due_by_key(["sync"], T0, [], 10)
    assert not doc.get("limit_key")  # the limiter sends fill_limit_key for it
    await storage.jobs.fill_limit_key([doc], "tenant:A")
    # the next round's candidates, with tenant:A found full, must leave it out
    assert await storage.jobs.due_by_key(["sync"], T0, ["tenant:A"], 10) == []
