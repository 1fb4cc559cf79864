"""schedule_jobs: "two items with the same key give both the first one's job" (docs/producers.md;
an outside review's finding, failing before its fix).

The repeat is resolved item by item AFTER the batch's insert_many, by reading who holds the key
then; a job that ended in between (a fast worker ran it) has freed its key, and the repeat is
inserted as a second, new job of the same name and key in the same call."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from job_processor import AbortSignal, Job, JobDef, JobSpec, JobStatus
from tests.helpers import make, wait_status

S = JobStatus


async def quick(job: Job, signal: AbortSignal) -> Any:
    return job.payload.get("n")


JOBS = {"send": JobDef(handler=quick)}


async def test_a_repeated_key_in_one_batch_gives_the_first_items_job(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make(db, JOBS)
    coll = p.storage.jobs.coll
    real = coll.insert_many

    async def insert_then_a_worker_runs_the_first(docs: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await real(docs, *args, **kwargs)
        except BulkWriteError:  # item 1 repeated item 0's key
            # a worker (here: this processor) picks item 0 up and finishes it at once,
            # before the batch resolves the repeat
            async with p:
                await wait_status(p, str(docs[0]["_id"]), S.FINISHED)
            raise

    monkeypatch.setattr(coll, "insert_many", insert_then_a_worker_runs_the_first)
    jobs = await p.schedule_jobs(
        [JobSpec("send", {"n": 1}, key="order-42"), JobSpec("send", {"n": 2}, key="order-42")]
    )
    assert jobs[1].id == jobs[0].id, (
        f"item 1 got a new job {jobs[1].id} ({jobs[1].status}), not item 0's {jobs[0].id}"
    )
    assert await coll.count_documents({"name": "send"}) == 1


async def test_a_repeated_key_in_one_batch_under_churn(db: Any) -> None:
    """No monkeypatching: real workers finishing short keyed jobs while batches repeat a key."""
    workers = [await make(db, JOBS, concurrency=8, poll_interval=0.05) for _ in range(2)]
    for w in workers:
        await w.start()
    producer = await make(db, JOBS)
    split = 0
    try:
        for _ in range(100):
            jobs = await producer.schedule_jobs(
                [JobSpec("send", {"n": 1}, key="a"), JobSpec("send", {"n": 2}, key="a")]
            )
            split += jobs[0].id != jobs[1].id
    finally:
        for w in workers:
            await w.stop()
    assert split == 0, f"{split} of 100 batches gave the two items different jobs"


async def test_a_repeated_key_of_an_exclusive_name_gives_one_job_too(db: Any) -> None:
    """Deterministic, no race: the name is exclusive and already active; the two items that
    share a key each get a skipped record of their own."""
    p = await make(db, {"export": JobDef(handler=quick, concurrency="exclusive")})
    running = await p.schedule_job("export")
    jobs = await p.schedule_jobs(
        [JobSpec("export", {"n": 1}, key="t-1"), JobSpec("export", {"n": 2}, key="t-1")]
    )
    assert jobs[0].status == S.SKIPPED and jobs[0].conflicting_job_id == running.id
    assert jobs[1].id == jobs[0].id, f"two records: {jobs[0].id} and {jobs[1].id}"
