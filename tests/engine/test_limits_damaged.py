"""A limit document another program damaged (fields of the wrong type) must not take down a
worker's claim loop or its sweep: the status pages read such fields as missing (59060bd), the
engine must survive them too (an outside review's finding, failing before its fix)."""

from __future__ import annotations

from typing import Any

import pytest

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core.definitions import Limit
from tests.helpers import make, wait_status

S = JobStatus


async def quick(job: Job, signal: AbortSignal) -> str:
    return "ok"


DAMAGED: list[dict[str, Any]] = [
    {"running": "x", "rev": "r", "starts": ["not", "a", "map"], "holders": ["x"]},
    {"running": 0, "rev": 3, "starts": {"a": "x", "b": None}, "holders": {"r1": "x"}},
    {"running": 1.5, "rev": "7", "starts": "text", "holders": {"r1": {"at_ms": "x"}}},
    # no rev at all: the take's compare-and-set on rev 0 matched nothing, ten times over, at
    # every claim: the limit admitted no job, for ever
    {"running": 0, "holders": {}, "starts": {}},
]


@pytest.mark.parametrize("fields", DAMAGED)
async def test_a_damaged_limit_document_never_stops_claims_nor_sweeps(
    db: Any, fields: dict[str, Any]
) -> None:
    await db["job_processor_limits"].insert_one({"_id": "api"} | fields)
    limit = Limit(key="api", concurrency=2, rate=10, per_seconds=60)
    processor = await make(db, {"send": JobDef(handler=quick, limit=limit)})
    async with processor:
        for _ in range(2):  # a claim, and another after the sweep's pass
            job = await processor.schedule_job("send")
            await wait_status(processor, job.id, S.FINISHED)
            await processor.recovery.sweep(processor.clock.now())
