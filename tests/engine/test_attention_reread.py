"""The sweep's one query reads jobs light and the running ones it may recover whole after: a job
recovered elsewhere and claimed again by a new worker between those reads is not recovered
(its new run was recorded errored under that worker before)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, JobStatus
from tests.engine.test_recovery import plant_dead_worker_job
from tests.helpers import make

S = JobStatus


async def test_a_job_claimed_again_between_the_light_read_and_the_whole_one_is_left_alone(
    db: Any,
) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"send": JobDef(handler=noop)})
    job_id = await plant_dead_worker_job(p, "send")
    jobs = p.storage.jobs
    inner = jobs.attention_cursor
    new_run = str(ObjectId())

    class ThenClaimedAgain:
        def __init__(self, cursor: Any) -> None:
            self.cursor = cursor

        async def __aiter__(self) -> Any:
            async for doc in self.cursor:
                yield doc
            # meanwhile: recovered by another sweeper, claimed by a worker started just now
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            await p.storage.workers.register(
                {"_id": "w-new", "hostname": "h", "pid": 2, "started_at": now, "last_seen": now}
            )
            await jobs.coll.update_one(
                {"_id": ObjectId(job_id)},
                {
                    "$set": {
                        "worker_id": "w-new",
                        "run_id": new_run,
                        "run_started_at": now,
                        "attempt": 2,
                    }
                },
            )

    def cursor(*args: Any, **kwargs: Any) -> Any:
        return ThenClaimedAgain(inner(*args, **kwargs))

    jobs.attention_cursor = cursor  # type: ignore[method-assign]
    try:
        await p.recovery.sweep(dt.datetime.now(dt.UTC))
    finally:
        jobs.attention_cursor = inner  # type: ignore[method-assign]
    stored = await jobs.get(ObjectId(job_id))
    assert stored is not None
    assert (stored["status"], stored["run_id"]) == ("running", new_run)
