"""`job_processor_oldest_due_age_seconds` ("how long the longest-waiting due job has
been due"; alert `max by (name) (job_processor_oldest_due_age_seconds) > 300`: stuck queue)
and `job_processor_job_start_delay_seconds` ("due -> run start").

A resumable job paused by a graceful stop (every deploy) keeps its original `scheduled_for`:
the moment it is queued again it shows as due for as long as it already RAN, so a 10-minute
resumable job interrupted by a deploy fires the "stuck queue" alert at once, and its resumed
run records the first run's whole duration as start delay. (A non-resumable job interrupted
the same way is re-queued with scheduled_for = now, and shows 0.) Here the run lasts
~1.5 s (an outside review's finding, failing before its fix).
"""

from __future__ import annotations

import asyncio
from typing import Any

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.ops import metrics
from tests.helpers import make, wait_status
from tests.ops.test_metrics import samples

RUN_SECONDS = 1.5


async def long_resumable(job: Job, signal: AbortSignal) -> None:
    while not signal.aborted:
        await asyncio.sleep(0.05)


async def test_a_resumable_job_paused_by_a_stop_is_not_shown_as_long_waiting(db: Any) -> None:
    jobs = {"crunch": JobDef(handler=long_resumable, resumable=True)}
    first = await make(db, jobs)
    async with first:
        job = await first.schedule_job("crunch", {})
        await wait_status(first, job.id, JobStatus.RUNNING)  # type: ignore[arg-type]
        await asyncio.sleep(RUN_SECONDS)
    paused = await first.get_job(job.id)  # type: ignore[arg-type]
    assert paused.status == JobStatus.PAUSED

    # a scrape right after the deploy's stop: the job has waited ~0 s
    gauges = samples((await metrics.render(await metrics.for_database(db))).decode())
    age = gauges[("job_processor_oldest_due_age_seconds", (("name", "crunch"),))]

    second = await make(db, jobs)
    m = metrics.enable(second)
    async with second:
        await wait_status(second, job.id, JobStatus.RUNNING)  # type: ignore[arg-type]
    # observed when the run ends (here: paused again by this stop)
    delay = m.start_delay.labels("crunch")._sum.get()

    # both read ~RUN_SECONDS (the first run's time), not ~0
    assert (age < 1.0, delay < 1.0) == (True, True), (
        f"paused just now, shown as due for {age:.1f}s; resumed at once, start delay {delay:.1f}s"
    )
