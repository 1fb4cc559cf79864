"""Crons as a user sees them: slots once across replicas, exclusive, margins, triggers, Sentry."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import pytest

from job_processor import (
    AbortSignal,
    InvalidDefinitionError,
    Job,
    JobProcessor,
    UnknownJobError,
    init_job_processor,
)

from .helpers import FAST, wait_status

SECOND = dt.timedelta(seconds=1)


async def tick(job: Job, signal: AbortSignal) -> str:
    return job.scheduled_for.isoformat()


async def make(db: Any, crons: dict[str, Any], **kw: Any) -> JobProcessor:
    return await init_job_processor(db, crons=crons, **(FAST | kw))


async def tasks(processor: JobProcessor, name: str) -> list[Job]:
    jobs = await processor.list_jobs(name, limit=1000)
    return sorted(jobs, key=lambda j: j.scheduled_for)


async def test_every_slot_runs_once_across_replicas(db: Any) -> None:
    crons = {"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.5}}
    replicas = [await make(db, crons, concurrency=2) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    await asyncio.sleep(6)
    await asyncio.gather(*(r.stop() for r in replicas))
    got = await tasks(replicas[0], "tick")
    slots = [j.scheduled_for for j in got if j.trigger == "schedule"]
    assert len(slots) >= 4
    assert len(slots) == len(set(slots))  # never twice
    assert all(b - a == SECOND for a, b in itertools.pairwise(slots))  # none missing
    finished = [j for j in got if j.status == "finished"]
    assert len(finished) >= len(got) - 1  # the last may have been interrupted by the stop
    delays = sorted((j.run_started_at - j.scheduled_for).total_seconds() for j in finished)  # type: ignore[operator]
    assert delays[len(delays) // 2] < 1.0  # starts within about a second of its slot


async def test_exclusive_cron_skips_overlaps_without_missing_the_next(db: Any) -> None:
    async def slow(job: Job, signal: AbortSignal) -> None:
        await asyncio.sleep(2.2)

    crons = {
        "slow": {
            "cron_string": "* * * * * *",
            "handler": slow,
            "concurrency": "exclusive",
            "checkin_margin": 0.5,
        }
    }
    processor = await make(db, crons, concurrency=2)
    async with processor:
        await asyncio.sleep(7)
    got = [j for j in await tasks(processor, "slow") if j.status != "running"]
    statuses = [(j.status.value, j.skip_reason) for j in got]
    assert ("skipped", "missed") not in statuses  # no false "missed"
    ran = [j for j in got if j.status in ("finished", "errored")]
    skipped = [j for j in got if j.skip_reason == "exclusive"]
    assert len(ran) >= 2
    assert skipped
    for job in skipped:
        assert job.conflicting_job_id in {r.id for r in ran} | {
            j.id for j in await tasks(processor, "slow")
        }
    # once a run ends, one of the next two slots runs: a skip never makes the next slot skip
    checked = 0
    for run in ran:
        assert run.ended_at is not None
        following = [j for j in got if j.scheduled_for >= run.ended_at][:2]
        if len(following) == 2:  # (not for the run the stop interrupted)
            assert any(j.status in ("finished", "errored") for j in following), statuses
            checked += 1
    assert checked >= 1


async def test_downtime_longer_than_the_margin_records_missed_slots(db: Any) -> None:
    crons = {"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.02}}
    first = await make(db, crons)
    async with first:
        await asyncio.sleep(2.5)
    await asyncio.sleep(4)  # all workers down for longer than the 1.2 s margin
    second = await make(db, crons)
    async with second:
        await asyncio.sleep(2.5)
    got = await tasks(second, "tick")
    missed = [j for j in got if j.skip_reason == "missed"]
    ran = [j for j in got if j.status == "finished"]
    assert len(missed) >= 2
    for job in ran:  # nothing ran late: no burst after the restart
        assert job.run_started_at - job.scheduled_for <= dt.timedelta(seconds=1.2 + 1)  # type: ignore[operator]
    slots = [j.scheduled_for for j in got]
    assert len(slots) == len(set(slots))


async def test_trigger_cron_runs_now_recorded_as_manual(db: Any) -> None:
    crons = {"daily": {"cron_string": "0 2 * * *", "handler": tick, "timezone": "Europe/Paris"}}
    processor = await make(db, crons)
    async with processor:
        job = await processor.trigger_cron("daily")
        done = await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
    assert done.type == "cron_task"
    assert done.trigger == "manual"
    with pytest.raises(UnknownJobError, match="unknown cron 'nightly'"):
        await processor.trigger_cron("nightly")


async def test_cron_max_runtime_is_enforced(db: Any) -> None:
    async def stuck(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        signal.raise_if_aborted()

    crons = {
        "stuck": {"cron_string": "0 2 * * *", "handler": stuck, "max_runtime_in_minutes": 0.01}
    }
    processor = await make(db, crons)
    async with processor:
        job = await processor.trigger_cron("stuck")
        done = await wait_status(processor, job.id, "errored")  # type: ignore[arg-type]
    assert done.error == "max runtime exceeded"


async def test_invalid_cron_fails_at_init_naming_cron_and_field(db: Any) -> None:
    with pytest.raises(InvalidDefinitionError, match=r"cron 'export': field 'cron_string'"):
        await init_job_processor(
            db, crons={"export": {"cron_string": "0 25 * * *", "handler": tick}}
        )
    with pytest.raises(InvalidDefinitionError, match=r"cron 'export': field 'timezone'"):
        await init_job_processor(
            db, crons={"export": {"cron_string": "0 2 * * *", "handler": tick, "timezone": "Paris"}}
        )
    with pytest.raises(InvalidDefinitionError, match=r"cron 'export': field 'every'.*unknown key"):
        await init_job_processor(
            db, crons={"export": {"cron_string": "0 2 * * *", "handler": tick, "every": 5}}
        )


async def test_status_lists_crons_with_next_slot_in_both_zones(db: Any) -> None:
    crons = {"daily": {"cron_string": "0 2 * * *", "handler": tick, "timezone": "Europe/Paris"}}
    processor = await make(db, crons)
    job = await processor.trigger_cron("daily")
    status = await processor.get_status()
    (entry,) = status.crons
    assert entry["name"] == "daily"
    assert entry["next_slot_local"].hour == 2
    assert entry["next_slot_local"].utcoffset() in (dt.timedelta(hours=1), dt.timedelta(hours=2))
    assert entry["next_slot_utc"] == entry["next_slot_local"]
    assert [r["id"] for r in entry["recent"]] == [job.id]


async def test_sentry_check_ins(db: Any) -> None:
    import sentry_sdk
    from sentry_sdk.transport import Transport

    envelopes: list[Any] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            envelopes.append(envelope)

    async def boom(job: Job, signal: AbortSignal) -> None:
        raise RuntimeError("export failed")

    crons = {
        "export": {
            "cron_string": "0 2 * * *",
            "handler": tick,
            "timezone": "Europe/Paris",
            "checkin_margin": 5,
            "max_runtime_in_minutes": 60,
        },
        "broken": {"cron_string": "*/5 * * * *", "handler": boom},
    }
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture)
    try:
        processor = await make(db, crons)
        ok = await processor.trigger_cron("export")
        bad = await processor.trigger_cron("broken")
        async with processor:
            await wait_status(processor, ok.id, "finished")  # type: ignore[arg-type]
            await wait_status(processor, bad.id, "errored")  # type: ignore[arg-type]
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    checkins = [
        item.payload.json for env in envelopes for item in env.items if item.type == "check_in"
    ]
    by_slug = {}
    for c in checkins:
        by_slug.setdefault(c["monitor_slug"], []).append(c)
    assert [c["status"] for c in by_slug["export"]] == ["in_progress", "ok"]
    assert [c["status"] for c in by_slug["broken"]] == ["in_progress", "error"]
    start, end = by_slug["export"]
    assert start["check_in_id"] == end["check_in_id"]
    assert start["monitor_config"] == {
        "schedule": {"type": "crontab", "value": "0 2 * * *"},
        "timezone": "Europe/Paris",
        "checkin_margin": 5,
        "max_runtime": 60,
    }
    assert end["duration"] >= 0


async def test_resumable_cron_task_pauses_resumes_and_exits_once(db: Any) -> None:
    exits: list[str] = []
    seen: list[Any] = []

    async def export(job: Job, signal: AbortSignal) -> int:
        seen.append(job.state)
        done = (job.state or {}).get("rows", 0)
        while done < 8:
            signal.raise_if_aborted()
            await asyncio.sleep(0.1)
            done += 1
            await job.checkpoint({"rows": done})
        return done

    crons = {
        "export": {
            "cron_string": "0 2 * * *",
            "handler": export,
            "resumable": True,
            "on_job_exited": lambda j: exits.append(j.status.value),
        }
    }
    first = await make(db, crons)
    await first.start()
    task = await first.trigger_cron("export")
    await asyncio.sleep(0.4)
    await first.stop()
    paused = await first.get_job(task.id)
    assert paused.status == "paused"
    assert exits == []
    second = await make(db, crons)
    async with second:
        done = await wait_status(second, task.id, "finished")  # type: ignore[arg-type]
    assert seen[1] == paused.state
    assert done.result == 8
    assert exits == ["finished"]
