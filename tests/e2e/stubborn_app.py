"""An app for `job-processor run tests.e2e.stubborn_app:make`: one async handler (and a hook
for other apps) that swallows its cancellation (the guide: given one more second, then left
to finish on its own)."""

from __future__ import annotations

import asyncio

from job_processor import AbortSignal, Job, JobDef, JobProcessor, init_job_processor
from job_processor.cli import RunContext


async def stubborn(job: Job, signal: AbortSignal) -> None:
    while True:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:  # swallowed, as the test needs
            continue


async def stubborn_hook(job: Job) -> None:
    """An on_job_exited that swallows its cancellation too."""
    await stubborn(job, AbortSignal())


JOBS = {"stubborn": JobDef(handler=stubborn)}


async def make(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(
        ctx.db,
        jobs=JOBS,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        worker_timeout=2.0,
        shutdown_grace=1.0,
    )
