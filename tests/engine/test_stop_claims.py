"""stop() while a claim's reply is on its way: the claimed job is not started (no new run
after a stop began) but put back unstarted, no attempt used; and a stop() its caller gives up
on never cancels that claim, so that the next stop() finishes the stop."""

from __future__ import annotations

import asyncio
from typing import Any

from job_processor import AbortSignal, Job, JobDef, JobStatus
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
