"""No on_job_exited or cron task lost on the admin paths: retry, delete and purge of a job whose
hook is still owed, and the retry of a cron task that never started."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from job_processor import AbortSignal, CronDef, FakeClock, Job, JobDef, JobStatus
from job_processor.ops.admin import Admin
from job_processor.testing import run_until_idle
from tests.helpers import make, wait_for, wait_status

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class Hooks:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, job: Job) -> None:
        self.seen.append(job.status.value)


async def ok(job: Job, signal: AbortSignal) -> str:
    return "done"


async def killed_by_an_operator(db: Any, hooks: Hooks, **kw: Any) -> tuple[Any, Admin, str]:
    """A pending job killed from the CLI or the dashboard (Admin): its hook is owed, with no
    owner, and no worker's sweep has run it yet (the processor is not started)."""
    processor = await make(db, {"mail": JobDef(handler=ok, on_job_exited=hooks)}, **kw)
    job = await processor.schedule_job("mail", {"to": "ada"})
    admin = await Admin.open(db, clock=processor.clock)
    await admin.kill([job.id], actor="ops")
    killed = await processor.get_job(job.id)
    assert (killed.status, killed.exit_hook) == (S.KILLED, "owed")
    return processor, admin, job.id


async def test_retry_runs_the_owed_hook_of_the_killed_exit_first(db: Any) -> None:
    hooks = Hooks()
    processor, _, job_id = await killed_by_an_operator(db, hooks)
    retried = await processor.retry_job(job_id)
    assert retried.status == S.PENDING
    assert hooks.seen == ["killed"]  # the killed exit's hook, with the killed status, first
    async with processor:
        await wait_status(processor, job_id, S.FINISHED)
        await wait_for(lambda: len(hooks.seen) == 2)
    assert hooks.seen == ["killed", "finished"]
    final = await processor.get_job(job_id)
    assert final.exit_hook == "done"


async def test_an_admin_retry_waits_for_the_owed_hook_and_says_why(db: Any) -> None:
    hooks = Hooks()
    processor, admin, job_id = await killed_by_an_operator(db, hooks)
    refused = await admin.retry([job_id])
    assert not refused.done
    assert "on_job_exited for the killed exit has not run yet" in refused.skipped[job_id]
    assert (await processor.get_job(job_id)).status == S.KILLED
    async with processor:  # a worker's sweep runs the hook (it has no owner: at once)
        await wait_for(lambda: hooks.seen == ["killed"])
        await wait_for_record(processor, job_id)
        again = await admin.retry([job_id])
        assert again.changed == [job_id]
        await wait_status(processor, job_id, S.FINISHED)
        await wait_for(lambda: hooks.seen == ["killed", "finished"])


async def wait_for_record(processor: Any, job_id: str) -> None:
    for _ in range(300):
        if (await processor.get_job(job_id)).exit_hook == "done":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the hook was never recorded")


async def test_delete_and_purge_keep_a_job_whose_hook_is_owed(db: Any) -> None:
    hooks = Hooks()
    clock = FakeClock(NOW)
    processor, admin, job_id = await killed_by_an_operator(db, hooks, clock=clock)
    deleted = await admin.delete([job_id])
    assert not deleted.done
    assert "on_job_exited has not run yet" in deleted.skipped[job_id]
    clock.advance(3600)
    purged = await admin.purge(status="killed", older_than="30m")
    assert purged.count == 0
    assert purged.detail["kept_owing_hook"] == 1
    assert (await processor.get_job(job_id)).status == S.KILLED  # still there, hook owed
    async with processor:  # its first sweep runs the hook (it has no owner)
        await wait_for(lambda: hooks.seen == ["killed"])
        await wait_for_record(processor, job_id)
    assert (await admin.delete([job_id])).changed == [job_id]


async def test_a_retried_cron_task_that_never_started_runs(db: Any) -> None:
    clock = FakeClock(NOW)
    crons = {"nightly": CronDef(handler=ok, cron_string="0 * * * *", checkin_margin=5)}
    processor = await make(db, {}, crons=crons, clock=clock)
    clock.set(NOW + dt.timedelta(hours=1))
    await processor.scheduler.tick()
    [task] = await processor.list_jobs(name="nightly")
    assert task.status == S.PENDING
    await processor.kill_job(task.id)  # killed before it ran
    clock.advance(3600)  # its start deadline (slot + 5 min) is long gone
    retried = await processor.retry_job(task.id)
    assert retried.start_deadline is not None and retried.start_deadline > clock.now()
    ran = await run_until_idle(processor)
    assert (task.id, S.FINISHED) in [(j.id, j.status) for j in ran]  # run, not "missed"
