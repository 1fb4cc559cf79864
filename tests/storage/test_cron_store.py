"""Cron storage verbs: one task per slot even under races, missed slots, registration."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from job_processor import CronDef
from job_processor.core import documents as D
from job_processor.core.outcome import Outcome
from job_processor.core.schedule import margin_of
from job_processor.core.status import JobStatus
from job_processor.storage import Storage
from tests.helpers import Interposed

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


async def handler(job: object, signal: object) -> None:
    return None


def cron(**kw: Any) -> CronDef:
    return CronDef(handler=handler, **({"cron_string": "* * * * * *", "checkin_margin": 1} | kw))


def task(name: str, c: CronDef, slot: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    return D.cron_task(
        name,
        slot=slot,
        now=now,
        margin=margin_of(c),
        tag=c.tag,
        exclusive=c.concurrency == "exclusive",
        max_attempts=c.attempts,
        resumable=c.resumable,
    )


@pytest.fixture
async def storage(any_db: Any) -> Storage:
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    return s


async def count(storage: Storage, query: dict[str, Any]) -> int:
    return len([d async for d in storage.jobs.coll.find(query)])


async def test_one_task_per_slot_under_races(storage: Storage) -> None:
    results = await asyncio.gather(
        *(storage.jobs.insert(task("tick", cron(), at(1), NOW)) for _ in range(8))
    )
    created = [r for r in results if r is not None]
    assert len(created) == 1
    assert created[0]["status"] == "pending"
    assert created[0]["scheduled_for"] == at(1)
    assert created[0]["start_deadline"] == at(61)
    assert created[0]["trigger"] == "schedule"
    assert await count(storage, {"name": "tick"}) == 1
    assert await storage.jobs.insert(task("tick", cron(), at(2), NOW)) is not None


async def test_cron_tasks_carry_the_crons_attempts(storage: Storage) -> None:
    doc = await storage.jobs.insert(task("tick", cron(max_attempts=4), at(1), NOW))
    assert doc is not None
    assert doc["max_attempts"] == 4


async def test_exclusive_slot_skips_while_previous_runs_and_next_slot_is_free(
    storage: Storage,
) -> None:
    ex = cron(concurrency="exclusive")
    first = await storage.jobs.insert(task("ex", ex, at(0), NOW))
    assert first is not None
    claimed = await storage.jobs.claim_next(["ex"], "w", at(0))
    assert claimed is not None
    second = await storage.jobs.insert(task("ex", ex, at(1), at(1)))
    assert second is not None
    assert second["status"] == "skipped"
    assert second["skip_reason"] == "exclusive"
    assert second["conflicting_job_id"] == first["_id"]
    assert await storage.jobs.insert(task("ex", ex, at(1), at(1))) is None  # the slot is taken
    await storage.jobs.end_run(claimed, Outcome(S.FINISHED), at(2), writer="w", budget=2)
    third = await storage.jobs.insert(task("ex", ex, at(3), at(3)))
    assert third is not None
    assert third["status"] == "pending"


async def test_missed_slots_are_recorded_once(storage: Storage) -> None:
    missed = D.as_missed(task("tick", cron(), at(0), at(100)), at(100))
    assert await storage.jobs.insert(missed) is not None
    again = D.as_missed(task("tick", cron(), at(0), at(100)), at(100))
    assert await storage.jobs.insert(again) is None
    (doc,) = await storage.jobs.find("tick")
    assert (doc["status"], doc["skip_reason"]) == ("skipped", "missed")


async def test_pending_task_past_its_deadline_expires_as_missed(storage: Storage) -> None:
    late = await storage.jobs.insert(task("tick", cron(), at(0), NOW))
    fresh = await storage.jobs.insert(task("tick", cron(), at(100), NOW))
    assert late is not None
    assert fresh is not None
    assert await storage.jobs.expire_missed_cron_tasks(at(120)) == 1
    expired = await storage.jobs.get(late["_id"])
    assert expired is not None
    assert (expired["status"], expired["skip_reason"]) == ("skipped", "missed")
    assert "claim_name" not in expired
    assert (await storage.jobs.get(fresh["_id"]))["status"] == "pending"  # type: ignore[index]


async def test_a_retry_of_a_task_that_started_never_expires(storage: Storage) -> None:
    await storage.jobs.insert(task("tick", cron(max_attempts=3), at(0), NOW))
    claimed = await storage.jobs.claim_next(["tick"], "w", at(0))
    assert claimed is not None
    retry = Outcome(S.PENDING, error="e", failures=1, retry_at=at(200))
    await storage.jobs.end_run(claimed, retry, at(1), writer="w", budget=2)
    assert await storage.jobs.expire_missed_cron_tasks(at(300)) == 0


async def test_register_creates_keeps_reschedules_and_never_removes(storage: Storage) -> None:
    crons = {"a": cron(cron_string="0 * * * *"), "b": cron(cron_string="0 2 * * *")}
    first = {"a": at(3600), "b": at(7200)}
    assert await storage.crons.register(crons, first, NOW) == {"a": "created", "b": "created"}
    changed = {"a": cron(cron_string="30 * * * *"), "c": cron(cron_string="*/5 * * * *")}
    outcome = await storage.crons.register(changed, {"a": at(1800), "c": at(300)}, at(5))
    assert outcome == {"a": "rescheduled", "c": "created"}
    docs = {d["_id"]: d for d in await storage.crons.docs(["a", "b", "c"])}
    assert set(docs) == {"a", "b", "c"}  # "b" stays: pruning is explicit
    assert docs["a"]["next_slot"] == at(1800)
    assert docs["a"]["cron_string"] == "30 * * * *"
    again = await storage.crons.register(changed, {"a": at(9999), "c": at(9999)}, at(6))
    assert again == {"a": "kept", "c": "kept"}
    (a,) = await storage.crons.docs(["a"])
    assert a["next_slot"] == at(1800)  # kept, not moved
    assert await storage.crons.names_other_than(["a", "c"]) == ["b"]


async def test_replicas_registering_together_make_one_document(storage: Storage) -> None:
    crons = {"a": cron()}
    await asyncio.gather(*(storage.crons.register(crons, {"a": at(1)}, NOW) for _ in range(5)))
    assert len(await storage.crons.docs(["a"])) == 1


async def test_advance_is_compare_and_set(storage: Storage) -> None:
    await storage.crons.register({"a": cron()}, {"a": at(1)}, NOW)
    assert await storage.crons.advance("a", at(1), at(2), NOW)
    assert not await storage.crons.advance("a", at(1), at(3), NOW)
    (doc,) = await storage.crons.docs(["a"])
    assert doc["next_slot"] == at(2)


async def test_a_missed_task_marked_between_the_two_updates_keeps_its_expiry_held(
    storage: Storage,
) -> None:
    """with_expiry's second update must not set `expires_at` on a job that a job scheduled
    after it marked (`mark_dependents`) once the first, held, update had passed it by:
    flows.md, a job with dependents is kept until they have all counted it (the TTL index on
    `expires_at` would delete it before)."""
    late = await storage.jobs.insert(task("tick", cron(), at(0), NOW))
    assert late is not None
    coll = storage.jobs.coll

    async def marked() -> None:  # a job scheduled after `late`, right after the first update
        await storage.jobs.mark_dependents([late["_id"]], at(120))

    storage.jobs.coll = Interposed(coll, "update_many", marked, after=True)
    try:
        first = await storage.jobs.expire_missed_by_name(at(120), {"tick": at(120)})
    finally:
        storage.jobs.coll = coll
    # the scheduler's next refresh (a task the first pass left pending is expired then)
    second = await storage.jobs.expire_missed_by_name(at(121), {"tick": at(121)})
    assert first.get("tick", 0) + second.get("tick", 0) == 1
    doc = await coll.find_one({"_id": late["_id"]})
    assert doc is not None
    assert (doc["status"], doc["has_dependents"]) == ("skipped", True)
    assert "dependents_settled" not in doc
    # held back until a sweep sees its dependents settled, never a TTL expiry meanwhile
    assert "expires_at" not in doc, doc
    assert "expires_after_settle" in doc, doc
