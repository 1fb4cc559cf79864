"""Crons across a rolling deploy: an init refused for a bad option or a name clash writes no
schedule (the running replicas keep theirs); a new schedule registered between an old
replica's read of the cron and its move to the next slot stands (no slot the new schedule
does not have)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from job_processor import FakeClock, InvalidDefinitionError, init_job_processor
from tests.helpers import FAST

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


async def tick(job: Any, signal: Any) -> None:
    return None


async def test_an_init_refused_for_a_bad_option_leaves_the_stored_schedule_alone(db: Any) -> None:
    clock = FakeClock(T0)
    running = await init_job_processor(
        db, crons={"report": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
    )
    # a new version with a new schedule and a bad option: refused at init
    with pytest.raises(InvalidDefinitionError, match="keep_events"):
        await init_job_processor(
            db,
            crons={
                "report": {"cron_string": "0 * * * *", "handler": tick, "timezone": "Asia/Tokyo"}
            },
            clock=clock,
            keep_events=False,
            **FAST,
        )
    stored = await db["job_processor_crons"].find_one({"_id": "report"})
    # the replicas still running now follow the schedule of a version that never started
    assert (stored["cron_string"], stored["timezone"]) == ("*/5 * * * *", "UTC")
    for minute in range(1, 16):
        clock.set(T0 + dt.timedelta(minutes=minute))
        await running.scheduler.tick()
    slots = [d["scheduled_for"] async for d in db["job_processor_jobs"].find({})]
    assert len(slots) == 3  # 00:05, 00:10, 00:15


async def test_an_init_refused_for_a_name_clash_creates_no_cron(db: Any) -> None:
    with pytest.raises(InvalidDefinitionError, match="taken by event deliveries"):
        await init_job_processor(
            db,
            crons={"webhook-delivery": {"cron_string": "* * * * *", "handler": tick}},
            **FAST,
        )
    assert await db["job_processor_crons"].count_documents({}) == 0


async def test_a_registration_between_read_and_advance_adds_an_off_schedule_slot(db: Any) -> None:
    clock = FakeClock(T0 - 2 * MIN)
    old = await init_job_processor(
        db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
    )
    new_def = {"c": {"cron_string": "*/15 * * * *", "handler": tick}}
    docs = old.storage.crons.docs
    registered: list[Any] = []

    async def docs_then_deploy(*a: Any, **kw: Any) -> Any:
        got = await docs(*a, **kw)
        if not registered:  # the new replica (its clock read just before 00:00) registers now
            new_clock = FakeClock(T0 - dt.timedelta(seconds=1))
            registered.append(await init_job_processor(db, crons=new_def, clock=new_clock, **FAST))
        return got

    old.storage.crons.docs = docs_then_deploy  # type: ignore[method-assign]
    clock.set(T0)
    await old.scheduler.tick()  # fires 00:00 (a slot of both), advances to 00:05
    old.storage.crons.docs = docs  # type: ignore[method-assign]
    stored = await db["job_processor_crons"].find_one({"_id": "c"})
    assert stored["cron_string"] == "*/15 * * * *"
    new = registered[0]
    for minute in range(1, 31):
        clock.set(T0 + minute * MIN)
        new.clock.set(T0 + minute * MIN)
        await new.scheduler.tick()
        await old.scheduler.tick()
    slots = sorted([d["scheduled_for"] async for d in db["job_processor_jobs"].find({})])
    minutes = [int((s.replace(tzinfo=dt.UTC) - T0) / MIN) for s in slots]
    assert minutes == [0, 15, 30]  # the stored schedule */15: 00:05 is not one of its slots


async def test_a_prune_between_a_replicas_read_and_its_insert_leaves_no_pending_task(
    db: Any,
) -> None:
    clock = FakeClock(T0 - MIN)
    replica = await init_job_processor(
        db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
    )
    pruner = await init_job_processor(db, jobs={}, clock=clock, **FAST)  # defines no cron
    insert = replica.storage.jobs.insert
    pruned: list[str] = []

    async def prune_then_insert(*a: Any, **kw: Any) -> Any:
        if not pruned:  # the replica read the cron; the prune lands before its insert
            pruned.extend(await pruner.prune_crons())
        return await insert(*a, **kw)

    replica.storage.jobs.insert = prune_then_insert  # type: ignore[method-assign]
    clock.set(T0)
    await replica.scheduler.tick()  # fires 00:00 from what it read before the prune
    assert pruned == ["c"]
    assert await db["job_processor_crons"].count_documents({}) == 0
    assert await db["job_processor_jobs"].count_documents({"name": "c"}) == 0
    clock.set(T0 + 5 * MIN)
    await replica.scheduler.tick()  # the cron is gone: nothing fires any more
    assert await db["job_processor_jobs"].count_documents({"name": "c"}) == 0


async def test_a_next_slot_an_older_release_wrote_off_the_stored_schedule_is_not_fired(
    db: Any,
) -> None:
    """A replica of a release whose advance did not check the schedule moves the next slot to
    one of its own schedule: the replicas that follow the stored schedule skip it."""
    clock = FakeClock(T0 - MIN)
    new = await init_job_processor(
        db, crons={"c": {"cron_string": "*/15 * * * *", "handler": tick}}, clock=clock, **FAST
    )
    # what an older replica (still defining "*/5 * * * *") writes after firing 00:00
    await db["job_processor_crons"].update_one({"_id": "c"}, {"$set": {"next_slot": T0 + 5 * MIN}})
    for minute in range(1, 31):
        clock.set(T0 + minute * MIN)
        await new.scheduler.tick()
    slots = sorted([d["scheduled_for"] async for d in db["job_processor_jobs"].find({})])
    minutes = [int((s.replace(tzinfo=dt.UTC) - T0) / MIN) for s in slots]
    assert minutes == [15, 30]
