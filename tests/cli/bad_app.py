"""App factories with mistakes (an invalid CronDef, a missing return or await): `run` says
what and where (tests/cli/test_cli.py)."""

from __future__ import annotations

from typing import Any

from job_processor import AbortSignal, CronDef, Job, init_job_processor
from job_processor.cli import RunContext


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


async def make(ctx: RunContext) -> Any:
    crons = {"bad": CronDef(cron_string="*/5 * * *", handler=tick)}  # four fields
    return await init_job_processor(ctx.db, crons=crons)


async def forgot_return(ctx: RunContext) -> Any:
    await init_job_processor(ctx.db, jobs={})


async def forgot_await(ctx: RunContext) -> Any:
    return init_job_processor(ctx.db, jobs={})
