"""Retries, backoff, dedup keys and priorities, as a user sees them."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from job_processor import (
    AbortSignal,
    Backoff,
    DoNotRetry,
    FakeClock,
    Job,
    JobDef,
    JobProcessorError,
    JobStatus,
    RetryLater,
    init_job_processor,
)
from job_processor.admin import Admin
from job_processor.core.runs import WORKER_SILENT
from tests.helpers import FAST, make, wait_for, wait_status

from .test_recovery import plant_dead_worker_job

S = JobStatus
QUICK = Backoff(kind="fixed", base_seconds=0.1, jitter=False)


class Flaky:
    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.left = failures
        self.calls = 0
        self.exc = exc

    async def __call__(self, job: Job, signal: AbortSignal) -> str:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise self.exc or ConnectionError(f"provider down (call {self.calls})")
        return "sent"


async def test_backoff_schedule_with_an_injected_clock(db: Any) -> None:
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    t0 = clock.now()
    flaky = Flaky(failures=10)
    backoff = Backoff(kind="exponential", base_seconds=2, max_seconds=5, jitter=False)
    processor = await init_job_processor(
        db,
        jobs={"send": JobDef(handler=flaky, max_attempts=4, backoff=backoff)},
        clock=clock,
        **FAST | {"worker_timeout": 60},  # no heartbeat runs: its registration must hold
    )
    job = await processor.run_job("send")
    assert job.status == S.PENDING
    assert job.scheduled_for == t0 + dt.timedelta(seconds=2)
    await processor.heartbeat.register()
    assert await processor.worker.claim_once() is None  # not due yet
    expected = [t0 + dt.timedelta(seconds=2 + 4), t0 + dt.timedelta(seconds=2 + 4 + 5)]
    for when in [t0 + dt.timedelta(seconds=2), *expected]:
        clock.set(when)
        doc = await processor.worker.claim_once()
        assert doc is not None
        await asyncio.gather(*list(processor.worker._tasks))  # that run, to its final write
    final = await processor.get_job(job.id)
    assert final.status == S.ERRORED
    assert final.failures == 4
    assert flaky.calls == 4
    assert [h["status"] for h in final.history] == ["pending", "pending", "pending", "errored"]
    assert all("ConnectionError" in (h["error"] or "") for h in final.history)
    # the recorded retry times are the backoff schedule: 2 s, then 4 s, then the 5 s cap
    assert [h["ended_at"] for h in final.history[:3]] == [
        t0,
        t0 + dt.timedelta(seconds=2),
        expected[0],
    ]


async def test_retried_until_success_calls_the_hook_once(db: Any) -> None:
    exits: list[str] = []
    flaky = Flaky(failures=2)
    processor = await make(
        db,
        {
            "send": JobDef(
                handler=flaky,
                max_attempts=5,
                backoff=QUICK,
                on_job_exited=lambda j: exits.append(j.status.value),
            )
        },
    )
    async with processor:
        job = await processor.schedule_job("send")
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.result == "sent"
    assert done.failures == 2
    assert done.attempt == 3
    assert [h["status"] for h in done.history] == ["pending", "pending", "finished"]
    assert exits == ["finished"]


async def test_exhausted_retries_error_once(db: Any) -> None:
    exits: list[str] = []
    processor = await make(
        db,
        {
            "send": JobDef(
                handler=Flaky(99),
                max_attempts=3,
                backoff=QUICK,
                on_job_exited=lambda j: exits.append(j.id),
            )
        },
    )
    async with processor:
        job = await processor.schedule_job("send")
        done = await wait_status(processor, job.id, S.ERRORED)
        await asyncio.sleep(0.3)
    assert done.failures == 3
    assert len(done.history) == 3
    assert done.error is not None and "call 3" in done.error
    assert exits == [job.id]


async def test_per_job_max_attempts_overrides_the_definition(db: Any) -> None:
    flaky = Flaky(99)
    processor = await make(db, {"send": JobDef(handler=flaky, max_attempts=5, backoff=QUICK)})
    async with processor:
        job = await processor.schedule_job("send", max_attempts=2)
        done = await wait_status(processor, job.id, S.ERRORED)
    assert done.max_attempts == 2
    assert flaky.calls == 2


async def test_retry_later_and_do_not_retry(db: Any) -> None:
    later = Flaky(1, RetryLater(0.3, "rate limited"))
    never = Flaky(5, DoNotRetry("address rejected"))
    processor = await make(
        db,
        {
            "later": JobDef(handler=later, max_attempts=3, backoff=Backoff(base_seconds=60)),
            "never": JobDef(handler=never, max_attempts=3, backoff=QUICK),
        },
    )
    async with processor:
        a = await processor.schedule_job("later")
        b = await processor.schedule_job("never")
        done = await wait_status(processor, a.id, S.FINISHED, timeout=5)  # not 60 s later
        failed = await wait_status(processor, b.id, S.ERRORED)
    assert done.failures == 1
    assert failed.failures == 1
    assert failed.error is not None and failed.error.startswith("DoNotRetry: address rejected")
    assert never.calls == 1


class RateLimited(RetryLater):
    """A subclass whose __init__ does not call RetryLater's (no `delay` set)."""

    def __init__(self, what: str) -> None:
        Exception.__init__(self, f"{what} is rate limited")


