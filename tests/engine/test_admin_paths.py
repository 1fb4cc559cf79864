"""No on_job_exited or cron task lost on the admin paths: retry, delete and purge of a job whose
hook is still owed, and the retry of a cron task that never started."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

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


async def test_a_hook_owed_by_a_job_no_worker_defines_is_given_up_after_the_grace(
    db: Any,
) -> None:
    """A typo's job (`send-emial`, scheduled by a producer that checks no names) killed from
    the CLI owes its hook, and no worker will ever define the name to call it: after
    unknown_name_grace a worker's sweep records the hook as given up, so the job can go.
    Within the grace, a worker that defines the name (a rolling deploy) still calls it."""
    clock = FakeClock(NOW)
    hooks = Hooks()
    producer = await make(db, {"send-emial": JobDef(handler=ok, on_job_exited=hooks)}, clock=clock)
    admin = await Admin.open(db, clock=clock)
    typo = (await producer.schedule_job("send-emial")).id
    await admin.kill([typo])
    refused = await admin.delete([typo])
    assert "no worker has defined 'send-emial' (a typo?)" in refused.skipped[typo]
    worker = await make(db, {"send-email": JobDef(handler=ok)}, clock=clock)
    await worker.heartbeat.register()  # a worker of the real code: it never defines the typo
    clock.advance(1800)
    await worker.recovery.error_unknown_names(clock.now())
    assert (await worker.get_job(typo)).exit_hook == "owed"  # within the grace: kept
    clock.advance(1801)
    await worker.recovery.error_unknown_names(clock.now())
    given_up = await worker.get_job(typo)
    assert (given_up.exit_hook, given_up.exit_hook_error) == (
        "failed",
        "not called: no worker has defined 'send-emial' for 3600 s (unknown_name_grace: a "
        "typo, or a name forgotten with `names forget`)",
    )
    assert hooks.seen == []
    assert (await admin.delete([typo])).changed == [typo]


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


async def test_an_admin_retry_of_a_job_without_a_hook_is_not_held(db: Any) -> None:
    """A kill from the CLI records the hook as owed without knowing the definition; when the
    registry says the definition has no on_job_exited, a retry does not wait for it."""
    processor = await make(db, {"plain": JobDef(handler=ok)})
    async with processor:  # registers the definition (no hook)
        pass
    job = await processor.schedule_job("plain")
    admin = await Admin.open(db, clock=processor.clock)
    await admin.kill([job.id])
    assert (await processor.get_job(job.id)).exit_hook == "owed"
    retried = await admin.retry([job.id])
    assert retried.changed == [job.id], retried.skipped
    assert (await processor.get_job(job.id)).status == S.PENDING
    # nor do delete and purge (purge: one delete for the name, which has such jobs)
    ids = [(await processor.schedule_job("plain")).id for _ in range(3)]
    deleted = ids[0]
    await admin.kill(ids)
    assert (await admin.delete([deleted])).changed == [deleted]
    later = await Admin.open(db, clock=FakeClock(NOW + dt.timedelta(days=3650)))
    result = await later.purge(status="killed", older_than="1d")
    assert result.count == 2 and "kept_owing_hook" not in result.detail
    assert [j.id for j in await processor.list_jobs()] == [job.id]


@pytest.mark.parametrize("deploy", [False, True])
async def test_a_retry_waits_for_a_hook_its_live_worker_is_running(db: Any, deploy: bool) -> None:
    """The errored exit's hook is running on the worker when another process retries the job:
    the retry waits for it instead of running it a second time. With `deploy`, a rolling
    deploy lowered worker_timeout: the retrying process has 2 s, the old worker 60 s and a
    heartbeat 5 s old (alive by its own timeout, by which every process judges it)."""
    from job_processor import DoNotRetry

    seen: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def hook(job: Job) -> None:
        seen.append(job.status.value)
        if len(seen) == 1:
            started.set()
            await release.wait()

    async def fails_once(job: Job, signal: AbortSignal) -> str:
        if not seen:
            raise DoNotRetry("first run fails")
        return "ok"

    defs = {"mail": JobDef(handler=fails_once, on_job_exited=hook, on_job_exited_timeout=5)}
    old = {"worker_timeout": 60.0, "heartbeat_interval": 30.0} if deploy else {}
    new = {"worker_timeout": 2.0, "heartbeat_interval": 0.5} if deploy else {}
    worker = await make(db, defs, **old)
    client = await make(db, defs, **new)  # another process (a web app) that retries
    judged = asyncio.Event()  # the retry asked whether the hook's owner is alive
    is_live = client.storage.workers.is_live

    async def asked(*args: Any) -> bool:
        alive = await is_live(*args)
        judged.set()
        return alive

    client.storage.workers.is_live = asked  # type: ignore[method-assign]
    job = await worker.schedule_job("mail")
    async with worker:
        await asyncio.wait_for(started.wait(), 10)
        if deploy:
            late = worker.clock.now() - dt.timedelta(seconds=5)
            await worker.storage.workers.coll.update_one(
                {"_id": worker.worker_id}, {"$set": {"last_seen": late}}
            )
        retry = asyncio.create_task(client.retry_job(job.id))
        await asyncio.wait_for(judged.wait(), 10)
        assert not retry.done()
        release.set()
        retried = await asyncio.wait_for(retry, 15)
        assert retried.status in (S.PENDING, S.RUNNING, S.FINISHED)
        await wait_status(worker, job.id, S.FINISHED)
        await wait_for(lambda: len(seen) == 2)
    assert seen == ["errored", "finished"]


async def test_retrying_a_finished_job_leaves_its_running_hook_alone(db: Any) -> None:
    seen: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def hook(job: Job) -> None:
        seen.append(job.status.value)
        started.set()
        await release.wait()

    defs = {"mail": JobDef(handler=ok, on_job_exited=hook)}
    worker = await make(db, defs)
    client = await make(db, defs)
    job = await worker.schedule_job("mail")
    async with worker:
        await asyncio.wait_for(started.wait(), 10)
        try:
            await client.retry_job(job.id)
        except Exception as exc:
            assert "only errored or killed jobs can be retried" in str(exc)
        else:
            raise AssertionError("a finished job was retried")
        release.set()
        await wait_for_record(worker, job.id)
    assert seen == ["finished"]


async def test_run_job_finishes_the_hooks_its_sweep_started_before_leaving(db: Any) -> None:
    """run_job's own sweep takes over a dead worker's owed hook; the hook has run and is
    recorded when run_job returns (another worker must not find it owed by a gone process)."""
    from bson import ObjectId

    calls: list[str] = []
    hook_started = asyncio.Event()

    async def hook(job: Job) -> None:
        calls.append(job.id)
        hook_started.set()
        await asyncio.sleep(0.5)

    async def until_the_sweep_took_it(job: Job, signal: AbortSignal) -> str:
        await asyncio.wait_for(hook_started.wait(), 10)
        return "ok"

    async def fails(job: Job, signal: AbortSignal) -> str:
        from job_processor import DoNotRetry

        raise DoNotRetry("x")

    setup = await make(db, {"mail": JobDef(handler=fails)})
    ended = await setup.run_job("mail")
    assert ended.status == S.ERRORED
    old = setup.clock.now() - dt.timedelta(seconds=30)
    await setup.storage.jobs.coll.update_one(
        {"_id": ObjectId(ended.id)},
        {
            "$set": {
                "exit_hook": "owed",
                "exit_hook_id": "h1",
                "exit_hook_owner": "deadhost-1-abc",
                "exit_hook_at": old,
            }
        },
    )
    runner = await make(
        db,
        {
            "mail": JobDef(handler=fails, on_job_exited=hook),
            "quick": JobDef(handler=until_the_sweep_took_it),
        },
    )
    await runner.run_job("quick")
    assert calls == [ended.id]
    assert (await runner.get_job(ended.id)).exit_hook == "done"


async def test_a_hook_recorded_with_no_owner_is_called_by_a_sweep_at_info(
    db: Any, caplog: Any
) -> None:
    """No owner is the usual way for a job killed from the CLI: its call by a worker's sweep is
    logged at info, not as a warning (which says that an owner died)."""
    import logging

    hooks = Hooks()
    logger = logging.getLogger("test.admin_paths.hooks")
    processor, _, job_id = await killed_by_an_operator(db, hooks, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.admin_paths.hooks"):
        async with processor:  # its start's sweep calls the hook
            await wait_for(lambda: hooks.seen == ["killed"])
    (called,) = [r for r in caplog.records if r.__dict__.get("event") == "on_job_exited_recovered"]
    assert called.levelno == logging.INFO and called.__dict__["fields"]["job_id"] == job_id
