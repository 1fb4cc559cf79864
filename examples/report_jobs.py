"""The jobs behind the Django and Flask examples: defined once, run by async workers, scheduled
by synchronous web apps (job_processor.sync.JobClient).

The workers (from the repository's root, after the README's install into .venv):
    .venv/bin/job-processor server         # no MongoDB? a local one, in another terminal
    export MONGODB_URL=mongodb://127.0.0.1:27017/job_processor
    .venv/bin/job-processor run examples.report_jobs:make

The web apps import `JOBS` only to check names and payloads before writing (their handlers
never run there): see examples/flask_app.py and examples/django_app/.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from job_processor import AbortSignal, DoNotRetry, Job, JobDef, JobProcessor, init_job_processor
from job_processor.cli import RunContext


class ReportRequest(BaseModel):
    customer: str
    rows: int = Field(ge=0, le=1_000_000)


async def build_report(job: Job[ReportRequest], signal: AbortSignal) -> dict[str, object]:
    request = job.payload
    if request.customer == "nobody":
        raise DoNotRetry(f"no customer named {request.customer!r}")
    await asyncio.sleep(min(request.rows, 100) / 1000)  # the slow part
    signal.raise_if_aborted()
    return {"customer": request.customer, "rows": request.rows, "file": f"{request.customer}.csv"}


JOBS = {"build-report": JobDef(handler=build_report, payload_model=ReportRequest)}


async def make(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(ctx.db, jobs=JOBS, concurrency=4, poll_interval=0.5)


# ---- shared by the web examples (flask_app.py, django_app/) --------------------------------


def long_poll_seconds(raw: str) -> float | None:
    """A `?wait=` value: seconds from 0 to 25, else None (the view answers 400): below gunicorn's
    default --timeout (30 s), which kills a worker busy with one request that long."""
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 25 else None


def public_error(error: str | None) -> str | None:
    """What a client may see of a job's error: its first line (`ValueError: ...`), not the
    worker's traceback and file paths (those stay on the job, for the dashboard and the CLI)."""
    return error.splitlines()[0] if error else None
