"""Races and lost replies found by an outside review; each test is the scenario it described."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core import documents as D
from job_processor.core.definitions import Limit
from job_processor.core.outcome import Outcome
from tests.helpers import make, wait_for, wait_status

S = JobStatus


async def test_a_slow_recovered_hook_never_stops_the_heartbeat(db: Any) -> None:
    """A hook owed by a dead worker takes longer than worker_timeout: it runs in the background,
    so this worker's heartbeat goes on and its own running job is not recovered elsewhere."""
    hook_started = asyncio.Event()
    release = asyncio.Event()

    async def slow_hook(job: Job) -> None:
        hook_started.set()
        await asyncio.sleep(3)  # longer than worker_timeout (2 s)

    async def long(job: Job, signal: AbortSignal) -> str:
        await release.wait()
        return "done"

    jobs = {
        "b": JobDef(handler=lambda j, s: None, on_job_exited=slow_hook),
        "long": JobDef(handler=long),
    }
    worker = await make(db, jobs)
    other = await make(db, jobs)  # another live worker sweeping meanwhile
    past = worker.clock.now() - dt.timedelta(minutes=5)
    orphan = D.as_running(D.new_job("b", {}, now=past), "dead-worker", past)
    await worker.storage.jobs.insert(orphan)
    await worker.storage.jobs.end_run(
        orphan, Outcome(S.FINISHED, hook_owed=True), past, writer="dead-worker", budget=2
    )
    async with worker:
        job = await worker.schedule_job("long")
        await wait_status(worker, job.id, S.RUNNING)
        first_id = worker.worker_id
        async with other:
            await asyncio.wait_for(hook_started.wait(), 10)
            deadline = asyncio.get_running_loop().time() + 3.5
            while asyncio.get_running_loop().time() < deadline:  # the hook's whole run
                assert (await worker.get_job(job.id)).status == S.RUNNING
                await asyncio.sleep(0.2)
            release.set()
            done = await wait_status(worker, job.id, S.FINISHED)
    assert worker.worker_id == first_id  # never declared dead
    assert (done.attempt, done.failures, done.result) == (1, 0, "done")


@pytest.mark.parametrize("doc", [{"claim_name": "send"}, {"name": "other", "claim_name": "send"}])
async def test_a_claimed_document_with_a_bad_name_is_errored_not_fatal(
    db: Any, doc: dict[str, Any]
) -> None:
    processor = await make(db, {"send": JobDef(handler=lambda j, s: "ok")})
    bad = await db["job_processor_jobs"].insert_one(doc | {"due_ms": int(time.time() * 1000)})
    good = await processor.schedule_job("send")
    async with processor:
        failed = await wait_status(processor, str(bad.inserted_id), S.ERRORED)
        await wait_status(processor, good.id, S.FINISHED)
        assert not processor.failed.is_set()  # every loop still up
    assert failed.error is not None
    if "name" in doc:
        assert "its name 'other' is not its claim_name 'send'" in failed.error
    else:
        assert "is missing or not a job this worker defines" in failed.error


async def test_a_job_named_as_another_it_was_not_claimed_under_is_errored_not_run(
    db: Any,
) -> None:
    """Another program wrote `{name: "b", claim_name: "a"}`: claimed under "a", it is errored
    as invalid, never run as "b" (whose tag this worker does not serve: b's handler here would
    run outside its tag and limits), on the one-job claim and on the batch claim alike."""
    ran: list[str] = []

    async def a(job: Job, signal: AbortSignal) -> None:
        ran.append(f"a:{job.id}")

    async def b(job: Job, signal: AbortSignal) -> None:
        ran.append(f"b:{job.id}")

    jobs = {"a": JobDef(handler=a), "b": JobDef(handler=b, tag="main")}
    processor = await make(db, jobs, worker_tags=["other"], concurrency=4)
    due = int(time.time() * 1000)
    coll = db["job_processor_jobs"]
    bad = [
        (await coll.insert_one({"name": "b", "claim_name": "a", "due_ms": due})).inserted_id
        for _ in range(3)  # several: the batch claim takes some
    ]
    good = await processor.schedule_job("a")
    async with processor:
        for job_id in bad:
            failed = await wait_status(processor, str(job_id), S.ERRORED)
            assert failed.error == (
                "invalid job document: its name 'b' is not its claim_name 'a' (they must be the "
                "same job name)"
            )
        await wait_status(processor, good.id, S.FINISHED)
    assert ran == [f"a:{good.id}"]


