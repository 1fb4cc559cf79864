"""During a rolling deploy a replica still running the previous definition follows the stored
(new) schedule; its Sentry check-ins declare that schedule too (they declared its own, and
Sentry upserts the monitor from each check-in: it was switched back to the old schedule and
reported false "missed" check-ins for slots no longer run)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import FakeClock, init_job_processor
from tests.engine.test_crons import capture_checkins, slot_done, until
from tests.helpers import FAST

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def tick(job: Any, signal: Any) -> None:
    return None


async def run_a_task(processor: Any) -> None:
    """A task of cron "c" triggered here, run to its end."""
    task = await processor.trigger_cron("c")

    async def finished() -> bool:
        return (await processor.get_job(task.id)).status == "finished"

    await until(finished)


def declared_schedules(checkins: list[dict[str, Any]]) -> set[str]:
    """The schedules the check-ins declared to Sentry."""
    return {c["monitor_config"]["schedule"]["value"] for c in checkins if c.get("monitor_config")}


async def test_an_old_replica_reports_the_schedule_it_follows_to_sentry(db: Any) -> None:
    import sentry_sdk

    clock = FakeClock(T0)
    checkins = capture_checkins(sentry_sdk)
    try:
        old = await init_job_processor(
            db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
        )
        # the new version registers "0 * * * *" (and is, say, still starting)
        await init_job_processor(
            db, crons={"c": {"cron_string": "0 * * * *", "handler": tick}}, clock=clock, **FAST
        )
        async with old:
            clock.set(T0 + dt.timedelta(hours=1))  # a slot of the stored schedule
            await slot_done(old, "c", T0 + dt.timedelta(hours=1), "finished")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert declared_schedules(checkins) == {"0 * * * *"}


async def test_an_old_replica_does_not_declare_its_own_schedule_when_the_stored_is_unusable(
    db: Any,
) -> None:
    import sentry_sdk

    clock = FakeClock(T0)
    checkins = capture_checkins(sentry_sdk)
    try:
        old = await init_job_processor(
            db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
        )
        # a newer version registered a schedule in a zone this process's tzdata lacks
        await db["job_processor_crons"].update_one(
            {"_id": "c"}, {"$set": {"cron_string": "0 * * * *", "timezone": "Nowhere/Newzone"}}
        )
        async with old:
            await old.scheduler.tick()  # reads the stored schedule
            await run_a_task(old)  # a task (say, one a new replica created)
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    declared = declared_schedules(checkins)
    assert checkins, "no check-in sent"
    assert "*/5 * * * *" not in declared, declared  # fails: the old schedule is declared


async def test_an_old_replica_declares_the_stored_margin_and_max_runtime(db: Any) -> None:
    import sentry_sdk

    clock = FakeClock(T0)
    checkins = capture_checkins(sentry_sdk)
    try:
        old = await init_job_processor(
            db,
            crons={"c": {"cron_string": "*/5 * * * *", "handler": tick, "checkin_margin": 5}},
            clock=clock,
            **FAST,
        )
        new = {
            "cron_string": "0 * * * *",
            "handler": tick,
            "checkin_margin": 30,
            "max_runtime_in_minutes": 60,
        }
        await init_job_processor(db, crons={"c": new}, clock=clock, **FAST)
        async with old:
            clock.set(T0 + dt.timedelta(hours=1))
            await slot_done(old, "c", T0 + dt.timedelta(hours=1), "finished")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    configs = [c["monitor_config"] for c in checkins if c.get("monitor_config")]
    assert configs
    for config in configs:
        assert config["schedule"]["value"] == "0 * * * *"
        # fails: checkin_margin 5 and no max_runtime, the old definition's
        assert (config["checkin_margin"], config.get("max_runtime")) == (30, 60), config


async def test_an_old_replica_declares_the_unusable_stored_schedule_at_its_slot(db: Any) -> None:
    """At a slot of a stored schedule this process cannot evaluate, its scheduler leaves the
    cron to the other replicas; the task one of them creates, run here, still declares the
    stored schedule, not this process's own."""
    import sentry_sdk

    clock = FakeClock(T0)
    checkins = capture_checkins(sentry_sdk)
    try:
        old = await init_job_processor(
            db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
        )
        # a newer version registered a schedule in a zone this process's tzdata lacks
        slot = T0 + dt.timedelta(hours=1)
        await db["job_processor_crons"].update_one(
            {"_id": "c"},
            {
                "$set": {
                    "cron_string": "0 * * * *",
                    "timezone": "Nowhere/Newzone",
                    "next_slot": slot,
                }
            },
        )
        async with old:
            clock.set(slot)  # its slot: this scheduler reads it, and leaves it to the others
            await old.scheduler.tick()
            await run_a_task(old)  # a task (say, the one a new replica created)
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    declared = declared_schedules(checkins)
    assert checkins, "no check-in sent"
    assert declared == {"0 * * * *"}, declared
