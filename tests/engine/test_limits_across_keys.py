"""Jobs under several limits, and under a limit a deploy changed (an outside review's findings,
each failing before its fix): a backlog under one limit that is not full no longer holds back
an older or higher-priority job under another (the keys were visited in the definitions'
order, each filling every free slot); jobs queued under a static limit a deploy made per
tenant are claimed under their tenant's key (they kept the static key, and ran beside it)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from job_processor import AbortSignal, Job, JobDef, JobSpec, JobStatus
from job_processor.core.definitions import Limit
from tests.engine.test_limits import max_overlap
from tests.helpers import make, wait_status

S = JobStatus


async def backlog_beside(db: Any, other: str) -> tuple[Any, list[str]]:
    """A worker of 2 slots; 30 `bulk` jobs under one limit of 10, `other` under its own limit
    of 10 (neither is ever full). Returns it and the names in the order their runs started."""
    starts: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        starts.append(job.name)
        await asyncio.sleep(0.1)

    jobs = {
        "bulk": JobDef(handler=work, limit=Limit(key="bulk-api", concurrency=10)),
        other: JobDef(handler=work, limit=Limit(key=f"{other}-api", concurrency=10)),
    }
    p = await make(db, jobs, concurrency=2)
    await p.schedule_jobs([("bulk", {}) for _ in range(30)])
    return p, starts


async def test_a_backlog_under_one_limit_does_not_hold_back_a_higher_priority_job_under_another(
    db: Any,
) -> None:
    p, starts = await backlog_beside(db, "urgent")
    urgent = await p.schedule_job("urgent", {}, priority=100)
    async with p:
        await wait_status(p, urgent.id, S.FINISHED, timeout=30)
    # higher priority first (guide.md): the urgent job is due with the backlog from the start
    assert "urgent" in starts[:4], f"urgent started #{starts.index('urgent') + 1}"


async def test_an_older_job_under_another_limit_is_not_held_back_by_a_later_backlog(
    db: Any,
) -> None:
    p, starts = await backlog_beside(db, "report")
    due = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)  # due before the backlog
    report = await p.schedule_job("report", {}, scheduled_for=due)
    async with p:
        await wait_status(p, report.id, S.FINISHED, timeout=30)
    assert "report" in starts[:2], f"report started #{starts.index('report') + 1}"


async def test_jobs_queued_under_a_static_limit_obey_the_per_tenant_limit_that_replaced_it(
    db: Any,
) -> None:
    loop = asyncio.get_running_loop()
    spans: dict[str, list[tuple[float, float]]] = {}

    async def work(job: Job, signal: AbortSignal) -> None:
        t0 = loop.time()
        await asyncio.sleep(0.3)
        spans.setdefault(job.payload["tenant_id"], []).append((t0, loop.time()))

    # deploy 1: one static limit for the API; jobs are queued
    old = await make(db, {"sync": JobDef(handler=work, limit=Limit(key="sync-api", concurrency=8))})
    backlog = [
        (await old.schedule_job("sync", {"tenant_id": t})).id for t in ["acme"] * 3 + ["globex"] * 3
    ]
    # deploy 2: the limit is made per tenant, one run per tenant at a time
    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=1)
    new = await make(db, {"sync": JobDef(handler=work, limit=per_tenant)}, concurrency=8)
    fresh = [(await new.schedule_job("sync", {"tenant_id": "acme"})).id for _ in range(3)]
    async with new:
        for job_id in backlog + fresh:
            await wait_status(new, job_id, S.FINISHED, timeout=20)
    keys = {(await new.get_job(j)).limit_key for j in backlog}
    assert max_overlap(spans["acme"]) == 1, (spans, keys)  # measured by the handlers
    assert keys == {"tenant:acme", "tenant:globex"}, keys


async def test_a_full_tenants_backlog_does_not_hand_its_slots_to_younger_tenants_first(
    db: Any,
) -> None:
    # the best due jobs across the limits were read without leaving out a per-value limit's
    # full keys: a full tenant's backlog at the head of the queue gave that limit every free
    # slot, and its other tenants' younger jobs ran before an older job under another limit
    starts: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        starts.append(job.name)
        await asyncio.sleep(0.05)

    jobs = {
        "sync": JobDef(handler=work, limit=Limit(key="tenant:{tenant_id}", concurrency=1)),
        "report": JobDef(handler=work, limit=Limit(key="report-api", concurrency=10)),
    }
    p = await make(db, jobs, concurrency=2)
    now = dt.datetime.now(dt.UTC)
    early, before = now - dt.timedelta(minutes=2), now - dt.timedelta(minutes=1)
    big = JobSpec("sync", {"tenant_id": "big"}, scheduled_for=early)
    await p.schedule_jobs([big] * 30)
    report = await p.schedule_job("report", {}, scheduled_for=before)  # older than the others
    await p.schedule_jobs([("sync", {"tenant_id": t}) for t in "bcdefghijk" for _ in range(2)])
    async with p:
        await wait_status(p, report.id, S.FINISHED, timeout=30)
    # the big tenant's first run, one of another tenant (they filled the first claim), then it
    assert "report" in starts[:4], f"report started #{starts.index('report') + 1}"


async def starts_beside_a_busy_tenant(
    db: Any, specs: Callable[[dt.datetime], list[JobSpec]]
) -> list[str]:
    """A worker of 3 slots; tenants under a per-value limit of 2, `report` under a limit of its
    own; tenant "big" has one run going (room for one more) when `specs(now)` are scheduled.
    The order their runs started (by tenant, or name)."""
    starts: list[str] = []
    hold = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        starts.append(job.payload.get("tenant_id") or job.name)
        if job.payload.get("hold"):
            await hold.wait()
        await asyncio.sleep(0.05)

    jobs = {
        "sync": JobDef(handler=work, limit=Limit(key="tenant:{tenant_id}", concurrency=2)),
        "report": JobDef(handler=work, limit=Limit(key="report-api", concurrency=10)),
    }
    p = await make(db, jobs, concurrency=3)
    async with p:
        long = await p.schedule_job("sync", {"tenant_id": "big", "hold": True})
        await wait_status(p, long.id, S.RUNNING)
        ids = [j.id for j in await p.schedule_jobs(specs(dt.datetime.now(dt.UTC)))]
        for job_id in ids:
            await wait_status(p, job_id, S.FINISHED, timeout=30)
        hold.set()
    return starts


async def test_a_tenant_with_room_for_one_run_takes_one_slot_of_the_claim_not_its_concurrency(
    db: Any,
) -> None:
    # a key of a per-value limit counted for up to its concurrency among the best due jobs,
    # whatever it already ran: a tenant with one run of two going and a backlog at the head
    # of the queue gave its limit two slots, the second filled with another tenant's younger
    # job before an older job under another limit
    def specs(now: dt.datetime) -> list[JobSpec]:
        early, before = now - dt.timedelta(minutes=2), now - dt.timedelta(minutes=1)
        big = JobSpec("sync", {"tenant_id": "big"}, scheduled_for=early)
        report = JobSpec("report", {}, scheduled_for=before)  # older than the other tenants'
        others = [JobSpec("sync", {"tenant_id": t}) for t in "cdefg" for _ in range(2)]
        return [*[big] * 4, report, *others]

    starts = await starts_beside_a_busy_tenant(db, specs)
    younger = [i for i, who in enumerate(starts) if who in "cdefg"]
    assert starts.index("report") < min(younger), starts


async def test_the_jobs_behind_a_tenants_backlog_keep_their_turn_against_another_limit(
    db: Any,
) -> None:
    # the other side of the test above: a tenant with room for one run counted once, the jobs
    # of its limit behind its backlog are read on, so another tenant's job older than the
    # job under another limit starts first (the best due jobs were read once: the slot the
    # backlog did not take went to the other limit's younger job)
    def specs(now: dt.datetime) -> list[JobSpec]:
        at = [now - dt.timedelta(minutes=m) for m in (3, 2, 1)]
        big = JobSpec("sync", {"tenant_id": "big"}, scheduled_for=at[0])
        older = JobSpec("sync", {"tenant_id": "c"}, scheduled_for=at[1])  # older than report
        return [*[big] * 4, older, JobSpec("report", {}, scheduled_for=at[2])]

    starts = await starts_beside_a_busy_tenant(db, specs)
    assert starts.index("c") < starts.index("report"), starts
