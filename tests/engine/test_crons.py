"""Crons as a user sees them: slots once across replicas, exclusive, margins, triggers, Sentry."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from job_processor import (
    AbortSignal,
    FakeClock,
    InvalidDefinitionError,
    Job,
    JobDef,
    JobProcessor,
    JobStatus,
    UnknownJobError,
    init_job_processor,
)
from job_processor.ops import metrics
from job_processor.ops.admin import Admin
from tests.helpers import FAST, wait_status

SECOND = dt.timedelta(seconds=1)


async def tick(job: Job, signal: AbortSignal) -> str:
    return job.scheduled_for.isoformat()


async def make(db: Any, crons: dict[str, Any], **kw: Any) -> JobProcessor:
    return await init_job_processor(db, crons=crons, **(FAST | kw))


async def tasks(processor: JobProcessor, name: str) -> list[Job]:
    jobs = await processor.list_jobs(name, limit=1000)
    return sorted(jobs, key=lambda j: j.scheduled_for)


T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def until(predicate: Any, timeout: float = 10) -> Any:
    """Wait (real time) until `await predicate()` is truthy; return its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return value


async def slot_done(processor: JobProcessor, name: str, slot: dt.datetime, *statuses: str) -> Any:
    async def done() -> Any:
        got = [j for j in await tasks(processor, name) if j.scheduled_for == slot]
        return got if got and all(j.status in statuses for j in got) else None

    return await until(done)


