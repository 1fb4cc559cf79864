"""During a rolling deploy a replica still running the previous definition follows the stored
(new) schedule; its Sentry check-ins declare that schedule too (they declared its own, and
Sentry upserts the monitor from each check-in: it was switched back to the old schedule and
reported false "missed" check-ins for slots no longer run)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import FakeClock, init_job_processor
from tests.engine.test_crons import capture_checkins, slot_done
from tests.helpers import FAST

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def tick(job: Any, signal: Any) -> None:
    return None


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
    configs = {
        c["monitor_config"]["schedule"]["value"] for c in checkins if c.get("monitor_config")
    }
    assert configs == {"0 * * * *"}
