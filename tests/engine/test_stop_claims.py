"""Stopping a worker. stop() while a claim's reply is on its way: the claimed job is not
started (no new run after a stop began) but put back unstarted, no attempt used; a stop() its
caller gives up on never cancels that claim, so that the next stop() finishes the stop. The
end of a run_job's worker waits for the hooks its sweep took over while it still beats."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.admin import Admin
from job_processor.core.runs import run_outcome
from job_processor.storage.compat import decode
from job_processor.testing import run_until_idle
from tests.helpers import make, wait_for, wait_status

S = JobStatus


async def _held_claim(p: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """The next claim lands in MongoDB; its reply waits for `reply` (returned: landed, reply)."""
    landed, reply = asyncio.Event(), asyncio.Event()
    real = p.storage.jobs.claim_next

    async def slow_reply(*args: Any, **kwargs: Any) -> Any:
        doc = await real(*args, **kwargs)
        if doc is not None:
            landed.set()
            await reply.wait()
        return doc

    p.storage.jobs.claim_next = slow_reply
    return landed, reply


async def _owed_by_nobody(p: Any, job_id: str) -> None:
    """The job ended killed, its on_job_exited owed by no process (as a CLI kill records it):
    the next sweep of a worker that defines it takes it over."""
    now = dt.datetime.now(dt.UTC)
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(job_id)},
        {
            "$set": {
                "status": "killed",
                "ended_at": now,
                "exit_hook": "owed",
                "exit_hook_id": "h1",
                "exit_hook_owner": None,
                "exit_hook_at": now - dt.timedelta(seconds=5),
            },
            "$unset": {"claim_name": ""},
        },
    )


@dataclass
class _TakenOver:
    p: Any
    job: Any
    run: asyncio.Task[Any]
    calls: list[str]
    hook_go: asyncio.Event
    run_go: asyncio.Event


async def _hook_taken_over_during_a_run_job(db: Any) -> _TakenOver:
    """A processor that is not started runs `long` with run_job (until `run_go`); meanwhile
    its sweep has taken over the owed hook of a killed job, which runs until `hook_go`."""
    calls: list[str] = []
    hook_go, run_go = asyncio.Event(), asyncio.Event()

    async def slow_hook(job: Job) -> None:
        calls.append(job.id)
        await hook_go.wait()

    async def quick(job: Job, signal: AbortSignal) -> None:
        return None

    async def long(job: Job, signal: AbortSignal) -> None:
        await run_go.wait()

    jobs = {"hooked": JobDef(handler=quick, on_job_exited=slow_hook), "long": JobDef(handler=long)}
    p = await make(db, jobs, worker_timeout=2.0, heartbeat_interval=0.2)  # never started
    job = await p.schedule_job("hooked")
    await _owed_by_nobody(p, job.id)
    run = asyncio.create_task(p.run_job("long"))
    await wait_for(lambda: calls == [job.id])  # its sweep runs the hook
    return _TakenOver(p, job, run, calls, hook_go, run_go)


async def _idle_worker_with_a_held_claim(
    db: Any,
) -> tuple[Any, list[str], asyncio.Event, asyncio.Event]:
    """A started, idle worker of "work" (its handler records the jobs it runs), whose next
    claim lands and waits for `reply`: (processor, jobs run, landed, reply)."""
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)  # a side effect: an e-mail sent, say

    p = await make(db, {"work": JobDef(handler=work)}, poll_interval=30, change_streams=False)
    await p.start()
    await wait_for(lambda: p.worker.idle.is_set())
    landed, reply = await _held_claim(p)
    return p, ran, landed, reply


async def test_a_job_claimed_while_the_worker_stops_is_put_back_unstarted(db: Any) -> None:
    p, ran, landed, reply = await _idle_worker_with_a_held_claim(db)
    job = await p.schedule_job("work")
    await asyncio.wait_for(landed.wait(), 10)
    stopping = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    reply.set()  # the reply comes once the stop has begun
    await asyncio.wait_for(stopping, 20)
    after = await p.get_job(job.id)
    assert ran == [], "the handler started after stop() was called"
    assert (after.status, after.attempt, after.failures) == (S.PENDING, 0, 0)
    assert [run.get("error") for run in after.history] == [
        "claimed while its worker was stopping: not run"
    ]


async def test_a_stop_cancelled_during_a_claim_leaves_the_next_stop_to_finish(db: Any) -> None:
    p, ran, landed, reply = await _idle_worker_with_a_held_claim(db)
    job = await p.schedule_job("work")
    await asyncio.wait_for(landed.wait(), 10)
    first = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    first.cancel()  # its caller gives up (asyncio.wait_for(p.stop(), t) timing out, say)
    await asyncio.gather(first, return_exceptions=True)
    reply.set()
    await asyncio.wait_for(p.stop(), 20)  # raised CancelledError: the claim loop was cancelled
    assert not p.started
    after = await p.get_job(job.id)
    assert ran == [] and (after.status, after.attempt) == (S.PENDING, 0)
    assert await p.storage.workers.all() == []  # the worker's document is gone


async def test_a_hook_the_sweep_took_over_ends_before_run_jobs_worker_stops_beating(
    db: Any,
) -> None:
    """A run_job in a processor that is not started: its sweep takes over an owed hook (no
    owner) and runs it in the background; when the run ends, the heartbeat went on until that
    hook ended (it stopped first: another worker declared this one dead, after
    worker_timeout, and called the hook a second time while it still ran here)."""
    t = await _hook_taken_over_during_a_run_job(db)
    p, job, run, calls, hook_go, run_go = t.p, t.job, t.run, t.calls, t.hook_go, t.run_go
    worker_id = p.worker_id
    run_go.set()  # the run ends; the hook still runs
    await wait_for(lambda: p.worker.runs == {})
    ended = dt.datetime.now(dt.UTC)

    async def beat_after_the_run() -> bool:
        doc = await p.storage.workers.coll.find_one({"_id": worker_id})
        seen = decode(doc).get("last_seen") if doc else None
        return isinstance(seen, dt.datetime) and seen > ended

    deadline = asyncio.get_running_loop().time() + 10
    while not await beat_after_the_run():  # it still beats while the hook runs
        assert asyncio.get_running_loop().time() < deadline, "the heartbeat stopped"
        await asyncio.sleep(0.05)
    assert not run.done()  # run_job waits for the hook
    hook_go.set()
    await asyncio.wait_for(run, 10)
    assert calls == [job.id]
    assert await p.storage.workers.all() == []  # its document removed once the hook ended


async def test_a_claim_put_back_at_a_stop_is_put_back_despite_a_failed_release(
    db: Any,
) -> None:
    """The release of a claim that returned after stop() began failed once (a moment's
    outage): the claim loop that would retry it had ended, and the job stayed running under
    the worker id the stop removed (recovered later as a crashed run, an attempt used)."""
    p, ran, landed, reply = await _idle_worker_with_a_held_claim(db)
    real, failures = p.worker.claims.release, []

    async def flaky(doc: Any, why: str) -> Any:
        if not failures:
            failures.append(why)
            raise AutoReconnect("connection reset")  # a moment's outage
        return await real(doc, why)

    p.worker.claims.release = flaky
    job = await p.schedule_job("work")
    await asyncio.wait_for(landed.wait(), 10)
    stopping = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    reply.set()
    await asyncio.wait_for(stopping, 20)
    after = await p.get_job(job.id)
    assert failures and ran == []
    assert (after.status, after.attempt) == (S.PENDING, 0)


async def test_a_run_job_cancelled_while_its_end_waits_for_a_hook_still_ends_its_worker(
    db: Any,
) -> None:
    """Its caller stops waiting while run_job's end waits for a hook its sweep took over: the
    end goes on (the heartbeat beats until the hook ends, then stops, and the worker's
    document goes); before, the heartbeat beat on for a processor that held no runtime."""
    t = await _hook_taken_over_during_a_run_job(db)
    p, job, run, calls, hook_go, run_go = t.p, t.job, t.run, t.calls, t.hook_go, t.run_go
    run_go.set()
    await wait_for(lambda: p._teardown is not None)  # run_job's end, waiting for the hook
    run.cancel()  # its caller gives up
    await asyncio.gather(run, return_exceptions=True)
    assert not p.heartbeat.stop_event.is_set()  # it still beats while the hook runs
    hook_go.set()
    await asyncio.wait_for(asyncio.shield(p._teardown), 10)
    assert p.heartbeat.stop_event.is_set() and p._side_loops is None
    assert await p.storage.workers.all() == [] and calls == [job.id]
    assert (await p.run_job("long")).status == S.FINISHED  # its runtime starts again


async def test_stop_during_an_outage_bounds_the_release_of_unstarted_claims(db: Any) -> None:
    async def work(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"work": JobDef(handler=work)}, change_streams=False)  # lease 2 s
    await p.start()
    await wait_for(lambda: p.worker.idle.is_set())
    outage_over = asyncio.Event()
    releases: list[str] = []

    async def unreachable(*args: Any, **kwargs: Any) -> Any:  # MongoDB gone: no answer
        await outage_over.wait()

    async def release(doc: Any, why: str) -> Any:
        releases.append(why)
        await outage_over.wait()  # a write that waits for server selection

    p.storage.workers.beat = unreachable  # the heartbeat hangs: the lease runs out
    p.worker.claims.release = release
    # a claim whose reply came once the stop began (kept, to be put back unstarted)
    p.worker.claims.keep({"_id": ObjectId(), "run_id": "r1", "name": "work"}, "stopping")
    p.worker.wake.set()
    await wait_for(lambda: releases == ["stopping"])  # the claim loop is stuck in the release
    began = asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(asyncio.shield(p.stop()), 8)  # lease 2 s, unregister 1 s
        took = asyncio.get_running_loop().time() - began
    except TimeoutError:
        took = None
    finally:
        outage_over.set()
    assert took is not None, "stop() did not end within 8 s (the lease is 2 s)"


async def test_the_run_after_a_claim_put_back_unstarted_is_in_the_history(db: Any) -> None:
    """The put-back claim keeps its attempt number for the next run: that run's record is
    still read from the job's fields (it was taken for the put-back entry and left out)."""
    p, _ran, landed, reply = await _idle_worker_with_a_held_claim(db)
    job = await p.schedule_job("work")
    await asyncio.wait_for(landed.wait(), 10)
    stopping = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    reply.set()  # the reply comes once the stop has begun: put back unstarted
    await asyncio.wait_for(stopping, 20)
    put_back = await p.get_job(job.id)
    assert (put_back.status, put_back.attempt) == (S.PENDING, 0)

    async def work(job: Job, signal: AbortSignal) -> str:
        raise RuntimeError("the provider said no")

    after = await make(db, {"work": JobDef(handler=work)})  # the deploy's next worker
    async with after:
        done = await wait_status(after, job.id, S.ERRORED, timeout=15)
        assert done.attempt == 1
        assert [(r.get("attempt"), r.get("status")) for r in done.history][-1] == (1, "errored")
        retried = await after.retry_job(job.id)  # moves the errored run into the history
        runs = [(r.get("attempt"), r.get("status")) for r in retried.history]
        assert (1, "errored") in runs


