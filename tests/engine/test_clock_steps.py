"""A host's wall clock stepped back (an NTP correction, a VM's clock set right) while its
heartbeats fail: the worker's lease is measured on a clock no step moves, so it still gives
its runs up `worker_timeout` after its last heartbeat, before another worker may recover them
(it ran on for as long as the step before: two runs of one job at once)."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobStatus, init_job_processor
from tests.engine.test_timing_bounds import SETTINGS, T0
from tests.helpers import wait_for

S = JobStatus


async def test_a_clock_stepped_back_during_an_outage_does_not_lengthen_the_lease(db: Any) -> None:
    active: set[Any] = set()
    runs: list[Any] = []
    most = 0
    release = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> str:
        nonlocal most
        me = (job.worker_id, job.attempt)
        runs.append(me)
        active.add(me)
        most = max(most, len(active))
        try:
            await release.wait()
        finally:
            active.discard(me)
        return "done"

    jobs = {"work": JobDef(handler=work, resumable=True, max_attempts=5)}
    clock_b, clock_a = FakeClock(T0), FakeClock(T0)
    b = await init_job_processor(db, jobs=jobs, clock=clock_b, **SETTINGS)
    a = await init_job_processor(db, jobs=jobs, clock=clock_a, **SETTINGS)
    await b.start()
    try:
        job = await b.schedule_job("work")
        await wait_for(lambda: len(runs) == 1)

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise AutoReconnect("connection refused (B cannot reach MongoDB)")

        b.heartbeat.workers.beat = unreachable  # type: ignore[method-assign]
        clock_b.advance(-60)  # B's wall clock stepped back a minute
        clock_b.advance(31)
        clock_a.advance(31)  # 31 s of time: B silent past worker_timeout
        await wait_for(lambda: not active)  # B gave its run up, by the time that passed
        assert not b.heartbeat.trusted()
        await a.start()  # A declares B dead and resumes the job
        try:
            await wait_for(lambda: len(runs) == 2)
            assert most == 1, f"two runs of job {job.id} at once: {sorted(active)}"
        finally:
            release.set()
            await a.stop()
    finally:
        release.set()
        await b.stop()
