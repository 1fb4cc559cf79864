"""Flows at scale: what a sweep reads of a flow's ended jobs (their results, read at every sweep
until seen settled: megabytes before), and a bounded log line for a fan-in."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import bson
import pytest

from job_processor import AbortSignal, Job, JobDef, JobSpec, JobStatus
from tests.helpers import make, wait_status

S = JobStatus


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
