"""A rolling deploy: an old replica restarting registers the cron at the same moment as a new
replica with a changed schedule. The old replica's "kept" write was not a compare-and-set: it
put the old cron_string back over the new replica's reschedule, but left the new schedule's
next_slot, and every slot of the stored schedule until then never fired (an outside review's
finding, failing before its fix). Whichever registers last wins, whole."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import FakeClock, init_job_processor
from job_processor.core.definitions import CronDef
from job_processor.storage.crons import CronStore
from tests.helpers import FAST

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


async def tick(job: Any, signal: Any) -> None:
    return None


OLD = {"c": {"cron_string": "*/5 * * * *", "handler": tick}}
NEW = {"c": {"cron_string": "0 * * * *", "handler": tick}}


class RacingCollection:
    """The crons collection as the restarting old replica sees it: the new replica's whole
    registration lands between its read of the cron and its write."""

    def __init__(self, coll: Any, new_replica_registers: Any) -> None:
        self.coll = coll
        self.new_replica_registers = new_replica_registers
        self.raced = False

    async def find_one(self, *a: Any, **kw: Any) -> Any:
        return await self.coll.find_one(*a, **kw)

    async def update_one(self, *a: Any, **kw: Any) -> Any:
        if not self.raced:
            self.raced = True
            await self.new_replica_registers()
        return await self.coll.update_one(*a, **kw)


async def test_an_old_replica_registering_with_a_new_one_leaves_a_consistent_schedule(
    db: Any,
) -> None:
    clock = FakeClock(T0 + MIN)  # 00:01: the old release runs "*/5", next slot 00:05
    old = await init_job_processor(db, crons=OLD, clock=clock, **FAST)
    clock.set(T0 + 2 * MIN)  # 00:02: rolling deploy; an old replica restarts as a new one starts
    started: list[Any] = []

    async def new_replica_registers() -> None:
        started.append(await init_job_processor(db, crons=NEW, clock=clock, **FAST))

    racing = RacingCollection(db["job_processor_crons"], new_replica_registers)
    outcome = await CronStore(racing).register(
        {"c": CronDef.model_validate(OLD["c"])}, {"c": T0 + 5 * MIN}, clock.now()
    )
    # its write missed (the schedule it read was changed): read again, it registers last
    assert outcome == {"c": "rescheduled"} and racing.raced
    (new,) = started
    for minute in range(3, 121):  # both replicas run their schedulers for two hours
        clock.set(T0 + minute * MIN)
        await new.scheduler.tick()
        await old.scheduler.tick()
    stored = await db["job_processor_crons"].find_one({"_id": "c"})
    slots = sorted([d["scheduled_for"] async for d in db["job_processor_jobs"].find({})])
    minutes = [int((s.replace(tzinfo=dt.UTC) - T0) / MIN) for s in slots]
    every_5 = list(range(5, 121, 5))  # the old schedule, had it been kept
    hourly = [60, 120]  # the new one, had it won
    # whichever registration wins, the cron follows ONE schedule, none of its slots dropped
    assert minutes in (every_5, hourly), (stored["cron_string"], minutes)