async def test_a_claim_whose_reply_was_lost_is_read_back_and_run_once(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        runs.append(job.attempt)

    processor = await make(db, {"w": JobDef(handler=work)})
    coll = processor.storage.jobs.coll
    real = coll.find_one_and_update
    lost: list[bool] = []

    async def claim_lands_reply_lost(query: Any, update: Any, **kw: Any) -> Any:
        result = await real(query, update, **kw)
        if "claim_name" in update.get("$unset", {}) and result is not None and not lost:
            lost.append(True)
            raise AutoReconnect("connection reset after the claim landed")
        return result

    monkeypatch.setattr(coll, "find_one_and_update", claim_lands_reply_lost)
    job = await processor.schedule_job("w")
    async with processor:
        done = await wait_status(processor, job.id, S.FINISHED)
    assert lost == [True]
    assert runs == [1]
    assert (done.attempt, done.failures) == (1, 0)


async def test_a_claim_that_cannot_be_read_back_is_requeued_without_using_an_attempt(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        runs.append(job.attempt)

    processor = await make(db, {"w": JobDef(handler=work)})  # max_attempts 1: no room for loss
    coll = processor.storage.jobs.coll
    real_fam, real_find = coll.find_one_and_update, coll.find
    outage = asyncio.Event()

    async def claim_lands_reply_lost(query: Any, update: Any, **kw: Any) -> Any:
        result = await real_fam(query, update, **kw)
        if "claim_name" in update.get("$unset", {}) and result is not None and not outage.is_set():
            outage.set()
            raise AutoReconnect("connection reset")
        return result

    def find_during_outage(query: Any = None, *args: Any, **kw: Any) -> Any:
        if outage.is_set() and query and "run_id" in query and "_id" not in query:
            raise AutoReconnect("still down")  # the read-back fails: the claim is unknown
        return real_find(query, *args, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", claim_lands_reply_lost)
    monkeypatch.setattr(coll, "find", find_during_outage)
    job = await processor.schedule_job("w")
    async with processor:
        await asyncio.wait_for(outage.wait(), 10)
        await wait_for(lambda: bool(processor.worker.unstarted), timeout=15)
        monkeypatch.setattr(coll, "find", real_find)
        done = await wait_status(processor, job.id, S.FINISHED, timeout=20)
    # the lost claim never ran: `attempt` counts runs, so the one run is the first
    assert runs == [1]
    assert done.attempt == 1 and done.failures == 0
    assert done.history[0]["error"] == "its claim's reply was lost: not run"


async def test_retry_job_clears_the_expiry(db: Any) -> None:
    async def boom(job: Job, signal: AbortSignal) -> None:
        raise ValueError("no")

    processor = await make(db, {"x": JobDef(handler=boom)})
    failed = await processor.run_job("x")
    assert failed.expires_at is not None
    retried = await processor.retry_job(failed.id)
    assert retried.expires_at is None  # pending again: the TTL must not remove it


async def test_a_hook_owed_by_a_worker_that_does_not_define_the_job_is_handed_over(
    db: Any,
) -> None:
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    knows = {"x": JobDef(handler=lambda j, s: None, on_job_exited=hook)}
    stranger = await make(db, {"other": JobDef(handler=lambda j, s: None)})
    kill = await make(db, knows)
    job = await kill.schedule_job("x", scheduled_for=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    await stranger.kill_job(job.id)  # a live process that cannot call x's hook
    doc = await stranger.storage.jobs.get(ObjectId(job.id))
    assert doc is not None and doc["exit_hook"] == "owed"
    assert doc["exit_hook_owner"] is None  # handed over, not held while the stranger lives
    async with kill:  # a worker that defines x takes it at its first sweep
        await wait_for(lambda: calls == ["killed"])


async def test_the_final_document_and_its_hook_see_the_last_checkpoint(db: Any) -> None:
    seen: list[Any] = []

    async def steps(job: Job, signal: AbortSignal) -> int:
        for i in range(3):
            await job.checkpoint({"step": i + 1})
        return 3

    async def hook(job: Job) -> None:
        seen.append(job.state)

    processor = await make(db, {"s": JobDef(handler=steps, on_job_exited=hook)}, concurrency=8)
    ids = [(await processor.schedule_job("s")).id for _ in range(12)]
    async with processor:  # grouped final writes compute the final documents locally
        for job_id in ids:
            await wait_status(processor, job_id, S.FINISHED)
        await wait_for(lambda: len(seen) == 12)
    assert seen == [{"step": 3}] * 12


async def test_limited_names_are_not_starved_by_a_backlog_of_others(db: Any) -> None:
    order: list[str] = []

    async def plain(job: Job, signal: AbortSignal) -> None:
        order.append("plain")
        await asyncio.sleep(0.02)

    async def limited(job: Job, signal: AbortSignal) -> None:
        order.append("limited")

    jobs = {
        "plain": JobDef(handler=plain),
        "limited": JobDef(handler=limited, limit=Limit(key="k", concurrency=1)),
    }
    processor = await make(db, jobs, concurrency=2)
    for _ in range(30):
        await processor.schedule_job("plain")
    await processor.schedule_job("limited")
    async with processor:
        await wait_for(lambda: "limited" in order, timeout=10)
    assert order.index("limited") < 10  # not after the whole backlog of 30


async def test_missed_cron_slots_follow_retention(db: Any) -> None:
    from job_processor import FakeClock

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    crons = {
        "tick": {
            "cron_string": "* * * * * *",
            "handler": lambda j, s: None,
            "checkin_margin": 0.02,
            "keep_finished": dt.timedelta(hours=1),
        }
    }
    processor = await make(db, {}, crons=crons, clock=clock)
    clock.advance(5)  # all workers down: the slots are missed
    async with processor:

        async def missed() -> list[Any]:
            return [j for j in await processor.list_jobs("tick") if j.skip_reason == "missed"]

        deadline = asyncio.get_running_loop().time() + 10
        while not await missed():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        for job in await missed():
            assert job.expires_at is not None
            assert job.expires_at - job.ended_at == dt.timedelta(hours=1)  # type: ignore[operator]


async def test_a_sweep_during_a_final_write_never_calls_its_hook_a_second_time(db: Any) -> None:
    """The final write records the hook as owed by this worker; until the worker calls it (after
    the limit's release and the dependents' update, each a round trip), its own sweep reads it
    as owed by itself, and must leave it: the hook runs once, with no process dying."""
    calls: list[str] = []
    gate = asyncio.Event()
    held = asyncio.Event()

    async def hook(job: Job) -> None:
        calls.append(job.id)

    async def limited(job: Job, signal: AbortSignal) -> str:
        return "done"

    worker = await make(db, {"j": JobDef(handler=limited, on_job_exited=hook)})
    release = worker.worker.limiter.release

    async def slow_release(doc: Any, owner: Any = None, until: Any = None, **kw: Any) -> Any:
        held.set()
        await gate.wait()  # a slow round trip, right after the final write
        return await release(doc, owner, until, **kw)

    worker.worker.limiter.release = slow_release  # type: ignore[method-assign]
    async with worker:
        job = await worker.schedule_job("j")
        await asyncio.wait_for(held.wait(), 10)
        stored = await worker.get_job(job.id)
        assert (stored.status, stored.exit_hook) == (S.FINISHED, "owed")
        later = worker.clock.now() + dt.timedelta(seconds=60)  # its own grace long past
        await worker.recovery.sweep(later)
        gate.set()
        await wait_for(lambda: len(calls) >= 1)
        done = await wait_status(worker, job.id, S.FINISHED)
        await wait_for(lambda: worker.hooks.in_flight == set())
    assert calls == [job.id] and done.exit_hook == "done"


async def test_a_sweep_during_a_kill_never_calls_its_hook_a_second_time(db: Any) -> None:
    """The same for a pending job killed here: its hook is called by the kill, once."""
    calls: list[str] = []
    gate = asyncio.Event()
    held = asyncio.Event()

    async def hook(job: Job) -> None:
        calls.append(job.id)

    worker = await make(db, {"j": JobDef(handler=lambda j, s: None, on_job_exited=hook)})
    ended = worker.flows.ended

    async def slow_ended(doc: Any) -> Any:
        held.set()
        await gate.wait()  # the dependents' update, right after the kill's write
        return await ended(doc)

    worker.flows.ended = slow_ended  # type: ignore[method-assign]
    async with worker:
        job = await worker.schedule_job("j", delay=3600)
        kill = asyncio.create_task(worker.kill_job(job.id))
        await asyncio.wait_for(held.wait(), 10)
        await worker.recovery.sweep(worker.clock.now() + dt.timedelta(seconds=60))
        gate.set()
        await kill
        await wait_for(lambda: worker.hooks.in_flight == set())
        done = await worker.get_job(job.id)
    assert calls == [job.id] and (done.status, done.exit_hook) == (S.KILLED, "done")


async def test_a_kill_landing_as_a_late_cron_task_is_skipped_wins_and_the_hook_runs(
    db: Any,
) -> None:
    """A cron task claimed after its margin is written `skipped`; a kill requested just before
    that write makes it miss: the worker decides again, `killed` (a kill wins on every path),
    and calls on_job_exited, at once (it used to stay `running` until reconciliation)."""
    import datetime as dt

    from bson import ObjectId

    exited: list[str] = []

    async def hook(job: Job) -> None:
        exited.append(job.status.value)

    async def never(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("a late cron task never runs")

    p = await make(db, {"c": JobDef(handler=never, on_job_exited=hook)}, worker_timeout=60.0)
    job = await p.schedule_job("c")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(job.id)}, {"$set": {"type": "cron_task", "start_deadline": past}}
    )
    real = p.worker.jobs.end_run

    async def end_run(claimed: Any, outcome: Outcome, *args: Any, **kw: Any) -> Any:
        if outcome.status == S.SKIPPED:  # an operator's kill lands just before the skip
            await p.kill_job(str(claimed["_id"]))
        return await real(claimed, outcome, *args, **kw)

    p.worker.jobs.end_run = end_run  # type: ignore[method-assign]
    async with p:
        killed = await wait_status(p, job.id, S.KILLED, timeout=10)
        await wait_for(lambda: exited == ["killed"], timeout=10)
    assert killed.error == "killed"


async def test_a_kill_found_then_an_unrecordable_killed_write_still_ends_killed(
    db: Any,
) -> None:
    """A stop pauses a resumable run; a kill lands during that write (it misses: decide
    again, killed); the killed write carrying the result is refused (on MongoDB: the document
    would pass 16 MiB): the run ends `killed; could not record ...`, and `stop()` returns with
    it written (it used to forget the kill, miss once more and leave the job `running`)."""
    from pymongo.errors import WriteError

    started = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> str:
        started.set()
        await signal.wait()
        return "x" * 1000  # returned after the shutdown signal: paused (resumable)

    p = await make(db, {"h": JobDef(handler=work, resumable=True)})
    real = p.worker.jobs.end_runs
    tried: list[str] = []

    async def end_runs(items: Any, budget: float) -> Any:
        outcome = items[0].outcome
        tried.append(outcome.status.value)
        if outcome.status == S.PAUSED:  # a kill lands during the pause's write
            await p.storage.jobs.coll.update_one(
                {"_id": items[0].claimed["_id"]}, {"$set": {"kill_requested_at": items[0].now}}
            )
        if outcome.status == S.KILLED and outcome.result is not None:  # as MongoDB refuses it
            return [WriteError("Resulting document after update is larger than 16777216", 17419)]
        return await real(items, budget)

    p.worker.jobs.end_runs = end_runs  # type: ignore[method-assign]
    job = await p.schedule_job("h")
    await p.start()
    await asyncio.wait_for(started.wait(), 10)
    await p.stop()
    ended = await p.get_job(job.id)
    assert tried == ["paused", "killed", "killed"]
    assert ended.status == S.KILLED
    assert ended.error is not None and ended.error.startswith("killed; could not record")


async def test_log_lines_and_progress_a_cancelled_checkpoint_took_go_with_the_final_write(
    db: Any,
) -> None:
    """A checkpoint takes the run's pending log lines and progress into its write; when that
    write never lands (cancelled here: a stop past its grace while it rides out an outage),
    they are pending again and the final write carries them ("every line is always
    written")."""
    in_checkpoint = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        job.log("step 1 done")
        await job.report_progress(1, 2, "half")
        await job.checkpoint({"step": 1})

    p = await make(db, {"h": JobDef(handler=work)})

    async def riding_out(*args: Any, **kw: Any) -> bool:
        in_checkpoint.set()
        await asyncio.Event().wait()  # never answers: cancelled by the stop
        return True

    p.worker.jobs.save_checkpoint = riding_out  # type: ignore[method-assign]
    job = await p.schedule_job("h")
    await p.start()
    await asyncio.wait_for(in_checkpoint.wait(), 10)
    await p.stop()  # the shutdown signal, the grace, then the cancel
    ended = await p.get_job(job.id)
    assert [line["message"] for line in ended.logs] == ["step 1 done"]
    assert ended.progress is not None and ended.progress["done"] == 1
