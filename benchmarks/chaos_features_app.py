"""The app the feature chaos run serves (`job-processor run chaos_features_app:make`): flows,
per-tenant limits, crons, serial and async subscribers, dedup keys and jobs to kill, each
handler recording its runs in `cf_runs` (start and end, by the handler itself) and what it saw
that it must never see in `cf_seen`. See chaos_features.py for the checks.

Settings from the environment: CHAOS_CONCURRENCY (slots per worker, default 4),
CHAOS_TENANT_LIMIT (runs at once per tenant, default 2), CHAOS_WORKER_TIMEOUT (seconds,
default 3)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from bson import ObjectId

from job_processor import (
    AbortSignal,
    CronDef,
    DoNotRetry,
    Event,
    Job,
    JobDef,
    JobProcessor,
    Limit,
    Subscriber,
    init_job_processor,
)
from job_processor.cli import RunContext

RUNS = "cf_runs"
"""One document per handler run: job_id, name, kind, attempt, pid, t0, t1 (time.time() at the
handler's start and end; a run of a killed process is closed by the supervisor at its exit)."""
SEEN = "cf_seen"
"""What a handler saw that a guarantee forbids (a dependency not ended, a serial predecessor
not finished)."""
HOOKS = "cf_hooks"
"""One document per on_job_exited call."""

TENANT_LIMIT = int(os.environ.get("CHAOS_TENANT_LIMIT", "2"))
SERIAL = ("s1", "s2", "s3")
_db: Any = None


@contextlib.asynccontextmanager
async def recorded(
    job_id: str, name: str, kind: str, attempt: int, **extra: Any
) -> AsyncIterator[None]:
    rec = {
        "_id": ObjectId(),
        "job_id": job_id,
        "name": name,
        "kind": kind,
        "attempt": attempt,
        "pid": os.getpid(),
        "t0": time.time(),
        **extra,
    }
    await _db[RUNS].insert_one(rec)
    outcome = "raised"
    try:
        yield
        outcome = "returned"
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        end = {"t1": time.time(), "outcome": outcome}
        await asyncio.shield(_db[RUNS].update_one({"_id": rec["_id"]}, {"$set": end}))


async def seen(what: str, **fields: Any) -> None:
    await _db[SEEN].insert_one({"what": what, "pid": os.getpid(), "at": time.time(), **fields})


async def nap(signal: AbortSignal, low: float, high: float, *, abort: bool = True) -> None:
    """Sleep, ending early (and raising, unless `abort` is false) on the abort signal."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(signal.wait(), random.uniform(low, high))
    if abort:
        signal.raise_if_aborted()


def flaky(share: float = 0.1) -> None:
    if random.random() < share:
        raise ConnectionError("flaky provider")


async def part(job: Job, signal: AbortSignal) -> int:
    async with recorded(job.id, job.name, "part", job.attempt):
        # "slow": long enough for jobs to be scheduled after it while it runs (its final
        # write then races with them)
        await nap(signal, *((0.5, 2.0) if job.payload.get("slow") else (0.05, 0.3)))
        if job.payload.get("fail"):
            raise DoNotRetry("this part fails for good")
        flaky()
        return int(job.payload["n"])


async def assemble(job: Job, signal: AbortSignal) -> int:
    """A flow's parent (or a job after it): every dependency must have ended before it runs,
    and (unless its policy is "run") finished. With "fail" it then fails for good (a deep
    flow's failure that starts mid-chain); "slow" makes it run 0.5-2 s."""
    async with recorded(job.id, job.name, "parent", job.attempt):
        deps = await job.dependencies()
        ended = {"finished", "errored", "killed", "skipped"}
        early = [d.id for d in deps if d.status.value not in ended]
        if early or len(deps) != len(job.after):
            await seen("dependency not ended", job_id=job.id, deps=early, count=len(deps))
        failed = [d.id for d in deps if d.status.value != "finished"]
        if failed and job.on_dependency_failure != "run":
            await seen("ran after a failed dependency", job_id=job.id, deps=failed)
        await nap(signal, *((0.5, 2.0) if job.payload.get("slow") else (0.05, 0.2)))
        if job.payload.get("fail"):  # a failure in the middle of a deep flow
            raise DoNotRetry("this job of a flow fails for good")
        flaky()
        return len(deps)


async def tenant_work(job: Job, signal: AbortSignal) -> None:
    async with recorded(job.id, job.name, "tenant", job.attempt, key=job.limit_key):
        # the runs of this key that have started and not ended, this one included (runs
        # starting at this moment may be missed: never more than there are)
        running = await _db[RUNS].count_documents(
            {"kind": "tenant", "key": job.limit_key, "t1": {"$exists": False}}
        )
        if running > TENANT_LIMIT:
            await seen(
                "more runs of a tenant at once than its limit",
                job_id=job.id,
                key=job.limit_key,
                running=running,
            )
        await nap(signal, 0.1, 0.6)
        flaky(0.05)


async def keyed(job: Job, signal: AbortSignal) -> None:
    async with recorded(job.id, job.name, "keyed", job.attempt, key=job.key):
        await nap(signal, 0.2, 1.2)


async def victim(job: Job, signal: AbortSignal) -> None:
    """Waits to be killed (returns after `seconds` otherwise); the resumable variant
    checkpoints. With `fail_on_kill`, a kill makes it raise an error of its own (which would
    be retried): the kill must still win."""
    async with recorded(job.id, job.name, "victim", job.attempt):
        deadline = time.monotonic() + float(job.payload.get("seconds", 15))
        step = (job.state or {}).get("step", 0)
        while time.monotonic() < deadline:
            await nap(signal, 0.2, 0.4, abort=False)
            if signal.aborted and signal.reason == "killed" and job.payload.get("fail_on_kill"):
                raise ConnectionError("failed while being killed")
            signal.raise_if_aborted()
            if job.name == "victim-r":
                step += 1
                await job.checkpoint({"step": step})


async def emitter(job: Job, signal: AbortSignal) -> str:
    """Emits an event from a worker process (which may die mid fan-out)."""
    async with recorded(job.id, job.name, "emitter", job.attempt):
        assert job.processor is not None
        event = await job.processor.emit("order", {"from_job": job.id}, key=f"job-{job.id}")
        await nap(signal, 0.0, 0.1)
        return event.id


async def subscriber(event: Event, signal: AbortSignal) -> None:
    delivery = event.delivery
    assert delivery is not None and delivery.job_id is not None
    target = delivery.target
    async with recorded(
        delivery.job_id,
        f"order:{target}",
        "sub",
        delivery.attempt,
        event_id=event.id,
        target=target,
    ):
        if target in SERIAL[1:]:
            before = SERIAL[SERIAL.index(target) - 1]
            prev = await _db["job_processor_jobs"].find_one(
                {"event_id": event.id, "payload.target": before, "payload.replay_id": None},
                {"status": 1},
            )
            if prev is None or prev.get("status") != "finished":
                await seen(
                    "serial subscriber ran before its predecessor finished",
                    job_id=delivery.job_id,
                    event_id=event.id,
                    target=target,
                    before=(prev or {}).get("status"),
                )
        await nap(signal, 0.02, 0.2)
        if event.payload.get("fail_at") == target:
            raise DoNotRetry("this subscriber fails for good: the chain stops")
        flaky()


async def tick(job: Job, signal: AbortSignal) -> None:
    async with recorded(job.id, job.name, "cron", job.attempt, slot=job.scheduled_for):
        await nap(signal, 0.01, 0.1)


async def exclusive_tick(job: Job, signal: AbortSignal) -> None:
    async with recorded(job.id, job.name, "cron", job.attempt, slot=job.scheduled_for):
        await nap(signal, 0.5, 3.0)


async def record_exit(job: Job) -> None:
    await _db[HOOKS].insert_one({"job_id": job.id, "status": job.status.value, "pid": os.getpid()})


FIXED = {"kind": "fixed", "base_seconds": 0.2, "jitter": False}
TENANT = Limit(key="tenant:{tenant}", concurrency=TENANT_LIMIT)


def _job(handler: Any, **kw: Any) -> JobDef:
    return JobDef(
        handler=handler,
        on_job_exited=record_exit,
        on_job_exited_timeout=3,
        max_attempts=kw.pop("max_attempts", 20),
        backoff=FIXED,
        **kw,
    )


JOBS = {
    "part": _job(part),
    "assemble": _job(assemble),
    "tenant-work": _job(tenant_work, limit=TENANT),
    "keyed": _job(keyed),
    "victim": _job(victim),
    "victim-r": _job(victim, resumable=True),
    "emitter": _job(emitter),
}

CRONS = {
    "tick": CronDef(
        cron_string="* * * * * *",
        handler=tick,
        on_job_exited=record_exit,
        checkin_margin=0.1,
        max_attempts=20,
        backoff=FIXED,
    ),
    "exclusive-tick": CronDef(
        cron_string="*/2 * * * * *",
        handler=exclusive_tick,
        on_job_exited=record_exit,
        checkin_margin=0.1,
        concurrency="exclusive",
        max_attempts=20,
        backoff=FIXED,
    ),
}

SUBSCRIBERS = {
    "order": [
        *(
            Subscriber(name, handler=subscriber, mode="serial", max_attempts=20, backoff=FIXED)
            for name in SERIAL
        ),
        Subscriber("audit", handler=subscriber, max_attempts=20, backoff=FIXED),
    ],
    "payment": [
        Subscriber("ledger", handler=subscriber, mode="sync", max_attempts=20, backoff=FIXED)
    ],
}


async def open_processor(db: Any, logger: Any = None, subscribers: bool = True) -> JobProcessor:
    """The workers' processor; with `subscribers=False`, a producer's that declares none (as a
    web app: it emits through the registry, and kills deliveries it does not declare)."""
    global _db
    _db = db
    return await init_job_processor(
        db,
        logger=logger,
        jobs=JOBS,
        crons=CRONS,
        subscribers=SUBSCRIBERS if subscribers else None,
        concurrency=int(os.environ.get("CHAOS_CONCURRENCY", "4")),
        poll_interval=0.3,
        heartbeat_interval=0.5,
        worker_timeout=float(os.environ.get("CHAOS_WORKER_TIMEOUT", "3.0")),
        shutdown_grace=1.0,
        keep_finished=True,
        keep_failed=True,
    )


async def make(ctx: RunContext) -> JobProcessor:
    return await open_processor(ctx.db)