async def test_every_slot_runs_once_across_replicas(db: Any) -> None:
    clock = FakeClock(T0)
    crons = {"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.5}}
    replicas = [await make(db, crons, concurrency=2, clock=clock) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        for i in range(1, 7):
            clock.set(T0 + i * SECOND)  # every replica's scheduler sees the slot come
            await slot_done(replicas[0], "tick", T0 + i * SECOND, "finished")
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
    got = await tasks(replicas[0], "tick")
    slots = [j.scheduled_for for j in got]
    assert slots == [T0 + i * SECOND for i in range(1, 7)]  # each once, none missing
    assert all(j.status == "finished" and j.trigger == "schedule" for j in got)
    assert all(j.run_started_at == j.scheduled_for for j in got)  # started at its slot


def exclusive_every_second(release: asyncio.Event, margin: float) -> dict[str, Any]:
    """An exclusive every-second cron whose runs last until `release` is set."""

    async def runs_until_released(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    return {
        "cron_string": "* * * * * *",
        "handler": runs_until_released,
        "concurrency": "exclusive",
        "checkin_margin": margin,
    }


async def test_exclusive_cron_skips_overlaps_without_missing_the_next(db: Any) -> None:
    import sentry_sdk

    release = asyncio.Event()
    clock = FakeClock(T0)
    crons = {"slow": exclusive_every_second(release, margin=0.5)}
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, concurrency=2, clock=clock)
        async with processor:
            clock.set(T0 + SECOND)
            await slot_done(processor, "slow", T0 + SECOND, "running")
            for i in (2, 3):  # the first run still holds the name: these slots are skipped
                clock.set(T0 + i * SECOND)
                await slot_done(processor, "slow", T0 + i * SECOND, "skipped")
            release.set()
            await slot_done(processor, "slow", T0 + SECOND, "finished")
            clock.set(T0 + 4 * SECOND)  # the very next slot runs: a skip never cascades
            await slot_done(processor, "slow", T0 + 4 * SECOND, "finished")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    got = await tasks(processor, "slow")
    first = got[0]
    assert [(j.status.value, j.skip_reason) for j in got] == [
        ("finished", None),
        ("skipped", "exclusive"),
        ("skipped", "exclusive"),
        ("finished", None),
    ]
    assert {j.conflicting_job_id for j in got[1:3]} == {first.id}
    # skipping behind a job that is running is fine for monitoring
    assert [c["status"] for c in checkins if c["monitor_slug"] == "slow"] == [
        "in_progress",
        "ok",
        "ok",
        "ok",
        "in_progress",
        "ok",
    ]


async def test_an_exclusive_crons_catch_up_runs_the_oldest_late_slot_and_stays_green(
    db: Any,
) -> None:
    """After a downtime the late slots within the margin are due at once; an exclusive cron
    runs them one at a time: the oldest now, the later ones skipped behind it, with `ok`
    check-ins (nothing is stuck: their holder is a slot of the same catch-up, whichever
    replica created it), and they do not count as slots a long run made skip."""
    import sentry_sdk

    release = asyncio.Event()
    clock = FakeClock(T0)
    crons = {"slow": exclusive_every_second(release, margin=5)}
    checkins = capture_checkins(sentry_sdk)
    try:
        replicas = [await make(db, crons, clock=clock) for _ in range(2)]
        processor = replicas[0]
        await asyncio.gather(*(r.start() for r in replicas))
        try:
            clock.set(T0 + 4 * SECOND)  # slots 1 to 4 are due at once, on both replicas
            await slot_done(processor, "slow", T0 + SECOND, "running")
            for i in (2, 3, 4):
                await slot_done(processor, "slow", T0 + i * SECOND, "skipped")
            clock.set(T0 + 5 * SECOND)  # on time, the run still going: one skip of a long run
            await slot_done(processor, "slow", T0 + 5 * SECOND, "skipped")
            release.set()
            await slot_done(processor, "slow", T0 + SECOND, "finished")
        finally:
            await asyncio.gather(*(r.stop() for r in replicas))
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    got = await tasks(processor, "slow")
    assert [(j.status.value, j.skip_reason) for j in got] == [
        ("finished", None),
        ("skipped", "exclusive"),
        ("skipped", "exclusive"),
        ("skipped", "exclusive"),
        ("skipped", "exclusive"),
    ]
    assert "error" not in [c["status"] for c in checkins if c["monitor_slug"] == "slow"]


async def test_an_exclusive_crons_catch_up_runs_when_a_busy_worker_frees_up_in_its_margin(
    db: Any,
) -> None:
    """The oldest late slot of an exclusive cron's catch-up stands for the later ones (skipped
    behind it): it may start until the last late slot's margin ends. Its own deadline (its
    slot plus the margin, the nearest of the catch-up) passed while the only worker was busy:
    it was recorded missed, and nothing of the catch-up ran, although the later slots it had
    made skip were still within their margin."""
    minute = 60 * SECOND
    release = asyncio.Event()

    async def busy(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    clock = FakeClock(T0)
    crons = {"sync": {"cron_string": "* * * * *", "handler": tick, "concurrency": "exclusive"}}
    processor = await make(
        db,
        crons,
        jobs={"busy": JobDef(handler=busy)},
        clock=clock,
        concurrency=1,
        worker_timeout=3600,
    )
    async with processor:
        blocker = await processor.schedule_job("busy")
        await wait_status(processor, blocker.id, JobStatus.RUNNING)
        clock.set(T0 + 5 * minute + 30 * SECOND)  # slots 1 to 5 are late (margin: 5 minutes)
        await slot_done(processor, "sync", T0 + 5 * minute, "skipped")
        clock.set(T0 + 6 * minute + 30 * SECOND)  # past slot 1's own margin, the worker busy
        await slot_done(processor, "sync", T0 + 6 * minute, "skipped")
        oldest = (await tasks(processor, "sync"))[0]
        assert (oldest.scheduled_for, oldest.status) == (T0 + minute, "pending")
        assert oldest.start_deadline == T0 + 10 * minute  # slot 5's: the catch-up's last
        release.set()  # the worker frees up within the catch-up's margin: it runs
        await slot_done(processor, "sync", T0 + minute, "finished")
    got = await tasks(processor, "sync")
    assert [(j.status.value, j.skip_reason) for j in got] == [
        ("finished", None),
        *[("skipped", "exclusive")] * 5,
    ]
    assert {j.conflicting_job_id for j in got[1:]} == {got[0].id}


async def three_skips(processor: JobProcessor, clock: FakeClock, first: str) -> Any:
    """Slot 1 of cron "report" ends up `first`; slots 2 to 4 are skipped behind it. Returns
    get_status() then."""
    clock.set(T0 + SECOND)
    await slot_done(processor, "report", T0 + SECOND, first)
    for i in (2, 3, 4):
        clock.set(T0 + i * SECOND)
        await slot_done(processor, "report", T0 + i * SECOND, "skipped")
    return await processor.get_status()


def exclusive_cron_nobody_serves() -> dict[str, Any]:
    """An exclusive cron every second tagged "main", for a processor whose workers serve
    another tag: its task stays pending, and the next slots are skipped behind it."""
    return {
        "report": {
            "cron_string": "* * * * * *",
            "handler": tick,
            "concurrency": "exclusive",
            "tag": "main",  # no worker here serves "main": its task stays pending
            "checkin_margin": 1,
        }
    }


async def test_exclusive_cron_stuck_behind_a_job_nobody_runs_turns_monitoring_red(
    db: Any,
) -> None:
    import sentry_sdk

    clock = FakeClock(T0)
    crons = exclusive_cron_nobody_serves()
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, clock=clock, worker_tags=["secondary"])
        async with processor:
            status = await three_skips(processor, clock, "pending")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert [c["status"] for c in checkins] == ["error", "error", "error"]
    (stuck,) = [w for w in status.warnings if "skipped behind" in w]
    assert stuck.startswith("cron 'report': its last 3 slots were skipped behind job")
    assert "pending, not running" in stuck
    (unserved,) = [w for w in status.warnings if "no live worker can run it" in w]
    assert unserved.startswith("cron 'report' (tag 'main')")


async def test_exclusive_cron_behind_a_run_that_lasts_three_slots_turns_monitoring_red(
    db: Any,
) -> None:
    """A long run is fine for a slot or two; a run that makes three slots in a row skip looks
    hung (nothing new has run): the check-in turns red and status says which job."""
    import sentry_sdk

    release = asyncio.Event()
    clock = FakeClock(T0)
    crons = {"report": exclusive_every_second(release, margin=1)}
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, clock=clock)
        m = metrics.enable(processor)
        async with processor:
            status = await three_skips(processor, clock, "running")
            release.set()
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert [c["status"] for c in checkins][:4] == ["in_progress", "ok", "ok", "error"]
    assert m.cron_slots.labels("report", "skipped")._value.get() == 3
    (hung,) = [w for w in status.warnings if "skipped behind" in w]
    assert hung.startswith("cron 'report': its last 3 slots were skipped behind job")
    assert "a long run or a hung one" in hung


async def test_downtime_longer_than_the_margin_records_missed_slots(db: Any) -> None:
    clock = FakeClock(T0)
    crons = {"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.02}}
    first = await make(db, crons, clock=clock)
    async with first:
        for i in (1, 2):
            clock.set(T0 + i * SECOND)
            await slot_done(first, "tick", T0 + i * SECOND, "finished")
    clock.set(T0 + 6 * SECOND)  # every worker down for longer than the 1.2 s margin
    second = await make(db, crons, clock=clock)
    m = metrics.enable(second)
    async with second:
        await slot_done(second, "tick", T0 + 6 * SECOND, "finished")
    assert m.cron_slots.labels("tick", "missed")._value.get() == 2
    (shown,) = [c for c in await Admin(db).list_crons() if c.name == "tick"]
    assert shown.missed_recent == 2  # the crons page's "missed" column
    got = {j.scheduled_for: j for j in await tasks(second, "tick")}
    assert sorted(got) == [T0 + i * SECOND for i in range(1, 7)]  # each slot recorded once
    outcome = {(t - T0).seconds: (j.status.value, j.skip_reason) for t, j in got.items()}
    assert outcome == {
        1: ("finished", None),
        2: ("finished", None),
        3: ("skipped", "missed"),  # 3 s late: past the margin, never run late
        4: ("skipped", "missed"),
        5: ("finished", None),  # 1 s late: within the margin, runs late
        6: ("finished", None),
    }


async def test_cron_tasks_are_retried_with_the_crons_attempts_and_backoff(db: Any) -> None:
    """...and each attempt closes its own Sentry check-in (the failed one with `error`)."""
    import sentry_sdk

    calls: list[int] = []

    async def flaky(job: Job, signal: AbortSignal) -> str:
        calls.append(job.failures)
        if job.failures == 0:
            raise ConnectionError("provider down")
        return "ok"

    clock = FakeClock(T0)
    crons = {
        "sync": {
            "cron_string": "0 2 * * *",
            "handler": flaky,
            "max_attempts": 2,
            # (a fake-clock jump longer than worker_timeout would declare the worker dead)
            "backoff": {"kind": "fixed", "base_seconds": 1.5, "jitter": False},
        }
    }
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, clock=clock)
        async with processor:
            job = await processor.trigger_cron("sync")

            async def retried() -> Job | None:
                current = await processor.get_job(job.id)
                return current if current.failures == 1 and current.status == "pending" else None

            retry = await until(retried)
            assert retry.scheduled_for == T0 + 1.5 * SECOND
            clock.set(T0 + 1.5 * SECOND)
            done = await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert calls == [0, 1]
    assert done.max_attempts == 2
    statuses = [c["status"] for c in checkins if c["monitor_slug"] == "sync"]
    assert statuses == ["in_progress", "error", "in_progress", "ok"]


async def test_crons_are_pruned_only_when_asked(db: Any) -> None:
    both = {
        "a": {"cron_string": "0 2 * * *", "handler": tick},
        "b": {"cron_string": "0 3 * * *", "handler": tick},
    }
    await make(db, both)
    # an old replica (or the CLI's factory) that only knows "a" starts: "b" must survive
    old = await make(db, {"a": both["a"]})
    assert [c["name"] for c in (await old.get_status()).crons] == ["a"]  # it reports its own...
    assert {d["_id"] for d in await old.storage.crons.docs()} == {"a", "b"}  # ...and kept b
    assert await old.prune_crons() == ["b"]
    assert {d["_id"] for d in await old.storage.crons.docs()} == {"a"}


async def test_a_prune_an_outage_stops_finishes_when_called_again(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune_crons removed the crons, then MongoDB stopped answering before their pending
    tasks were deleted: called again it found nothing to prune, and the tasks stayed pending
    for ever. Their tasks go first: called again, it finishes."""
    both = {
        "a": {"cron_string": "0 2 * * *", "handler": tick},
        "b": {"cron_string": "0 3 * * *", "handler": tick},
    }
    task = await (await make(db, both)).trigger_cron("b")  # pending: no worker runs it
    old = await make(db, {"a": both["a"]})
    real = old.storage.jobs.delete_pending_tasks_of

    async def outage(names: list[str], now: dt.datetime) -> int:
        raise AutoReconnect("connection reset (test)")

    monkeypatch.setattr(old.storage.jobs, "delete_pending_tasks_of", outage)
    with pytest.raises(AutoReconnect):
        await old.prune_crons()
    monkeypatch.setattr(old.storage.jobs, "delete_pending_tasks_of", real)
    assert await old.prune_crons() == ["b"]
    assert await old.get_jobs([task.id]) == []


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


def capture_checkins(sentry_sdk: Any) -> list[dict[str, Any]]:
    """Initialise Sentry with a transport that keeps the check-ins it would send."""
    from sentry_sdk.transport import Transport

    checkins: list[dict[str, Any]] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            checkins.extend(i.payload.json for i in envelope.items if i.type == "check_in")

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture)
    return checkins


async def test_sentry_check_ins(db: Any) -> None:
    import sentry_sdk

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
    checkins = capture_checkins(sentry_sdk)
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
    by_slug: dict[str, list[dict[str, Any]]] = {}
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


@pytest.mark.parametrize("back_at", [11 * 60, 11 * 60 + 30], ids=["at-a-slot", "between-slots"])
async def test_an_every_minute_cron_back_from_downtime_runs_at_most_5_late(
    db: Any, back_at: int
) -> None:
    """crons.md: with the default 5-minute margin, a cron every minute whose workers were down
    runs at most 5 late slots at once (the oldest exactly 5 minutes late), then the on-time
    ones; the older slots are recorded missed."""
    minute = 60 * SECOND
    clock = FakeClock(T0)
    crons = {"tick": {"cron_string": "* * * * *", "handler": tick}}
    first = await make(db, crons, clock=clock, worker_timeout=3600)
    async with first:
        clock.set(T0 + minute)
        await slot_done(first, "tick", T0 + minute, "finished")
    back = T0 + back_at * SECOND  # down since just after the slot of T0 + 1 min
    clock.set(back)
    second = await make(db, crons, clock=clock, worker_timeout=3600)
    async with second:
        await slot_done(second, "tick", T0 + 11 * minute, "finished")
        ran = [j for j in await tasks(second, "tick") if j.status == "finished"]
        late = [
            j for j in ran if j.run_started_at is not None and j.run_started_at > j.scheduled_for
        ]
        assert len(late) == 5  # the slots of the last 5 minutes, at once
        assert all(j.run_started_at == back for j in ran[1:])
        assert max(back - j.scheduled_for for j in late) <= 5 * minute
        clock.set(T0 + 12 * minute)  # then on time
        await slot_done(second, "tick", T0 + 12 * minute, "finished")
    got = {int((j.scheduled_for - T0) / minute): j for j in await tasks(second, "tick")}
    assert sorted(got) == list(range(1, 13))  # every slot recorded once
    first_late = back_at // 60 - 5 if back_at % 60 == 0 else back_at // 60 - 4
    for n, j in got.items():
        if n == 1 or n >= first_late:
            assert (j.status, j.skip_reason) == ("finished", None), n
        else:
            assert (j.status, j.skip_reason) == ("skipped", "missed"), n
    on_time = [n for n, j in got.items() if j.run_started_at == j.scheduled_for]
    assert on_time == ([1, 11, 12] if back_at % 60 == 0 else [1, 12])


async def test_a_cron_task_interrupted_by_a_shutdown_sends_no_error_check_in(db: Any) -> None:
    """A deploy stops the worker mid-run: the task is pending again with no attempt used, and
    its monitor does not turn red (as for a pause); the next run sends its own check-ins."""
    import sentry_sdk

    async def long_export(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        signal.raise_if_aborted()

    crons = {"export": {"cron_string": "0 2 * * *", "handler": long_export}}
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, shutdown_grace=0.2)
        async with processor:
            task = await processor.trigger_cron("export")
            await wait_status(processor, task.id, "running")  # type: ignore[arg-type]
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    again = await processor.get_job(task.id)
    assert again.status == "pending" and again.failures == 0
    assert [c["status"] for c in checkins if c["monitor_slug"] == "export"] == ["in_progress"]


async def test_a_cron_task_claimed_but_never_run_is_still_missed_once_past_its_margin(
    db: Any,
) -> None:
    """A claim whose reply was lost (or made by a worker being declared dead) is re-queued as
    it was: attempt back to 0, never started. So the task is still "never run late": the
    missed-task pass records it skipped once past its margin, and a claim after the margin
    skips it too. (It used to be left started, attempt 1: run whenever a worker was free.)"""
    from job_processor.core import documents as D
    from job_processor.core.outcome import Ending, Policy, RunEnd, decide
    from job_processor.engine.execution import claimed_too_late

    storage = (await make(db, {})).storage  # not started: the test makes each write
    slot = T0
    task = D.cron_task(
        "tick", slot=slot, now=slot, margin=dt.timedelta(minutes=5), tag=None,
        exclusive=False, max_attempts=1, resumable=False,
    )  # fmt: skip
    await storage.jobs.insert(task)
    update = D.claim_update("w-gone", slot + dt.timedelta(seconds=1))
    await storage.jobs.coll.update_one({"_id": task["_id"]}, update)
    claimed = D.applied(task, update)
    later = slot + dt.timedelta(seconds=40)
    outcome = decide(claimed, Policy(), RunEnd(Ending.UNSTARTED, error="lost: not run"), later)
    res = await storage.jobs.coll.update_one(
        D.end_filter(claimed, outcome),
        D.end_update(claimed, outcome, later, end_id="e1", writer="w"),
    )
    assert res.modified_count == 1
    requeued = await storage.jobs.coll.find_one({"_id": task["_id"]})
    assert requeued["status"] == "pending" and requeued["attempt"] == 0
    assert requeued.get("started_at") is None
    assert claimed_too_late(requeued, slot + dt.timedelta(minutes=6))
    assert await storage.jobs.expire_missed_cron_tasks(slot + dt.timedelta(minutes=6)) == 1
    missed = await storage.jobs.coll.find_one({"_id": task["_id"]})
    assert missed["status"] == "skipped" and missed["skip_reason"] == "missed"


async def test_a_replica_with_the_old_definition_follows_the_schedule_a_new_one_registered(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy changes `*/5 * * * *` to `0 * * * *`: the new replica registers it
    (rescheduled from now); the old one, still running, follows the stored schedule (it used
    to fire its own slots, every 5 minutes, beside the new ones) and says so once."""
    from job_processor import FakeClock

    async def tick(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    logger = logging.getLogger("test.crons.rolling")
    crons = {"c": {"cron_string": "*/5 * * * *", "handler": tick}}
    old = await make(db, crons, clock=clock, logger=logger)
    new = await make(db, {"c": {"cron_string": "0 * * * *", "handler": tick}}, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.crons.rolling"):
        for minute in range(121):
            clock.set(T0 + dt.timedelta(minutes=minute))
            await old.scheduler.tick()  # the old replica first: it would win each advance
            await new.scheduler.tick()
    slots = [t.scheduled_for for t in await tasks(old, "c")]
    assert slots == [T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2)]
    said = [r for r in caplog.records if r.__dict__.get("event") == "cron_definition_differs"]
    assert len(said) == 1


async def test_a_stored_schedule_this_process_cannot_evaluate_is_not_followed(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process registered a schedule this one cannot evaluate (a time zone its tzdata
    lacks): the scheduler used to raise out of its loop and stop the processor. It leaves the
    cron to the replicas that can (it fires neither schedule's slots, which would run beside
    theirs), says so once, as an error, and does not spin on the due slot."""
    from job_processor import FakeClock

    async def tick(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    logger = logging.getLogger("test.crons.unusable")
    p = await make(
        db, {"c": {"cron_string": "0 * * * *", "handler": tick}}, clock=clock, logger=logger
    )
    await db["job_processor_crons"].update_one(
        {"_id": "c"}, {"$set": {"cron_string": "*/5 * * * *", "timezone": "Mars/Olympus_Mons"}}
    )
    with caplog.at_level(logging.WARNING, logger="test.crons.unusable"):
        for minute in range(121):
            clock.set(T0 + dt.timedelta(minutes=minute))
            delay = await p.scheduler.tick()
            assert minute < 60 or delay > 0  # due, left alone: no busy loop
    assert await tasks(p, "c") == []
    stored = await db["job_processor_crons"].find_one({"_id": "c"})
    assert stored["next_slot"].replace(tzinfo=dt.UTC) == T0 + dt.timedelta(hours=1)  # as it was
    said = [r for r in caplog.records if r.__dict__.get("event") == "cron_stored_schedule_unusable"]
    assert len(said) == 1
    assert not [r for r in caplog.records if r.__dict__.get("event") == "cron_definition_differs"]


async def test_a_cron_whose_minute_is_a_one_value_range_fires_once_an_hour(db: Any) -> None:
    """'5-5 * * * *' is minute 5 of each hour: it created a task every minute."""
    clock = FakeClock(T0)
    p = await make(db, {"c": {"cron_string": "5-5 * * * *", "handler": tick}}, clock=clock)
    for minute in range(121):  # two hours, minute by minute
        clock.set(T0 + dt.timedelta(minutes=minute))
        await p.scheduler.tick()
    slots = [t.scheduled_for for t in await tasks(p, "c")]
    assert slots == [T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(hours=1, minutes=5)]


def test_sentrys_monitor_config_declares_the_schedule_that_runs() -> None:
    """Sentry computes a crontab monitor's expected check-ins with croniter, which reads
    '5-5' as '*': the monitor for '5-5 * * * *' expected a check-in every minute while the
    cron runs hourly (59 missed check-ins an hour). The value sent reads as what runs."""
    from croniter import croniter

    from job_processor import CronDef
    from job_processor.core.schedule import Schedule
    from job_processor.engine.sentry import monitor_config

    cron = CronDef(cron_string="5-5 * * * *", handler=tick)
    config = monitor_config(cron)
    assert config is not None
    sent = croniter(config["schedule"]["value"], T0.replace(tzinfo=None))
    declared = [sent.get_next(dt.datetime) for _ in range(3)]
    ours, t = [], T0
    for _ in range(3):
        t = Schedule(cron.cron_string).next_after(t)
        ours.append(t.replace(tzinfo=None))
    assert declared == ours


async def test_manual_triggers_skipped_behind_a_long_run_are_not_slots_in_a_row(db: Any) -> None:
    """'The third slot in a row skipped behind the same running task sends error', and
    get_status() warns once the last three slots were. Two "Trigger now" refused behind a
    run, then one scheduled slot skipped, is one slot: ok, and no warning (an outside hunt
    found error and the warning)."""
    import sentry_sdk

    release = asyncio.Event()
    clock = FakeClock(T0)
    crons = {"report": exclusive_every_second(release, margin=1)}
    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make(db, crons, clock=clock)
        async with processor:
            clock.set(T0 + SECOND)
            await slot_done(processor, "report", T0 + SECOND, "running")
            clock.set(T0 + 1.5 * SECOND)  # while slot 1 runs, an operator clicks twice
            for _ in range(2):
                assert (await processor.trigger_cron("report")).status == "skipped"
            clock.set(T0 + 2 * SECOND)  # the first scheduled slot skipped behind the run
            await slot_done(processor, "report", T0 + 2 * SECOND, "skipped")
            status = await processor.get_status()
            release.set()
            await slot_done(processor, "report", T0 + SECOND, "finished")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert [c["status"] for c in checkins][:2] == ["in_progress", "ok"]
    assert not [w for w in status.warnings if "skipped behind" in w], status.warnings


async def test_scheduling_a_cron_name_as_a_job_says_it_is_a_cron(db: Any) -> None:
    """schedule_job / run_job on a cron's name said "unknown job: add it to
    init_job_processor(jobs={...})", a fix init then refuses (a name is a job or a cron)."""
    from job_processor import InvalidArgumentError

    processor = await make(db, {"daily": {"cron_string": "0 2 * * *", "handler": tick}})
    for call in (processor.schedule_job, processor.run_job):
        with pytest.raises(
            InvalidArgumentError, match=r"'daily' is a cron, not a job: .*trigger_cron\('daily'\)"
        ):
            await call("daily", {})


async def test_stuck_exclusive_cron_of_a_paused_name_says_resume_not_serve_its_tag(
    db: Any,
) -> None:
    """An exclusive cron whose name is paused (`names pause`): its task stays pending and the
    next slots skip behind it. A live worker serves its tag; what unblocks it is a resume
    (the warning sent the operator to start a worker for the tag)."""
    clock = FakeClock(T0)
    crons = {
        "report": {
            "cron_string": "* * * * * *",
            "handler": tick,
            "concurrency": "exclusive",
            "checkin_margin": 1,
        }
    }
    processor = await make(db, crons, clock=clock)
    await Admin(db, clock=clock).pause("report")
    async with processor:
        status = await three_skips(processor, clock, "pending")
    assert not [w for w in status.warnings if "no live worker can run it" in w]  # served
    (stuck,) = [w for w in status.warnings if "skipped behind" in w]
    assert "start a worker that serves its tag" not in stuck, stuck
    assert "job-processor names resume report" in stuck, stuck


async def test_a_cron_task_recovered_after_its_worker_crashed_closes_its_check_in(db: Any) -> None:
    """crons.md: each attempt of a cron task sends in_progress at its start and ok / error at
    its end. An attempt whose worker died (recovered as a failed attempt) never sent its end."""
    crons = {"export": {"cron_string": "0 2 * * *", "handler": tick}}
    done, statuses = await recovered_checkins(
        lambda: make(db, crons),
        lambda p: _crashed_task(p.clock.now(), resumable=False, max_attempts=1),
        JobStatus.ERRORED,
    )
    assert done.failures == 1  # a failed attempt
    assert statuses == ["error"]


async def test_a_cron_task_put_back_unstarted_sends_no_error_check_in(db: Any) -> None:
    """An attempt whose worker died sends its `error` when recovered; a claim whose reply was
    lost (put back unstarted: the handler never ran, no attempt used, no in_progress sent)
    is no such attempt: it marked the monitor failed (error, in_progress, ok)."""
    crons = {"export": {"cron_string": "0 2 * * *", "handler": tick}}
    done, statuses = await recovered_checkins(
        lambda: make(db, crons), lambda p: _lost_reply(p, killed=False), JobStatus.FINISHED
    )
    assert done.failures == 0
    assert statuses == ["in_progress", "ok"], statuses


async def test_cron_attempt_recovered_by_a_worker_without_the_cron_closes_its_check_in(
    db: Any,
) -> None:
    """The live worker that recovers a dead worker's cron task may serve other names only: it
    sent nothing, and the monitor's in_progress stayed open."""
    done, statuses = await recovered_checkins(
        lambda: init_job_processor(db, jobs={"other": {"handler": tick}}, **FAST),
        lambda p: _crashed_task(p.clock.now(), resumable=False, max_attempts=1),
        JobStatus.ERRORED,
    )
    assert done.failures == 1  # a failed attempt, recovered by this worker
    assert statuses == ["error"]


async def test_resumable_cron_attempt_whose_worker_died_closes_its_check_in(db: Any) -> None:
    """A resumable task's crash uses an attempt and is paused to resume: no error was sent for
    the dead attempt, whose in_progress stayed open."""
    crons = {"export": {"cron_string": "0 2 * * *", "handler": tick, "resumable": True}}
    done, statuses = await recovered_checkins(
        lambda: make(db, crons),
        lambda p: _crashed_task(p.clock.now(), resumable=True, max_attempts=3),
        JobStatus.FINISHED,
    )
    assert done.failures == 1  # the dead attempt counted
    assert statuses == ["error", "in_progress", "ok"], statuses


def _crashed_task(now: dt.datetime, *, resumable: bool, max_attempts: int) -> dict[str, Any]:
    """A cron task of "export" whose worker died while it ran, five minutes ago."""
    from job_processor.core import documents as D

    long_ago = now - dt.timedelta(minutes=5)
    task = D.cron_task(
        "export",
        slot=long_ago,
        now=long_ago,
        margin=dt.timedelta(minutes=5),
        tag=None,
        exclusive=False,
        max_attempts=max_attempts,
        resumable=resumable,
    )
    return D.as_running(task, "dead-worker", long_ago)


async def recovered_checkins(
    make_processor: Callable[[], Awaitable[JobProcessor]],
    task_of: Callable[[JobProcessor], dict[str, Any]],
    status: JobStatus,
) -> tuple[Job, list[str]]:
    """The cron task `task_of(processor)` makes, inserted once the processor runs, waited for
    until `status` with Sentry capturing: the job and its "export" monitor's check-ins."""
    import sentry_sdk

    checkins = capture_checkins(sentry_sdk)
    try:
        processor = await make_processor()
        async with processor:
            task = task_of(processor)
            await processor.storage.jobs.insert(task)
            done = await wait_status(processor, str(task["_id"]), status)
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    return done, [c["status"] for c in checkins if c["monitor_slug"] == "export"]


async def test_a_cron_task_put_back_unstarted_with_a_kill_sends_no_error_check_in(
    db: Any,
) -> None:
    """A claim whose reply was lost (its handler never ran, no in_progress sent) and whose
    kill was requested meanwhile ends killed on recovery: no attempt ran, so no check-in is
    owed (the outcome, killed, counted as started: an error was sent)."""
    crons = {"export": {"cron_string": "0 2 * * *", "handler": tick}}
    done, statuses = await recovered_checkins(
        lambda: make(db, crons), lambda p: _lost_reply(p, killed=True), JobStatus.KILLED
    )
    assert done.failures == 0
    assert statuses == [], statuses


def _lost_reply(p: JobProcessor, *, killed: bool) -> dict[str, Any]:
    """A cron task of "export" claimed by `p` whose claim's reply was lost (never started),
    its kill requested meanwhile when `killed`."""
    from job_processor.core import documents as D

    now = p.clock.now()
    task = D.cron_task(
        "export",
        slot=now,
        now=now,
        margin=dt.timedelta(minutes=5),
        tag=None,
        exclusive=False,
        max_attempts=1,
        resumable=False,
    )
    task = D.as_running(task, p.worker.worker_id, now)
    if killed:
        task["kill_requested_at"] = now
    p.worker.unstarted.add(task["run_id"])
    return task


@pytest.mark.parametrize("zone", ["Europe", "America", "Etc", "Europe/" + "x" * 300])
async def test_a_zone_folder_as_timezone_fails_at_init_naming_cron_and_field(
    db: Any, zone: str
) -> None:
    """A folder of the tz database ("Europe") or a name too long for a file raised a raw
    OSError naming a path inside tzdata."""
    with pytest.raises(InvalidDefinitionError, match=r"cron 'export': field 'timezone'"):
        await init_job_processor(
            db, crons={"export": {"cron_string": "0 2 * * *", "handler": tick, "timezone": zone}}
        )
