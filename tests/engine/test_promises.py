"""Promises of docs/guide.md and docs/crons.md that an outside audit found without a test of
their own (each held): a crash after a kill request, a kill request met by a graceful stop, an
exclusive name whose job is paused, graceful stops that cost no attempt, the caps on a job's
history and log lines, a retry from another process while the owner runs the hook, and a
retried cron task past its check-in margin."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor import (
    AbortSignal,
    CronDef,
    DoNotRetry,
    FakeClock,
    Job,
    JobDef,
    JobStatus,
    RetryLater,
)
from job_processor.testing import run_until_idle
from tests.engine.test_recovery import plant_dead_worker_job
from tests.helpers import make, wait_for, wait_status

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def test_a_crash_after_a_kill_request_ends_a_resumable_job_killed(db: Any) -> None:
    """A resumable job with attempts left whose worker died after a kill was requested is
    killed by the recovery, not resumed, and its hook is called once, with `killed`."""
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    async def resume(job: Job, signal: AbortSignal) -> str:
        return "resumed"

    p = await make(db, {"index": JobDef(handler=resume, resumable=True, on_job_exited=hook)})
    job_id = await plant_dead_worker_job(p, "index", resumable=True, max_attempts=3)
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(job_id)}, {"$set": {"kill_requested_at": p.clock.now()}}
    )
    async with p:
        done = await wait_status(p, job_id, S.KILLED, S.FINISHED, S.PAUSED, S.ERRORED)
        await wait_for(lambda: calls, timeout=10)
    assert done.status == S.KILLED, done
    assert calls == ["killed"]


async def test_a_kill_requested_elsewhere_before_a_stop_wins_over_the_pause(db: Any) -> None:
    """A graceful stop pauses a resumable job; a kill another process requested just before
    it (the worker has not polled it yet) ends it killed instead."""
    started = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> str:
        started.set()
        await signal.wait()
        return "x"

    p = await make(db, {"r": JobDef(handler=work, resumable=True)}, poll_interval=30)
    await p.start()
    first = await p.schedule_job("r")
    await asyncio.wait_for(started.wait(), 10)
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(first.id)}, {"$set": {"kill_requested_at": p.clock.now()}}
    )
    await p.stop()
    assert (await p.get_job(first.id)).status == S.KILLED


async def test_an_exclusive_names_paused_job_makes_a_new_one_skipped(db: Any) -> None:
    started = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> str:
        started.set()
        await signal.wait()
        return "x"

    p = await make(db, {"ex": JobDef(handler=work, resumable=True, concurrency="exclusive")})
    await p.start()
    first = await p.schedule_job("ex")
    await asyncio.wait_for(started.wait(), 10)
    await p.stop()
    assert (await p.get_job(first.id)).status == S.PAUSED
    second = await p.schedule_job("ex")
    assert second.status == S.SKIPPED, second


async def test_graceful_stops_cost_no_attempt(db: Any) -> None:
    """A resumable job with max_attempts=1 stopped four times is paused each time and then
    finishes; a plain one interrupted by stops goes back to pending, with no failure."""
    started = asyncio.Event()

    async def resumable(job: Job, signal: AbortSignal) -> str:
        if job.attempt <= 4:
            started.set()
            await signal.wait()
            return "returned on abort"
        return "done"

    async def plain(job: Job, signal: AbortSignal) -> str:
        started.set()
        await signal.wait()
        signal.raise_if_aborted()
        return "x"

    jobs = {
        "r": JobDef(handler=resumable, resumable=True, max_attempts=1),
        "p": JobDef(handler=plain, max_attempts=1),
    }
    p = await make(db, jobs)
    job = await p.schedule_job("r")
    for _ in range(4):
        started.clear()
        await p.start()
        await asyncio.wait_for(started.wait(), 10)
        await p.stop()
        j = await p.get_job(job.id)
        assert (j.status, j.failures) == (S.PAUSED, 0), (j.status, j.failures, j.error)
    async with p:
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED)
    assert (done.status, done.failures) == (S.FINISHED, 0), done.error
    other = await p.schedule_job("p")
    for _ in range(2):
        started.clear()
        await p.start()
        await asyncio.wait_for(started.wait(), 10)
        await p.stop()
        j = await p.get_job(other.id)
        assert (j.status, j.failures) == (S.PENDING, 0), (j.status, j.error)


async def test_a_jobs_history_and_log_lines_are_capped(db: Any) -> None:
    """guide.md: the history keeps the last 20 runs (the last one included), the log the last
    200 lines."""

    async def flaky(job: Job, signal: AbortSignal) -> str:
        for i in range(15):
            job.log("line", i=i, attempt=job.attempt)
        if job.attempt < 25:
            raise RetryLater(0, f"again {job.attempt}")
        return "done"

    p = await make(db, {"f": JobDef(handler=flaky, max_attempts=30)}, clock=FakeClock(NOW))
    job = await p.schedule_job("f")
    await run_until_idle(p)
    final = await p.get_job(job.id)
    assert (final.status, final.failures) == (S.FINISHED, 24), final.error
    assert len(final.history) == 20
    assert [h["attempt"] for h in final.history] == list(range(6, 26))
    assert len(final.logs) == 200
    assert final.logs[-1]["fields"] == {"i": 14, "attempt": 25}


async def test_a_retry_from_another_process_waits_for_the_owners_hook(db: Any) -> None:
    """retry_job while the worker that ended the job still runs its on_job_exited: the hook is
    called once for the errored exit, then once for the finished one."""
    calls: list[tuple[str, int]] = []
    in_hook, release = asyncio.Event(), asyncio.Event()

    async def hook(job: Job) -> None:
        calls.append((job.status.value, job.attempt))
        in_hook.set()
        await release.wait()

    async def fail_once(job: Job, signal: AbortSignal) -> str:
        if job.attempt == 1:
            raise DoNotRetry("no")
        return "ok"

    jobs = {"j": JobDef(handler=fail_once, on_job_exited=hook, on_job_exited_timeout=10)}
    worker = await make(db, jobs)
    other = await make(db, jobs)
    await worker.start()
    try:
        job = await worker.schedule_job("j")
        await asyncio.wait_for(in_hook.wait(), 10)
        retrying = asyncio.create_task(other.retry_job(job.id))
        release.set()
        assert (await retrying).status == S.PENDING
        await wait_status(worker, job.id, S.FINISHED)
        await wait_for(lambda: len(calls) == 2)
    finally:
        release.set()
        await worker.stop()
    assert calls == [("errored", 1), ("finished", 2)], calls


async def test_a_retried_cron_task_runs_after_its_check_in_margin(db: Any) -> None:
    """The check-in margin bounds when a cron task may start for its slot; a task that
    started, errored and is retried by hand later runs (it is not recorded missed)."""

    async def boom(job: Job, signal: AbortSignal) -> str:
        if job.attempt == 1:
            raise DoNotRetry("no")
        return "done"

    clock = FakeClock(NOW)
    crons = {"nightly": CronDef(handler=boom, cron_string="0 * * * *", checkin_margin=5)}
    p = await make(db, {}, crons=crons, clock=clock)
    clock.set(NOW + dt.timedelta(hours=1))
    await p.scheduler.tick()
    await run_until_idle(p)
    [task] = await p.list_jobs(name="nightly")
    assert task.status == S.ERRORED, task
    clock.advance(1800)
    assert (await p.retry_job(task.id)).status == S.PENDING
    await p.scheduler.tick()
    await run_until_idle(p)
    final = await p.get_job(task.id)
    assert final.status == S.FINISHED, (final.status, final.error, final.skip_reason)
