"""Cron storage verbs: one task per slot even under races, missed slots, registration."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from job_processor import CronDef
from job_processor.models import JobStatus
from job_processor.store import Store

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


async def handler(job: object, signal: object) -> None:
    return None


def cron(**kw: Any) -> CronDef:
    return CronDef(handler=handler, **({"cron_string": "* * * * * *", "checkin_margin": 1} | kw))


@pytest.fixture
async def store(any_db: Any) -> Store:
    s = Store(any_db, "t_")
    await s.ensure_indexes()
    return s


async def test_one_task_per_slot_under_races(store: Store) -> None:
    results = await asyncio.gather(
        *(store.insert_cron_task("tick", cron(), at(1), NOW) for _ in range(8))
    )
    created = [r for r in results if r is not None]
    assert len(created) == 1
    assert created[0]["status"] == "pending"
    assert created[0]["scheduled_for"] == at(1)
    assert created[0]["start_deadline"] == at(61)
    assert created[0]["trigger"] == "schedule"
    assert await store.count({"name": "tick"}) == 1
    assert await store.insert_cron_task("tick", cron(), at(2), NOW) is not None


async def test_exclusive_slot_skips_while_previous_runs_and_next_slot_is_free(store: Store) -> None:
    ex = cron(concurrency="exclusive")
    first = await store.insert_cron_task("ex", ex, at(0), NOW)
    assert first is not None
    claimed = await store.claim_next(["ex"], "w", at(0))
    assert claimed is not None
    second = await store.insert_cron_task("ex", ex, at(1), at(1))
    assert second is not None
    assert second["status"] == "skipped"
    assert second["skip_reason"] == "exclusive"
    assert second["conflicting_job_id"] == first["_id"]
    assert await store.insert_cron_task("ex", ex, at(1), at(1)) is None  # the slot is taken
    await store.end_run(claimed, S.FINISHED, at(2), None)
    third = await store.insert_cron_task("ex", ex, at(3), at(3))
    assert third is not None
    assert third["status"] == "pending"


async def test_missed_slots_are_recorded_once(store: Store) -> None:
    assert await store.insert_missed_slot("tick", cron(), at(0), at(100))
    assert not await store.insert_missed_slot("tick", cron(), at(0), at(100))
    (doc,) = await store.list_jobs("tick")
    assert (doc["status"], doc["skip_reason"]) == ("skipped", "missed")


async def test_pending_task_past_its_deadline_expires_as_missed(store: Store) -> None:
    late = await store.insert_cron_task("tick", cron(), at(0), NOW)
    fresh = await store.insert_cron_task("tick", cron(), at(100), NOW)
    assert late is not None
    assert fresh is not None
    assert await store.expire_missed_cron_tasks(at(120)) == 1
    assert (await store.get_job(late["_id"]))["skip_reason"] == "missed"  # type: ignore[index]
    assert (await store.get_job(fresh["_id"]))["status"] == "pending"  # type: ignore[index]


async def test_register_creates_keeps_reschedules_and_removes(store: Store) -> None:
    crons = {"a": cron(cron_string="0 * * * *"), "b": cron(cron_string="0 2 * * *")}
    first = {"a": at(3600), "b": at(7200)}
    assert await store.register_crons(crons, first, NOW) == {"a": "created", "b": "created"}
    await store.insert_cron_task("b", crons["b"], at(10), NOW)
    changed = {"a": cron(cron_string="0 * * * *"), "c": cron(cron_string="*/5 * * * *")}
    changed["a"] = cron(cron_string="30 * * * *")
    outcome = await store.register_crons(changed, {"a": at(1800), "c": at(300)}, at(5))
    assert outcome == {"a": "rescheduled", "c": "created", "b": "removed"}
    docs = {d["_id"]: d for d in await store.cron_docs(["a", "b", "c"])}
    assert set(docs) == {"a", "c"}
    assert docs["a"]["next_slot"] == at(1800)
    assert docs["a"]["cron_string"] == "30 * * * *"
    assert await store.count({"name": "b"}) == 0  # its pending task went with it
    again = await store.register_crons(changed, {"a": at(9999), "c": at(9999)}, at(6))
    assert again == {"a": "kept", "c": "kept"}
    docs = {d["_id"]: d for d in await store.cron_docs(["a"])}
    assert docs["a"]["next_slot"] == at(1800)  # kept, not moved


async def test_replicas_registering_together_make_one_document(store: Store) -> None:
    crons = {"a": cron()}
    await asyncio.gather(*(store.register_crons(crons, {"a": at(1)}, NOW) for _ in range(5)))
    assert len(await store.cron_docs(["a"])) == 1


async def test_advance_is_compare_and_set(store: Store) -> None:
    await store.register_crons({"a": cron()}, {"a": at(1)}, NOW)
    assert await store.advance_cron("a", at(1), at(2), NOW)
    assert not await store.advance_cron("a", at(1), at(3), NOW)
    (doc,) = await store.cron_docs(["a"])
    assert doc["next_slot"] == at(2)


async def test_a_process_without_crons_removes_none(store: Store) -> None:
    await store.register_crons({"a": cron()}, {"a": at(1)}, NOW)
    assert await store.register_crons({}, {}, NOW) == {}
    assert len(await store.cron_docs(["a"])) == 1
