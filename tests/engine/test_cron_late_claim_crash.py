"""A worker claims a cron task too late (past its check-in margin) and is SIGKILLed before it
writes the slot `skipped`/`missed`. The handler never ran (a late task "is then not run"), but
the recovery treated the claim as a crashed attempt: with attempts left the task was queued
again with `started_at` set, so the slot ran late; with none left it was recorded `errored`
instead of `missed` (an outside review's finding, failing before its fix)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from job_processor import FakeClock, init_job_processor
from job_processor.core import documents as D
from job_processor.core.definitions import CronDef
from job_processor.core.schedule import margin_of
from job_processor.ops import metrics
from tests.helpers import FAST
from tests.ops.test_metrics import samples

T0 = dt.datetime(2030, 1, 1, 2, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
ran: list[Any] = []


async def nightly(job: Any, signal: Any) -> None:
    ran.append(job.scheduled_for)


CRON = {
    "cron_string": "0 2 * * *",
    "handler": nightly,
    "checkin_margin": 5,
    "max_attempts": 2,
    "backoff": {"kind": "fixed", "base_seconds": 0.01, "jitter": False},
}


async def claimed_late_by_a_dead_worker(db: Any, spec: dict[str, Any]) -> tuple[Any, Any]:
    """The nightly cron's 02:00 task, claimed at 02:10 (past its 5-minute margin: it is not to
    run) by a worker SIGKILLed before recording it missed; a processor (not started) whose
    clock is 10 s later. Returns the processor and the task's id."""
    clock = FakeClock(T0 - MIN)
    p = await init_job_processor(db, crons={"nightly": spec}, clock=clock, **FAST)
    cron = CronDef.model_validate(spec)
    task = D.cron_task(
        "nightly",
        slot=T0,
        now=T0,
        margin=margin_of(cron),
        tag=None,
        exclusive=False,
        max_attempts=cron.attempts,
        resumable=False,
    )
    await db["job_processor_jobs"].insert_one(task)
    late = T0 + 10 * MIN
    claimed = await p.storage.jobs.claim_next(["nightly"], "dead-worker", late)
    assert claimed is not None and claimed["_id"] == task["_id"]
    clock.set(late + dt.timedelta(seconds=10))
    return p, task["_id"]


async def until_recovered(p: Any, task_id: Any) -> Any:
    """The task as stored once no longer running (a live worker's recovery took it)."""
    for _ in range(100):
        doc = await p.storage.jobs.get(task_id)
        if doc["status"] != "running":
            break
        await asyncio.sleep(0.05)
    return doc


@pytest.mark.parametrize("attempts", [1, 2])
async def test_a_task_claimed_too_late_by_a_worker_that_died_is_missed_not_run_late(
    db: Any, attempts: int
) -> None:
    ran.clear()
    p, task_id = await claimed_late_by_a_dead_worker(db, CRON | {"max_attempts": attempts})
    async with p:  # a live worker comes up later and recovers the dead worker's claim
        await until_recovered(p, task_id)
        p.clock.advance(1)  # the backoff's 10 ms pass: a retry, if there were one, would run
        for _ in range(40):
            if ran:
                break
            await asyncio.sleep(0.05)
    doc = await p.storage.jobs.get(task_id)
    assert ran == []  # never run late
    assert (doc["status"], doc.get("skip_reason")) == ("skipped", "missed")


CRON_ONCE = {"cron_string": "0 2 * * *", "handler": nightly, "checkin_margin": 5}


async def test_a_recovered_missed_slot_is_not_a_run_ended(db: Any) -> None:
    p, task_id = await claimed_late_by_a_dead_worker(db, CRON_ONCE)
    m = metrics.enable(p)
    async with p:
        doc = await until_recovered(p, task_id)
    assert (doc["status"], doc.get("skip_reason")) == ("skipped", "missed")
    got = samples((await metrics.render(m)).decode())
    missed = ("job_processor_cron_slots_total", (("name", "nightly"), ("outcome", "missed")))
    assert got[missed] == 1
    # as when the worker itself records the slot missed: a slot, not a run this process ended
    ended_skipped = ("job_processor_jobs_ended_total", (("name", "nightly"), ("status", "skipped")))
    assert got.get(ended_skipped) is None, got.get(ended_skipped)
