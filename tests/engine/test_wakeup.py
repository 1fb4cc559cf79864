"""Wake-up paths: change streams (when the server has them), polling (always), no spinning."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from tests.helpers import FAST, make, wait_for, wait_status

from ..conftest import REAL_SERVER, SERVER_KIND, needs_change_streams


async def noop(job: Job, signal: AbortSignal) -> str:
    return "ok"


JOBS = {"n": JobDef(handler=noop)}


async def test_change_stream_wakes_a_worker_for_another_processs_job(db: Any) -> None:
    needs_change_streams()  # a standalone has none: this worker would wait for its 30 s poll
    worker = await make(
        db, JOBS, poll_interval=30, idle_poll_interval=30, change_stream_max_await=0.3
    )
    producer = await make(db, JOBS)  # shares only the database: no in-process wake-up
    async with worker:
        await wait_for(lambda: worker.waker.active, timeout=5)
        await asyncio.sleep(0.5)  # the worker is idle now, its next poll is 30 s away
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        job = await producer.schedule_job("n")
        await wait_status(worker, job.id, "finished", timeout=5)  # type: ignore[arg-type]
        assert loop.time() - t0 < 3
        # nx-27017 answers getMore at once; a real replica set blocks
        assert worker.waker.blocking is REAL_SERVER


async def test_with_the_default_intervals_no_stream_is_opened_on_nx_27017(db: Any) -> None:
    """nx-27017's getMore answers at once: read once per 10 s, it could never wake a worker
    that polls every 2 s sooner, so it is not opened. A real replica set's stream blocks; a
    real standalone refuses `watch()` and polling carries on alone."""
    worker = await make(db, JOBS, poll_interval=2.0, change_stream_max_await=10.0)
    async with worker:
        if SERVER_KIND == "standalone":
            await asyncio.sleep(0.5)  # the waker tried, was refused, and stopped
            assert not worker.waker.active and worker.waker.blocking is None
            job = await worker.schedule_job("n")
            await wait_status(worker, job.id, "finished", timeout=5)  # type: ignore[arg-type]
        elif REAL_SERVER:
            await wait_for(lambda: worker.waker.blocking is True, timeout=15)
            assert worker.waker.active
        else:
            await wait_for(lambda: worker.waker.blocking is False, timeout=5)
            await wait_for(lambda: not worker.waker.active, timeout=5)
            job = await worker.schedule_job("n")  # polling (and in-process wake-ups) go on
            await wait_status(worker, job.id, "finished", timeout=5)  # type: ignore[arg-type]


async def test_polling_alone_picks_up_work(db: Any) -> None:
    worker = await make(db, JOBS, change_streams=False, poll_interval=0.3)
    producer = await make(db, JOBS)
    async with worker:
        assert not worker.waker.active
        job = await producer.schedule_job("n")
        await wait_status(worker, job.id, "finished", timeout=5)  # type: ignore[arg-type]


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.claims = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)
        target = str(event.command.get("findAndModify", ""))
        if event.command_name == "findAndModify" and not target.endswith("workers"):
            self.claims += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_an_idle_worker_does_not_spin_on_a_non_blocking_stream(
    mongo_url: str, db: Any
) -> None:
    counter = Counter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[counter]
    )
    try:
        worker = await init_job_processor(
            client[db.name],
            jobs=JOBS,
            **(FAST | {"poll_interval": 1.0, "change_stream_max_await": 1.0}),
        )
        async with worker:
            await asyncio.sleep(0.5)
            counter.names.clear()
            counter.claims = 0
            await asyncio.sleep(3)
            idle = list(counter.names)
            claims = counter.claims
    finally:
        await client.close()
    assert idle.count("getMore") <= 4  # about one per second at most, never thousands
    assert claims <= 5  # about one claim per poll_interval
    # per heartbeat (0.5 s): one findAndModify on the worker's own document (it returns the
    # paused names); per sweep (1 s): workers and the jobs needing attention; per poll (1 s):
    # a claim and a getMore
    assert len(idle) < 40


async def test_without_watch_support_polling_carries_on() -> None:
    from mongomock_motor import AsyncMongoMockClient

    db = AsyncMongoMockClient(tz_aware=True)["wake"]
    worker = await init_job_processor(db, jobs=JOBS, **FAST)
    async with worker:
        job = await worker.schedule_job("n")
        await wait_status(worker, job.id, "finished", timeout=5)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert not worker.waker.active


async def test_jobs_scheduled_far_ahead_cost_one_timer_per_worker(db: Any) -> None:
    import datetime as dt

    processor = await make(db, JOBS, poll_interval=30, idle_poll_interval=30, change_streams=False)
    loop = asyncio.get_running_loop()

    def timers() -> int:
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    async with processor:
        month = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
        jobs = [await processor.schedule_job("n", scheduled_for=month) for _ in range(300)]
        soon = await processor.schedule_job(
            "n", scheduled_for=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        )
        assert timers() < 30  # the loops' own sleeps; not one per job (that would be 300+)
        assert len(processor.worker.due) == 2  # due times are data (each time once), not timers
        # the job due in a second still runs on time though the next poll is 30 s away
        await wait_status(processor, soon.id, "finished", timeout=5)  # type: ignore[arg-type]
        for job in jobs:
            await processor.kill_job(job.id)
    assert len(processor.worker.due) == 1  # killed jobs leave an inert entry, no timers


async def test_a_batch_of_jobs_due_soon_runs_on_time_though_the_next_poll_is_far(db: Any) -> None:
    """`schedule_jobs` with delays woke the worker at once, found nothing due, and left the
    jobs to the next poll (up to `poll_interval` late), where `schedule_job` records the due
    time and wakes the worker then."""
    import datetime as dt

    from job_processor import JobSpec

    processor = await make(db, JOBS, poll_interval=30, idle_poll_interval=30, change_streams=False)
    async with processor:  # its next poll is 30 s away
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        first, second = await processor.schedule_jobs(
            [JobSpec("n", scheduled_for=soon), JobSpec("n", delay=1.5)]
        )
        await wait_status(processor, first.id, "finished", timeout=5)  # type: ignore[arg-type]
        await wait_status(processor, second.id, "finished", timeout=5)  # type: ignore[arg-type]
