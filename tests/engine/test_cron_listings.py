"""What `crons list` and get_status() show: a task at its slot (a retry moves its due time,
not its slot), and the schedule every replica follows (during a rolling deploy, the stored
one, not an old replica's own definition)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import FakeClock, init_job_processor
from job_processor.ops.admin import Admin
from tests.engine.test_crons import until
from tests.helpers import FAST

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)
T0_30 = dt.datetime(2030, 1, 1, 0, 0, 30, tzinfo=dt.UTC)


async def tick(job: Any, signal: Any) -> None:
    return None


async def _failing_once(
    db: Any, clock: FakeClock, cron_string: str, **settings: Any
) -> tuple[list[int], Any]:
    """A processor with the cron "sync", whose first attempt fails (retried 30 s later):
    the failures each attempt saw, and the processor."""
    calls: list[int] = []

    async def flaky(job: Any, signal: Any) -> None:
        calls.append(job.failures)
        if job.failures == 0:
            raise ConnectionError("provider down")

    backoff = {"kind": "fixed", "base_seconds": 30, "jitter": False}
    cron = {"cron_string": cron_string, "handler": flaky, "max_attempts": 2, "backoff": backoff}
    crons = {"sync": cron | settings}
    return calls, await init_job_processor(db, crons=crons, clock=clock, **FAST)


async def _retry_due(p: Any, calls: list[int]) -> bool:
    """The first attempt failed and its retry is pending."""
    retries = [j for j in await p.list_jobs("sync") if j.status == "pending" and j.failures]
    return calls == [0] and len(retries) == 1


async def test_a_retried_cron_task_is_still_listed_at_its_slot(db: Any) -> None:
    clock = FakeClock(T0)
    calls, p = await _failing_once(db, clock, "* * * * * *", checkin_margin=1)
    async with p:
        clock.set(T0 + SECOND)  # the slot of 00:00:01
        await until(lambda: _retry_due(p, calls))
        status = await p.get_status()
        listed = await Admin(db).list_crons()
    slot = T0 + SECOND
    (row,) = status.crons
    assert [r["slot"] for r in row["recent"]] == [slot]  # shows 00:00:31, the retry's time
    (view,) = listed
    assert [r.slot for r in view.recent] == [slot]


async def test_an_old_replicas_status_shows_the_schedule_it_follows(db: Any) -> None:
    clock = FakeClock(T0)
    old = await init_job_processor(
        db,
        crons={"c": {"cron_string": "0 9 * * *", "handler": lambda j, s: None}},
        clock=clock,
        **FAST,
    )
    await init_job_processor(
        db,
        crons={
            "c": {
                "cron_string": "0 9 * * *",
                "handler": lambda j, s: None,
                "timezone": "Asia/Tokyo",
            }
        },
        clock=clock,
        **FAST,
    )
    (row,) = (await old.get_status()).crons
    # it follows 09:00 Tokyo (00:00 UTC) and says next slot "00:00 (UTC)", schedule "0 9 * * * UTC"
    assert row["next_slot_utc"] == T0 + dt.timedelta(days=1)
    assert row["next_slot_local"].hour == 9, (row["timezone"], row["next_slot_local"])


async def test_a_retried_manual_run_is_listed_at_the_time_it_was_made(db: Any) -> None:
    clock = FakeClock(T0_30)
    calls, p = await _failing_once(db, clock, "0 3 * * *")  # no slot during the test
    async with p:
        made = await p.trigger_cron("sync")
        await until(lambda: _retry_due(p, calls))
        status = await p.get_status()
        listed = await Admin(db).list_crons()
    (row,) = status.crons
    (view,) = listed
    assert made.created_at == T0_30
    assert [r["slot"] for r in row["recent"]] == [T0_30]
    assert [r.slot for r in view.recent] == [T0_30]


async def test_status_shows_the_schedule_the_scheduler_fires(db: Any) -> None:
    clock = FakeClock(T0)
    p = await init_job_processor(
        db, crons={"c": {"cron_string": "*/5 * * * *", "handler": tick}}, clock=clock, **FAST
    )
    await db["job_processor_crons"].update_one(
        {"_id": "c"}, {"$set": {"cron_string": "0 9 * * *", "timezone": None}}
    )
    for m in range(1, 11):
        clock.set(T0 + m * MINUTE)
        await p.scheduler.tick()
    fired = sorted([d["scheduled_for"] async for d in db["job_processor_jobs"].find({})])
    assert len(fired) == 2  # 00:05 and 00:10: the scheduler follows "*/5 * * * *"
    (row,) = (await p.get_status()).crons
    assert row["cron_string"] == "*/5 * * * *", row["cron_string"]  # fails: "0 9 * * *"
