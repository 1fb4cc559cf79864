"""The app the end-to-end tests serve with `job-processor run tests.e2e.app:make`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from job_processor import (
    AbortSignal,
    DoNotRetry,
    Job,
    JobDef,
    JobProcessor,
    init_job_processor,
)
from job_processor.cli import RunContext
from job_processor.core.definitions import Limit

if os.environ.get("E2E_IMPORTED"):  # a test waits for this: the app imported, the run begins
    with open(os.environ["E2E_IMPORTED"], "w") as marker:
        marker.write(str(os.getpid()))


def me() -> dict[str, Any]:
    return {"instance_id": os.environ.get("INSTANCE_ID"), "pid": os.getpid()}


async def report(job: Job, signal: AbortSignal) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return me()


async def long_resumable(job: Job, signal: AbortSignal) -> dict[str, Any]:
    step = start = (job.state or {}).get("step", 0)
    while step < job.payload["steps"]:
        signal.raise_if_aborted()
        await asyncio.sleep(0.1)
        step += 1
        await job.checkpoint({"step": step})
    return me() | {"resumed_from": start}


async def long_plain(job: Job, signal: AbortSignal) -> None:
    await signal.wait()
    signal.raise_if_aborted()


def record_exit(job: Job) -> None:
    """Appends one line per call to $E2E_HOOK_LOG; hangs in the replica named by
    $E2E_HOOK_HANG_ON (the test SIGKILLs it there, mid-hook)."""
    log = os.environ.get("E2E_HOOK_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{job.id} {job.status.value} {os.environ.get('INSTANCE_ID')}\n")
    if os.environ.get("E2E_HOOK_HANG_ON") == os.environ.get("INSTANCE_ID"):
        import time

        time.sleep(60)


async def provider_call(job: Job, signal: AbortSignal) -> dict[str, Any]:
    """Times measured by the handler itself (wall clock, shared by the processes here)."""
    import time

    t0 = time.time()
    await asyncio.sleep(job.payload.get("seconds", 0.15))
    return me() | {"t0": t0, "t1": time.time()}


PROVIDER = Limit(key="provider", concurrency=3)
API = Limit(key="api", rate=5, per_seconds=1)

JOBS = {
    "limited": JobDef(handler=provider_call, limit=PROVIDER),
    "rated": JobDef(handler=provider_call, limit=API),
    "hooked": JobDef(handler=report, on_job_exited=record_exit, on_job_exited_timeout=2),
    "main-report": JobDef(handler=report, tag="main"),
    "anywhere": JobDef(handler=report),
    "long-resumable": JobDef(handler=long_resumable, resumable=True),
    "long-plain": JobDef(handler=long_plain),
}


async def tick(job: Job, signal: AbortSignal) -> dict[str, Any]:
    return me()


CRONS = {"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.5}}


async def make(ctx: RunContext) -> JobProcessor:
    # the README's rule: runner-1 runs the "main" jobs, the other replicas the rest
    tags = ctx.worker_tags or (["main"] if ctx.instance_id == "runner-1" else ["secondary"])
    return await init_job_processor(
        ctx.db,
        jobs=JOBS,
        crons=CRONS if os.environ.get("E2E_CRON") else {},
        worker_tags=tags,
        concurrency=int(os.environ.get("E2E_CONCURRENCY", "2")),
        poll_interval=0.2,
        heartbeat_interval=0.5,
        # short, so that crash tests recover quickly; a test under heavy load raises it
        worker_timeout=float(os.environ.get("E2E_WORKER_TIMEOUT", "2.0")),
        shutdown_grace=1.0,
    )


async def chatty(job: Job, signal: AbortSignal) -> dict[str, Any]:
    """Reports progress and logs a line every 50 ms (no checkpoint): its notes are written
    coalesced, about once a second."""
    steps = job.payload.get("steps", 100)
    for step in range(1, steps + 1):
        signal.raise_if_aborted()
        await job.report_progress(step, steps, f"step {step}")
        job.log("step done", step=step, instance_id=os.environ.get("INSTANCE_ID"))
        await asyncio.sleep(0.05)
    return me()


async def refuse(job: Job, signal: AbortSignal) -> None:
    raise DoNotRetry(f"refused {job.payload.get('what', 'it')}")


def stuck_plain(job: Job, signal: AbortSignal) -> None:
    """A plain def that ignores its abort signal and never returns (a thread cannot be
    cancelled): the worker must still stop, and its process exit, after the grace period."""
    import threading

    threading.Event().wait()


JOBS["refused"] = JobDef(handler=refuse)
JOBS["long-hooked"] = JobDef(handler=long_plain, on_job_exited=record_exit, on_job_exited_timeout=8)
JOBS["stuck-plain"] = JobDef(handler=stuck_plain)
JOBS["chatty"] = JobDef(handler=chatty, max_attempts=2)


async def tenant_work(job: Job, signal: AbortSignal) -> dict[str, Any]:
    """Times measured by the handler itself, with its tenant."""
    import time

    t0 = time.time()
    await asyncio.sleep(job.payload.get("seconds", 0.3))
    return me() | {"tenant": job.payload["tenant"], "t0": t0, "t1": time.time()}


PER_TENANT = Limit(key="tenant:{tenant}", concurrency=4)
JOBS["tenant-work"] = JobDef(handler=tenant_work, limit=PER_TENANT)
