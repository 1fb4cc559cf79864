"""The app the chaos run serves (`job-processor run chaos_app:make`): plain jobs that sometimes
fail (and are retried), resumable jobs that checkpoint, every exit recorded by on_job_exited in
the `chaos_hook_calls` collection."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from job_processor import AbortSignal, Job, JobDef, JobProcessor, init_job_processor
from job_processor.cli import RunContext

HOOK_CALLS = "chaos_hook_calls"
_db: Any = None


async def work(job: Job, signal: AbortSignal) -> int:
    await asyncio.sleep(random.uniform(0.005, 0.05))
    if random.random() < 0.1:
        raise ConnectionError("flaky provider")
    return int(job.payload["n"])


async def steps(job: Job, signal: AbortSignal) -> int:
    step = int((job.state or {}).get("step", 0))
    while step < 5:
        signal.raise_if_aborted()
        await asyncio.sleep(random.uniform(0.01, 0.05))
        step += 1
        await job.checkpoint({"step": step})
    return step


async def record_exit(job: Job) -> None:
    await _db[HOOK_CALLS].insert_one(
        {"job_id": job.id, "status": job.status.value, "pid": os.getpid()}
    )


JOBS = {
    "work": JobDef(
        handler=work,
        on_job_exited=record_exit,
        on_job_exited_timeout=3,
        max_attempts=5,
        backoff={"kind": "fixed", "base_seconds": 0.2, "jitter": False},
    ),
    "steps": JobDef(
        handler=steps,
        on_job_exited=record_exit,
        on_job_exited_timeout=3,
        resumable=True,
        max_attempts=10,
    ),
}


async def schedule_all(db: Any, n: int) -> None:
    import logging

    quiet = logging.getLogger("chaos")
    quiet.setLevel(logging.WARNING)
    processor = await init_job_processor(db, logger=quiet, jobs=JOBS)
    for i in range(n):
        await processor.schedule_job("work" if i % 4 else "steps", {"n": i})


async def make(ctx: RunContext) -> JobProcessor:
    global _db
    _db = ctx.db
    return await init_job_processor(
        ctx.db,
        jobs=JOBS,
        concurrency=8,
        poll_interval=0.3,
        heartbeat_interval=0.5,
        worker_timeout=2.0,
        shutdown_grace=1.0,
    )
