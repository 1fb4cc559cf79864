"""What Prometheus sees when something goes wrong (an outside review's findings, each failing
before its fix): a labelled counter exported at 0 before its first event, so the documented
missed-slot alert (`increase(job_processor_cron_slots_total{outcome="missed"}[1h]) > 0`) fires
on a cron's first missed slot; MongoDB down is a scrape error, not only a timeout."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from pymongo import AsyncMongoClient

from job_processor import AbortSignal, FakeClock, Job
from job_processor.ops import metrics
from job_processor.storage import Storage
from job_processor.storage.local_server import free_port
from tests.helpers import make
from tests.ops.test_metrics import samples

MISSED = ("job_processor_cron_slots_total", (("name", "daily"), ("outcome", "missed")))


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


def prometheus_increase(values: list[float | None]) -> float | None:
    """`increase()` over scrapes (None: the series absent in that scrape), without the
    extrapolation: None (no result) with fewer than two samples, else the sum of the rises
    (a drop is a counter reset: the new value counts whole)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    total = 0.0
    for before, after in itertools.pairwise(present):
        total += after - before if after >= before else after
    return total


async def test_the_missed_slot_alert_fires_on_the_first_missed_slot(db: Any) -> None:
    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    clock = FakeClock(now)
    crons = {"daily": {"cron_string": "0 13 * * *", "handler": tick, "checkin_margin": 5}}
    processor = await make(db, {}, crons=crons, clock=clock)  # no worker runs it (not started)
    m = metrics.enable(processor)
    scrapes: list[float | None] = []

    async def scrape() -> None:
        scrapes.append(samples((await metrics.render(m)).decode()).get(MISSED))

    await scrape()  # Prometheus scrapes every 15 s or so, before and after the miss
    clock.set(now + dt.timedelta(hours=1))  # 13:00: the slot's task is created
    await processor.scheduler.tick()
    await scrape()
    clock.set(now + dt.timedelta(hours=1, minutes=6))  # past its margin: recorded missed
    await processor.scheduler.tick()
    [task] = await processor.list_jobs("daily")
    assert (task.status, task.skip_reason) == ("skipped", "missed")
    for _ in range(3):
        await scrape()

    assert m.cron_slots.labels("daily", "missed")._value.get() == 1  # counted, in the process
    # ... but what Prometheus sees of it cannot fire the documented alert
    assert scrapes[0] == 0, f"missed-slot series before the miss: {scrapes[0]} (absent)"
    increase = prometheus_increase(scrapes)
    assert increase is not None and increase > 0, (scrapes, increase)


async def test_an_unreachable_mongodb_is_a_scrape_error() -> None:
    client: AsyncMongoClient = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}/x")
    try:
        m = metrics.Metrics()
        m.watch_database(Storage(client["x"]), budget=0.5)
        got = samples((await metrics.render(m)).decode())
    finally:
        await client.close()
    assert got[("job_processor_scrape_timeout", ())] == 1
    assert got[("job_processor_scrape_error", ())] == 1, "MongoDB unreachable: scrape_error 0"
