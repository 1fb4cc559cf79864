"""An app factory that builds an invalid CronDef: `run` says where (tests/cli/test_cli.py)."""

from __future__ import annotations

from typing import Any

from job_processor import AbortSignal, CronDef, Job, init_job_processor
from job_processor.cli import RunContext


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


async def make(ctx: RunContext) -> Any:
    crons = {"bad": CronDef(cron_string="*/5 * * *", handler=tick)}  # four fields
    return await init_job_processor(ctx.db, crons=crons)