async def _paused_by_a_stop(db: Any) -> tuple[Any, Job, dict[str, JobDef], list[Any]]:
    """A resumable job paused by a graceful stop, its checkpoint saved: the processor, the job,
    the definitions and the states its runs saw."""
    seen: list[Any] = []
    started = asyncio.Event()

    async def index(job: Job, signal: AbortSignal) -> str:
        seen.append(job.state)
        if job.state is None:
            await job.checkpoint({"done": 5})
            started.set()
            await signal.wait()
        return "indexed"

    jobs = {"index": JobDef(handler=index, resumable=True)}
    p = await make(db, jobs, poll_interval=30, change_streams=False)
    async with p:
        job = await p.schedule_job("index")
        await asyncio.wait_for(started.wait(), 10)
    assert (await p.get_job(job.id)).status == S.PAUSED  # the graceful stop paused it
    return p, job, jobs, seen


async def _put_back_at_a_stop(p: Any, job_id: str, meanwhile: Any = None) -> Job:
    """The job claimed again, the claim's reply held until the stop has begun: put back
    unstarted. `meanwhile`: awaited once it is claimed (running), before the stop."""
    landed, reply = await _held_claim(p)
    await p.start()
    await asyncio.wait_for(landed.wait(), 10)  # claimed again: running
    if meanwhile is not None:
        await meanwhile()
    stopping = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    reply.set()  # the reply comes once the stop has begun: put back unstarted
    await asyncio.wait_for(stopping, 20)
    return await p.get_job(job_id)


