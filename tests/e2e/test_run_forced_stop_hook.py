"""`job-processor run`, forced stop (a second SIGTERM) while its stop waits for an exit hook it
took over from a dead owner (a background hook) that swallows its cancellation: the process
exits 130 promptly (it hung in asyncio.run's teardown; a review's finding, failing before its
fix)."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, JobProcessor, init_job_processor
from job_processor.cli import RunContext
from tests.e2e.stubborn_app import stubborn_hook
from tests.e2e.test_processes import kill_all, wait_exit
from tests.e2e.test_run_stubborn_exits import SETTINGS, _spawn
from tests.engine.test_stop_claims import _owed_by_nobody

pytestmark = pytest.mark.e2e


async def quick(job: Job, signal: AbortSignal) -> None:
    return None


HOOKED = {"hooked": JobDef(handler=quick, on_job_exited=stubborn_hook, on_job_exited_timeout=60)}


async def make_hooked(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(ctx.db, jobs=HOOKED, **SETTINGS)


async def test_forced_stop_exits_although_a_recovered_hook_swallows_cancel(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    client = await init_job_processor(db, jobs=HOOKED, worker_timeout=2.0, heartbeat_interval=0.5)
    job = await client.schedule_job(
        "hooked", scheduled_for=dt.datetime.now(dt.UTC).replace(year=2100)
    )
    await _owed_by_nobody(client, job.id)  # killed by the CLI: its hook owed by nobody
    worker = _spawn(f"{__name__}:make_hooked", mongo_url, db, tmp_path)
    try:

        async def taken_over() -> bool:
            doc = await client.storage.jobs.coll.find_one({"_id": ObjectId(job.id)})
            return doc is not None and doc.get("exit_hook_owner") is not None

        for _ in range(200):  # the worker's start-up sweep takes the hook over (background)
            if await taken_over():
                break
            await asyncio.sleep(0.1)
        assert await taken_over(), worker.output()[-3000:]
        await asyncio.sleep(0.5)
        worker.proc.send_signal(signal.SIGTERM)  # graceful: waits for the hook (60 s timeout)
        await asyncio.sleep(1.0)
        worker.proc.send_signal(signal.SIGTERM)  # the operator forces it
        code = await wait_exit(worker, timeout=10)
        assert code == 130, worker.output()[-3000:]
    finally:
        kill_all([worker])
