"""Stopping a worker. stop() while a claim's reply is on its way: the claimed job is not
started (no new run after a stop began) but put back unstarted, no attempt used; a stop() its
caller gives up on never cancels that claim, so that the next stop() finishes the stop. The
end of a run_job's worker waits for the hooks its sweep took over while it still beats."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.storage.compat import decode
from tests.helpers import make, wait_for

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


async def test_a_job_claimed_while_the_worker_stops_is_put_back_unstarted(db: Any) -> None:
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)  # a side effect: an e-mail sent, say

    p = await make(db, {"work": JobDef(handler=work)}, poll_interval=30, change_streams=False)
    await p.start()
    await wait_for(lambda: p.worker.idle.is_set())
    landed, reply = await _held_claim(p)
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
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)

    p = await make(db, {"work": JobDef(handler=work)}, poll_interval=30, change_streams=False)
    await p.start()
    await wait_for(lambda: p.worker.idle.is_set())
    landed, reply = await _held_claim(p)
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
    now = dt.datetime.now(dt.UTC)  # its exit's hook owed by nobody, as a CLI kill records it
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(job.id)},
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
    run = asyncio.create_task(p.run_job("long"))
    await wait_for(lambda: calls == [job.id])  # its sweep runs the hook
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
