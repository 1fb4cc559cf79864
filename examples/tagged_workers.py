"""A tagged multi-worker setup: runner-1 runs the "main" jobs, every replica the untagged ones.

To run (two terminals, or the docker-compose.production.yml replicas):
    .venv/bin/job-processor server                   # no MongoDB? a local one, in another terminal
    export MONGODB_URL=mongodb://127.0.0.1:27017/job_processor
    INSTANCE_ID=runner-1 .venv/bin/job-processor run examples.tagged_workers:make
    INSTANCE_ID=runner-2 .venv/bin/job-processor run examples.tagged_workers:make
"""

from __future__ import annotations

import asyncio

from job_processor import AbortSignal, Job, JobDef, JobProcessor, init_job_processor
from job_processor.cli import RunContext


async def rebuild_search_index(job: Job, signal: AbortSignal) -> dict[str, int]:
    """Resumable: a restart (or a crash) continues from the last checkpoint."""
    batch = (job.state or {}).get("batch", 0)
    while batch < job.payload.get("batches", 10):
        signal.raise_if_aborted()
        await asyncio.sleep(0.1)  # index one batch
        batch += 1
        await job.checkpoint({"batch": batch})
    return {"batches": batch}


async def generate_pdf(job: Job, signal: AbortSignal) -> str:
    return f"invoice-{job.payload['invoice']}.pdf"


JOBS = {
    # only one replica may touch the search index, and never two runs at once
    "rebuild-search-index": JobDef(
        handler=rebuild_search_index,
        tag="main",
        resumable=True,
        concurrency="exclusive",
        max_runtime_in_minutes=60,
    ),
    # any replica
    "generate-pdf": JobDef(handler=generate_pdf),
}


def tags_for(instance_id: str | None) -> list[str] | None:
    if instance_id is None:  # local development: one process runs everything
        return None
    return ["main"] if instance_id == "runner-1" else ["secondary"]


async def make(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(
        ctx.db,
        jobs=JOBS,
        worker_tags=ctx.worker_tags or tags_for(ctx.instance_id),
        concurrency=4,
    )