async def test_a_paused_job_claimed_while_the_worker_stops_is_put_back_paused(db: Any) -> None:
    """A resumable job paused by a graceful stop (its checkpoint saved), claimed again by a
    worker that had not seen its name paused yet, whose stop began before the claim's reply
    came: it is put back as it was, `paused` (it was put back `pending`), and no worker runs it
    while its name is paused; once resumed, it resumes from its checkpoint."""
    p, job, jobs, seen = await _paused_by_a_stop(db)

    async def operator_pauses() -> None:  # the name: not seen by this worker yet
        await Admin(db).pause("index")

    put_back = await _put_back_at_a_stop(p, job.id, operator_pauses)
    assert (put_back.status, put_back.attempt, put_back.failures) == (S.PAUSED, 1, 0)
    assert put_back.state == {"done": 5}
    assert [run_outcome(r) for r in put_back.history] == ["paused", "not started"]
    assert seen == [None]

    after = await make(db, jobs)  # the next worker
    assert await run_until_idle(after) == []  # its name is paused: not claimed
    assert (await after.get_job(job.id)).status == S.PAUSED
    await Admin(db).resume("index")
    [done] = await run_until_idle(after)
    assert (done.status, done.result, done.attempt) == (S.FINISHED, "indexed", 2)
    assert seen == [None, {"done": 5}]  # resumed from its checkpoint


async def test_a_job_killed_while_paused_then_retried_is_put_back_pending(db: Any) -> None:
    """A resumable job paused by a graceful stop, killed while paused, then retried by hand:
    it is `pending` (its last run's record in `history` still says `paused`: a kill while
    paused is no run). Claimed again and put back unstarted (the reply came once the stop
    began), it is back as it was before that claim, `pending`, not `paused`."""
    p, job, _jobs, _seen = await _paused_by_a_stop(db)
    assert (await p.kill_job(job.id)).status == S.KILLED  # killed while paused
    retried = await p.retry_job(job.id)
    assert retried.status == S.PENDING
    put_back = await _put_back_at_a_stop(p, job.id)
    assert (put_back.status, put_back.failures) == (S.PENDING, 0)
    assert run_outcome(put_back.history[-1]) == "not started"
