"""Flows at scale: what a sweep reads of a flow's ended jobs (their results, read at every sweep
until seen settled: megabytes before), and a bounded log line for a fan-in."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import bson
import pytest
from pymongo import monitoring

from job_processor import AbortSignal, Job, JobDef, JobSpec, JobStatus
from tests.helpers import make, wait_status

S = JobStatus


class Statements(monitoring.CommandListener):
    """Update statements sent while `on` (a bulk write counts each of its statements)."""

    def __init__(self) -> None:
        self.on, self.n = False, 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name == "update":
            self.n += len(event.command.get("updates", ()))

    def succeeded(self, event: Any) -> None: ...

    def failed(self, event: Any) -> None: ...


async def part(job: Job, signal: AbortSignal) -> str:
    return "x" * job.payload.get("kb", 0) * 1024


async def total(job: Job, signal: AbortSignal) -> int:
    return len(await job.dependencies())


JOBS = {"part": JobDef(handler=part), "total": JobDef(handler=total)}


async def test_the_sweeps_one_query_does_not_read_the_flows_results(db: Any) -> None:
    p = await make(db, JOBS, concurrency=8)
    kids = [JobSpec("part", {"kb": 400}) for _ in range(40)]
    jobs = await p.schedule_jobs([*kids, JobSpec("total", after=kids)])
    async with p:
        done = await wait_status(p, jobs[-1].id, S.FINISHED, timeout=60)
    assert done.result == 40
    now = dt.datetime.now(dt.UTC)
    found = await p.storage.jobs.needing_attention(now - dt.timedelta(seconds=2), now)
    assert len(found.flows) == 40  # the ended children, not yet seen settled
    read = sum(len(bson.encode(d)) for d in found.flows)
    assert read < 100_000, f"the sweep's query read {read / 1e6:.1f} MB of flow documents"


async def test_a_fan_in_logs_a_bounded_line(db: Any, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.flows.line")
    p = await make(db, JOBS, logger=logger)
    children = await p.schedule_jobs([JobSpec("part", {"n": n}) for n in range(2000)])
    with caplog.at_level(logging.INFO, logger="test.flows.line"):
        await p.schedule_job("total", after=children)
    (line,) = [r.getMessage() for r in caplog.records if "job_waiting" in r.getMessage()]
    assert len(line) < 2_000 and "after_count=2000" in line.replace("'", ""), line[:300]


async def test_a_job_scheduled_after_2000_ended_jobs_is_released_by_its_own_call(
    db: Any, mongo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It counts the finished ones 100 at a time: about 20 update statements, not 4,000 (one
    count and one release each, rewriting its document of 2,000 entries every time: over 10 s
    on nx-27017, past the producer budget, and the call returned the job still waiting)."""
    from pymongo import AsyncMongoClient

    from job_processor import init_job_processor
    from tests.helpers import FAST

    counted = Statements()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[counted]
    )
    try:
        logger = logging.getLogger("test.flows.fanin")
        p = await init_job_processor(client[db.name], logger, jobs=JOBS, **FAST)
        children = await p.schedule_jobs([JobSpec("part", {"n": n}) for n in range(2000)])
        ended = {"status": "finished", "ended_at": dt.datetime.now(dt.UTC)}
        await p.storage.jobs.coll.update_many(  # their final writes, without 2,000 runs
            {"name": "part"}, {"$set": ended, "$unset": {"claim_name": ""}}
        )
        counted.on = True
        with caplog.at_level(logging.WARNING, logger="test.flows.fanin"):
            parent = await p.schedule_job("total", after=children)
        counted.on = False
    finally:
        await client.close()
    assert parent.status == S.PENDING and parent.waiting_on == 0
    assert not caplog.records
    assert all(s == "finished" for s in parent.deps.values()) and len(parent.deps) == 2000
    assert counted.n < 50, f"{counted.n} update statements"