async def test_a_retry_later_subclass_that_set_no_delay_is_retried_on_the_backoff(
    db: Any,
) -> None:
    """It was errored for good, as an internal error ("AttributeError: 'RateLimited' object
    has no attribute 'delay'"), with attempts left: it is a failed attempt, retried after the
    backoff's delay."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    flaky = Flaky(1, RateLimited("the provider"))
    backoff = Backoff(kind="fixed", base_seconds=30, jitter=False)
    processor = await init_job_processor(
        db,
        jobs={"send": JobDef(handler=flaky, max_attempts=2, backoff=backoff)},
        clock=clock,
        **FAST | {"worker_timeout": 60},  # no heartbeat runs: its registration must hold
    )
    failed = await processor.run_job("send")
    assert (failed.status, failed.failures) == (S.PENDING, 1)
    assert failed.error is not None and failed.error.startswith(
        "RateLimited: the provider is rate limited"
    )
    assert failed.scheduled_for == clock.now() + dt.timedelta(seconds=30)


async def test_max_runtime_exceeded_is_a_failed_attempt(db: Any) -> None:
    calls = 0

    async def slow_once(job: Job, signal: AbortSignal) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)
        return "second try"

    processor = await make(
        db,
        {
            "s": JobDef(
                handler=slow_once, max_runtime_in_minutes=0.005, max_attempts=2, backoff=QUICK
            )
        },
        shutdown_grace=0.2,
    )
    async with processor:
        job = await processor.schedule_job("s")
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.history[0]["error"] == "max runtime exceeded"
    assert done.result == "second try"


async def test_retry_job_requeues_errored_and_keeps_history(db: Any) -> None:
    flaky = Flaky(1)
    processor = await make(db, {"send": JobDef(handler=flaky)})
    async with processor:
        job = await processor.schedule_job("send")
        await wait_status(processor, job.id, S.ERRORED)
        again = await processor.retry_job(job.id)
        assert again.status == S.PENDING
        done = await wait_status(processor, job.id, S.FINISHED)
        with pytest.raises(JobProcessorError, match="only errored or killed"):
            await processor.retry_job(job.id)
    assert [h["status"] for h in done.history] == ["errored", "finished"]


async def test_a_retry_while_another_job_holds_the_key_says_so_and_changes_nothing(
    db: Any,
) -> None:
    from job_processor.ops.admin import Admin

    processor = await make(db, {"send": JobDef(handler=Flaky(1))})  # no worker: nothing runs
    first = await processor.schedule_job("send", key="order-42")
    await processor.kill_job(first.id)  # pending: killed at once, its key freed
    holder = await processor.schedule_job("send", key="order-42")
    assert holder.id != first.id
    said = f"job {holder.id} (pending) holds its dedup key 'order-42'"
    with pytest.raises(JobProcessorError, match=re.escape(f"cannot retry while {said}")):
        await processor.retry_job(first.id)
    admin = await Admin.open(db, processor.storage.prefix)
    skipped = await admin.retry([first.id])
    assert skipped.skipped == {first.id: f"{said}: retry it later"}
    assert (await processor.get_job(first.id)).status == S.KILLED  # nothing changed


async def test_crash_during_a_retried_job_counts_as_an_attempt(db: Any) -> None:
    ran: list[int] = []

    async def send(job: Job, signal: AbortSignal) -> str:
        ran.append(job.failures)
        return "ok"

    jobs = {"send": JobDef(handler=send, max_attempts=3, backoff=QUICK)}
    processor = await make(db, jobs)
    retried = await plant_dead_worker_job(processor, "send", max_attempts=3)
    last = await plant_dead_worker_job(processor, "send", worker_id="dead-2", max_attempts=3)
    await processor.storage.jobs.coll.update_one({"_id": ObjectId(last)}, {"$set": {"failures": 2}})
    async with processor:
        done = await wait_status(processor, retried, S.FINISHED)
        crashed = await wait_status(processor, last, S.ERRORED)
    assert done.failures == 1
    assert done.history[0]["error"] == WORKER_SILENT
    assert crashed.error == WORKER_SILENT
    assert crashed.failures == 3
    assert ran == [1]


async def test_dedup_key_returns_the_active_job_then_frees(db: Any) -> None:
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    processor = await make(db, {"send": JobDef(handler=hold)})
    first = await processor.schedule_job("send", {"n": 1}, key="order-42")
    same = await asyncio.gather(
        *(processor.schedule_job("send", {"n": 2}, key="order-42") for _ in range(5))
    )
    assert {j.id for j in same} == {first.id}
    other = await processor.schedule_job("send", key="order-43")
    assert other.id != first.id
    async with processor:
        await wait_status(processor, first.id, S.RUNNING)
        assert (await processor.schedule_job("send", key="order-42")).id == first.id
        release.set()
        await wait_status(processor, first.id, S.FINISHED)
        fresh = await processor.schedule_job("send", key="order-42")
    assert fresh.id != first.id
    assert fresh.key == "order-42"


async def test_dedup_race_from_several_processes(db: Any, mongo_url: str) -> None:
    from ..conftest import url_with_db

    script = textwrap.dedent(
        """
        import asyncio, sys
        from pymongo import AsyncMongoClient
        from job_processor import JobDef, init_job_processor

        async def noop(job, signal): return None

        async def main():
            client = AsyncMongoClient(sys.argv[1], tz_aware=True)
            p = await init_job_processor(client.get_default_database(), logger=None,
                                         jobs={"send": JobDef(handler=noop)})
            ids = await asyncio.gather(*(p.schedule_job("send", key="k") for _ in range(10)))
            print(",".join(sorted({j.id for j in ids})))
            await client.close()

        asyncio.run(main())
        """
    )
    url = url_with_db(mongo_url, db.name)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for _ in range(4)
    ]
    outputs = {p.communicate(timeout=60)[0].decode().strip().splitlines()[-1] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1  # every process got the same single job
    processor = await make(db, {"send": JobDef(handler=Flaky(0))})
    assert len(await processor.list_jobs("send")) == 1


async def test_priority_then_time_then_insertion(db: Any) -> None:
    order: list[str] = []

    async def record(job: Job, signal: AbortSignal) -> None:
        order.append(job.payload["n"])

    processor = await make(db, {"r": JobDef(handler=record)})
    for n, prio in [("low-1", 0), ("low-2", 0), ("high", 10), ("mid", 5), ("low-3", 0)]:
        await processor.schedule_job("r", {"n": n}, priority=prio)
    async with processor:
        await wait_for(lambda: len(order) == 5)
    assert order == ["high", "mid", "low-1", "low-2", "low-3"]


async def _blocks(job: Job, signal: AbortSignal) -> None:
    await signal.wait()


async def test_a_retry_from_a_process_that_does_not_define_an_exclusive_name_keeps_it_so(
    db: Any,
) -> None:
    """A web app with jobs of its own retried a killed job of an exclusive name that another
    job of it now held: the exclusive key was not restored and two were active at once."""
    workers = await make(db, {"ex": JobDef(handler=_blocks, concurrency="exclusive")})
    await workers.heartbeat.register()  # its definitions are in the registry
    web = await make(db, {"other": JobDef(handler=_blocks)})
    first = await workers.schedule_job("ex")
    await workers.kill_job(first.id)
    second = await workers.schedule_job("ex")
    assert second.status == JobStatus.PENDING
    with pytest.raises(JobProcessorError, match="holds the exclusive name 'ex'"):
        await web.retry_job(first.id)
    assert (await workers.get_job(first.id)).status == JobStatus.KILLED  # nothing changed
    await workers.kill_job(second.id)
    assert (await web.retry_job(first.id)).status == JobStatus.PENDING  # once it is free


async def fails(job: Job, signal: AbortSignal) -> None:
    raise DoNotRetry("the provider said no")


EXCLUSIVE_JOBS = {"export": JobDef(handler=fails, concurrency="exclusive")}


async def _failed_and_holder(db: Any) -> tuple[Any, Job]:
    p = await make(db, EXCLUSIVE_JOBS)
    async with p:
        failed = await p.schedule_job("export", key="tenant-1")
        await wait_status(p, failed.id, S.ERRORED)
    holder = await p.schedule_job("export", key="tenant-2")  # another key: only the name clashes
    assert holder.status == S.PENDING
    coll = p.storage.jobs.coll
    assert await coll.count_documents({"dedup_key": "export|tenant-1"}) == 0  # nobody holds it
    return p, failed


async def test_retry_job_refused_by_the_exclusive_name_says_so(db: Any) -> None:
    p, failed = await _failed_and_holder(db)
    with pytest.raises(JobProcessorError) as refused:
        await p.retry_job(failed.id)
    message = str(refused.value)
    assert "holds the exclusive name 'export'" in message, message


async def test_admin_retry_refused_by_the_exclusive_name_says_so(db: Any) -> None:
    _, failed = await _failed_and_holder(db)
    admin = await Admin.open(db)
    result = await admin.retry(failed.id)
    why = result.skipped[failed.id]
    assert "holds the exclusive name 'export'" in why, why


async def fails(job: Job, signal: AbortSignal) -> None:
    raise ValueError("boom")


async def test_refusal_names_the_dedup_key_when_its_holder_ended_meanwhile(db: Any) -> None:
    """The job is not exclusive: its dedup key is what was refused. When the holder ended
    between the refusal and the read that names it, the message must still name the dedup key
    ("another active job held its dedup key 'k'"), not an exclusive name this job never had."""
    p = await make(db, {"j": JobDef(handler=fails, max_attempts=1)})
    async with p:
        first = await p.schedule_job("j", key="k")
        await wait_status(p, first.id, JobStatus.ERRORED)
    holder = await p.schedule_job("j", key="k", delay=3600)  # holds the dedup key
    retry = p.storage.jobs.retry

    async def refused_then_holder_ends(*args: Any, **kwargs: Any) -> Any:
        try:
            return await retry(*args, **kwargs)
        except DuplicateKeyError:
            await p.kill_job(holder.id)  # the holder ends meanwhile (killed, say)
            raise

    p.storage.jobs.retry = refused_then_holder_ends  # type: ignore[method-assign]
    with pytest.raises(JobProcessorError) as caught:
        await p.retry_job(first.id)
    message = str(caught.value)
    assert "dedup key 'k'" in message, message
    assert "exclusive" not in message, message
    assert (await p.storage.jobs.get(ObjectId(holder.id)))["status"] == "killed"


@pytest.mark.parametrize(
    "first_failure",
    [
        lambda name: ValueError(f"cannot parse {name}"),
        lambda name: RetryLater(0.1, f"{name} is busy"),
    ],
    ids=["raised", "retry-later"],
)
async def test_an_error_text_holding_a_lone_surrogate_still_retries(
    db: Any, first_failure: Any
) -> None:
    """A non-UTF-8 file name (os.listdir's surrogateescape) in an exception's message or a
    RetryLater's reason: an ordinary failed attempt, retried, its text kept with the escape
    (BSON refused the final write: the job errored for good with 'could not record the run's
    outcome', its error lost)."""
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")
    calls = 0

    async def parse(job: Job, signal: AbortSignal) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise first_failure(name)
        return "parsed"

    processor = await make(db, {"parse": JobDef(handler=parse, max_attempts=2, backoff=QUICK)})
    async with processor:
        job = await processor.schedule_job("parse")
        done = await wait_status(processor, job.id, S.FINISHED, S.ERRORED)
    assert done.status == S.FINISHED, done.error
    assert done.failures == 1 and calls == 2
    assert "report-\\udcff.csv" in (done.history[0]["error"] or "")