async def test_a_batch_item_after_2000_ended_jobs_is_released_by_the_batch(
    db: Any, mongo_url: str
) -> None:
    """schedule_jobs: an item waiting on many finished jobs counts them 100 at a time too (one
    statement each before: 2,000 rewrites of its document); the items waiting on one or two
    are counted with the others waiting on them."""
    from pymongo import AsyncMongoClient

    from job_processor import init_job_processor
    from tests.helpers import FAST

    counted = Statements()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[counted]
    )
    try:
        p = await init_job_processor(client[db.name], jobs=JOBS, **FAST)
        children = await p.schedule_jobs([JobSpec("part", {"n": n}) for n in range(2000)])
        ended = {"status": "finished", "ended_at": dt.datetime.now(dt.UTC)}
        await p.storage.jobs.coll.update_many(
            {"name": "part"}, {"$set": ended, "$unset": {"claim_name": ""}}
        )
        few = [JobSpec("total", after=[children[i], children[i + 1]]) for i in range(0, 40, 2)]
        counted.on = True
        jobs = await p.schedule_jobs([JobSpec("total", after=children), *few])
        counted.on = False
    finally:
        await client.close()
    assert [j.status for j in jobs] == [S.PENDING] * 21
    assert all(j.waiting_on == 0 for j in jobs)
    assert all(s == "finished" for s in jobs[0].deps.values()) and len(jobs[0].deps) == 2000
    assert counted.n < 200, f"{counted.n} update statements"


async def _ended(p: Any, n: int, status: str = "finished") -> list[Job]:
    """`n` jobs ended with `status` (their final writes, without running them)."""
    from bson import ObjectId

    kids = await p.schedule_jobs([JobSpec("part", {"n": i}) for i in range(n)])
    ended = {"status": status, "ended_at": dt.datetime.now(dt.UTC)}
    await p.storage.jobs.coll.update_many(
        {"_id": {"$in": [ObjectId(k.id) for k in kids]}},
        {"$set": ended, "$unset": {"claim_name": ""}},
    )
    return list(kids)


async def test_the_jobs_returned_are_as_their_registration_left_them(db: Any) -> None:
    """A job skipped by its policy when scheduled, or counted but not released, came back as
    it was inserted (waiting, every dependency "waiting"): only a release made it read again."""
    p = await make(db, JOBS)
    (bad,) = await _ended(p, 1, "errored")
    assert (await p.schedule_job("total", after=[bad])).status == S.SKIPPED
    done = await _ended(p, 12)
    jobs = await p.schedule_jobs(
        [JobSpec("total", after=[bad, *done]), JobSpec("total", after=[bad])]
    )
    assert [j.status for j in jobs] == [S.SKIPPED, S.SKIPPED]
    later = await p.schedule_job("part", {}, delay=3600)
    job = await p.schedule_job("total", after=[*done, later])
    assert job.waiting_on == 1 and list(job.deps.values()).count("finished") == 12


async def test_a_duplicate_of_a_waiting_fan_in_counts_its_finished_dependencies_at_once(
    db: Any, mongo_url: str
) -> None:
    """An admin's duplicate (or a retry of a job killed while it waited) counts them as
    schedule_job does: 100 per update (one each: 12 s for 2,000 on nx-27017)."""
    from pymongo import AsyncMongoClient

    from job_processor.ops.admin import Admin

    p = await make(db, JOBS)
    done = await _ended(p, 2000)
    later = await p.schedule_job("part", {}, delay=3600)
    parent = await p.schedule_job("total", after=[*done, later])
    assert parent.waiting_on == 1
    counted = Statements()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[counted]
    )
    try:
        async with p:  # a live worker has registered the names the duplicate checks
            admin = await Admin.open(client[db.name], p.storage.prefix)
            counted.on = True
            result = await admin.duplicate(parent.id, actor="ops")
            counted.on = False
    finally:
        await client.close()
    assert counted.n < 200, f"{counted.n} update statements"
    copy = await p.get_job(result.jobs[-1].id)
    assert copy.id != parent.id and copy.waiting_on == 1
    assert list(copy.deps.values()).count("finished") == 2000
