"""The documented timing bounds, driven by a FakeClock: nothing here waits on real time for the
bound itself (only for the database round trips that follow a wake-up).

- a kill requested from another process reaches the running handler within one
  `poll_interval` (guide: "Statuses and transitions"; operations: "kill");
- a producer call that meets an outage raises at most a second past `producer_retry_seconds`
  (producers.md: "Short outages");
- a dead worker's running job is recovered by a live worker's sweep more than
  `worker_timeout`, and at most 1.5 x `worker_timeout`, after its last heartbeat (sweeps run every
  `worker_timeout / 2`); a worker also sweeps when it starts (guide: "Liveness and recovery");
- a bare `{name, payload}` another program inserts is adopted within 45 s (scale.md:
  "Jobs other programs insert");
- `max_runtime_in_minutes` fires at its bound, the run ends `shutdown_grace` later (a second
  more for a handler that swallows its cancellation) (guide: "Statuses and transitions").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobStatus, init_job_processor
from job_processor.core import documents as D
from job_processor.core.errors import DatabaseUnreachableError
from job_processor.storage.sync_adapter import drive
from job_processor.storage.transient import ProducerRetry, ride_out
from tests.helpers import wait_for, wait_status

S = JobStatus
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # whole seconds: nx-27017 compares dates so
SETTINGS: dict[str, Any] = {
    "poll_interval": 2.0,
    "heartbeat_interval": 5.0,
    "worker_timeout": 30.0,
    "shutdown_grace": 1.0,
    "change_streams": False,
}


async def test_a_kill_from_another_process_is_delivered_within_one_poll_interval(db: Any) -> None:
    clock = FakeClock(T0)
    started = asyncio.Event()
    reasons: list[str | None] = []

    async def long(job: Job, signal: AbortSignal) -> None:
        started.set()
        await signal.wait()
        reasons.append(signal.reason)
        signal.raise_if_aborted()

    jobs = {"long": JobDef(handler=long)}
    runner = await init_job_processor(db, jobs=jobs, clock=clock, **SETTINGS)
    other = await init_job_processor(db, jobs=jobs, clock=clock, **SETTINGS)  # never started
    async with runner:
        job = await runner.schedule_job("long")
        await asyncio.wait_for(started.wait(), 10)
        # one check of the running job, with no kill yet: the next one is a poll_interval away
        checks: list[dt.datetime] = []
        real_check = runner.ownership.check

        async def counted(now: dt.datetime, reconcile: bool = True) -> int:
            delivered = await real_check(now, reconcile)
            checks.append(now)
            return delivered

        runner.ownership.check = counted  # type: ignore[method-assign]
        clock.advance(2.0)
        await wait_for(lambda: len(checks) == 1)
        assert reasons == []
        requested = await other.kill_job(job.id)  # right after that check: the worst case
        assert requested.status == S.RUNNING and requested.kill_requested_at is not None
        assert reasons == []  # another process: only the database tells the runner
        clock.advance(2.0)  # one poll_interval later
        await wait_for(lambda: reasons == ["killed"], timeout=5)
        assert checks[-1] == T0 + dt.timedelta(seconds=4)
        killed = await wait_status(runner, job.id, S.KILLED, timeout=5)
    assert killed.error == "killed"


async def _plant(processor: Any, worker_id: str, last_seen: dt.datetime) -> str:
    """A worker SIGKILLed after its heartbeat at `last_seen`, with the job it was running."""
    await processor.storage.workers.register(
        {"_id": worker_id, "hostname": "gone", "pid": 1, "started_at": last_seen,
         "last_seen": last_seen}
    )  # fmt: skip
    run_start = last_seen - dt.timedelta(seconds=60)
    doc = D.as_running(D.new_job("send", {}, now=run_start), worker_id, run_start)
    await processor.storage.jobs.insert(doc)
    return str(doc["_id"])


def counted_sweeps(p: Any) -> list[dt.datetime]:
    """The `now` of each sweep the processor makes from here on (its start's included), each
    counted once its whole pass has ended (the sweep, then its `after` step: the registry and
    retention passes). Called before the processor starts. A test that moves the clock once a
    pass is counted never moves it during that pass (which the loop reads as a slow pass, and
    puts the next one half a period later)."""
    sweeps: list[dt.datetime] = []
    passing: list[dt.datetime] = []
    real_sweep, real_after = p.recovery.sweep, p.heartbeat.after_sweep

    async def counted(now: dt.datetime, definitions: bool = False) -> int:
        recovered = await real_sweep(now, definitions)
        (sweeps if definitions else passing).append(now)  # the start's pass has no `after`
        return int(recovered)

    async def after(now: dt.datetime) -> None:
        await real_after(now)
        sweeps.extend(passing)
        passing.clear()

    p.recovery.sweep = counted
    p.heartbeat.after_sweep = after
    return sweeps


async def test_a_dead_workers_job_is_recovered_after_worker_timeout_within_one_and_a_half(
    db: Any,
) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={"send": JobDef(handler=noop)}, clock=clock, **SETTINGS)
    long_dead = await _plant(p, "w-long-dead", T0 - dt.timedelta(seconds=31))
    just_seen = await _plant(p, "w-just-seen", T0)  # its last heartbeat: as the sweeper starts
    sweeps = counted_sweeps(p)
    async with p:
        assert sweeps == [T0]  # a worker sweeps when it starts
        assert (await p.get_job(long_dead)).status == S.ERRORED  # dead for over 30 s: at once
        assert (await p.get_job(just_seen)).status == S.RUNNING
        for n in (1, 2):  # 15 s, then 30 s after its last heartbeat: not dead yet
            clock.advance(15)
            await wait_for(lambda n=n: len(sweeps) == 1 + n)  # type: ignore[misc]
            assert (await p.get_job(just_seen)).status == S.RUNNING
        clock.advance(15)  # 45 s: the first sweep that sees it more than 30 s silent
        await wait_for(lambda: len(sweeps) == 4)
        assert sweeps == [T0 + dt.timedelta(seconds=s) for s in (0, 15, 30, 45)]
        recovered = await p.get_job(just_seen)
    assert recovered.status == S.ERRORED
    assert recovered.ended_at is not None
    assert T0 + dt.timedelta(seconds=30) < recovered.ended_at <= T0 + dt.timedelta(seconds=45)


async def test_a_bare_insert_is_adopted_within_45_s_of_its_insert(db: Any) -> None:
    """scale.md: a bare `{name, payload}` is adopted by the first sweep (every
    `worker_timeout / 2`) that finds it 30 s old: within 45 s of its insert, then it runs."""
    from bson import ObjectId

    async def noop(job: Job, signal: AbortSignal) -> str:
        return "ran"

    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={"send": JobDef(handler=noop)}, clock=clock, **SETTINGS)
    coll = db["job_processor_jobs"]
    sweeps = counted_sweeps(p)
    async with p:
        assert sweeps == [T0]  # the start's pass: before the insert
        bare = ObjectId.from_datetime(T0 + dt.timedelta(seconds=1))  # inserted a second later
        await coll.insert_one({"_id": bare, "name": "send", "payload": {}})
        for n in (1, 2):  # sweeps at 15 and 30 s: 14 and 29 s after the insert, left alone
            clock.advance(15)
            await wait_for(lambda n=n: len(sweeps) == 1 + n)  # type: ignore[misc]
            assert "status" not in (await coll.find_one({"_id": bare}) or {}), n
        clock.advance(15)  # 45 s: the next sweep, 44 s after the insert
        await wait_for(lambda: len(sweeps) == 4)
        done = None
        for _ in range(50):  # the claim loop's next poll (again if it was not asleep yet)
            clock.advance(SETTINGS["poll_interval"])
            try:
                done = await wait_status(p, str(bare), S.FINISHED, timeout=0.5)
                break
            except AssertionError:
                continue
        assert done is not None and done.status == S.FINISHED
        assert clock.now() <= T0 + dt.timedelta(seconds=45 + 3 * SETTINGS["poll_interval"])
    assert done.result == "ran"
    assert done.created_at == T0 + dt.timedelta(seconds=1)  # dated by its _id


async def test_a_cron_task_starts_at_its_slot_woken_by_the_scheduler_not_by_a_poll(
    db: Any,
) -> None:
    """crons.md: a slot's task is created when the slot is due and the creating process wakes
    its own claim loop: with the clock stopped at the slot, the task runs there and then (a
    one-hour poll_interval: no poll can explain it); what it waits is the round trips only."""
    clock = FakeClock(T0)
    crons = {"tick": {"cron_string": "* * * * *", "handler": _tick}}
    p = await init_job_processor(db, crons=crons, clock=clock, **SETTINGS | {"poll_interval": 3600})
    async with p:
        clock.set(T0 + dt.timedelta(minutes=1))  # the slot's instant; the clock stops there

        async def ran() -> bool:
            return any(j.status == S.FINISHED for j in await p.list_jobs("tick"))

        deadline = asyncio.get_running_loop().time() + 10
        while not await ran():
            assert asyncio.get_running_loop().time() < deadline, "the slot's task did not run"
            await asyncio.sleep(0.02)
        (task,) = await p.list_jobs("tick")
    assert task.scheduled_for == T0 + dt.timedelta(minutes=1)
    assert task.started_at == task.scheduled_for  # no clock time passed: not a poll's wake-up
    assert task.result == task.scheduled_for.isoformat()


async def _tick(job: Job, signal: AbortSignal) -> str:
    return job.scheduled_for.isoformat()


async def test_a_producer_call_gives_up_within_its_budget_plus_the_last_trys_second() -> None:
    """producers.md: transient errors are retried (0.1 s doubling) for `producer_retry_seconds`;
    the try under way when the budget runs out is given at least a second, so the call raises
    at most a second past it. The worst case: fast failures, then a server that never answers
    (real time: the budget is a wall-clock one)."""
    retry = ProducerRetry(1.0, sync=False, where=lambda: "db.example:27017")
    tries: list[float] = []

    async def op(retried: bool) -> None:
        tries.append(time.monotonic())
        if len(tries) < 4:
            raise AutoReconnect("connection refused")  # at 0, 0.1 and 0.3 s
        await asyncio.sleep(3600)  # at 0.7 s: no answer, given a whole second

    began = time.monotonic()
    with pytest.raises(
        DatabaseUnreachableError, match=r"MongoDB db\.example:27017 did not all complete within"
    ):
        await retry.run(op)
    elapsed = time.monotonic() - began
    last = tries[-1] - began
    assert len(tries) >= 2 and last < 1.0  # every try starts within the budget
    assert elapsed > 1.0  # the budget is overrun by the try under way ...
    assert elapsed - last < 1.0 + 0.25  # ... which is given a second (here it needs it all)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_producer_call_rides_out_an_outage_that_ends_within_its_budget(sync: bool) -> None:
    """producers.md: transient errors are retried for up to `producer_retry_seconds`. The
    backoff's next step (1.6 s here) ran past the 2 s budget, so the call gave up at 1.5 s:
    an outage over at 1.7 s failed the call (a 3 s budget rode out 1.5 s). The last try is
    made at the budget's end."""
    retry = ProducerRetry(2.0, sync=sync, where=lambda: "db.example:27017")
    tries: list[float] = []
    began = time.monotonic()

    async def op(retried: bool) -> str:
        tries.append(time.monotonic() - began)
        if tries[-1] < 1.7:  # the server is back 1.7 s into the 2 s budget
            raise AutoReconnect("connection refused")
        return "written"

    assert (drive(retry.run(op)) if sync else await retry.run(op)) == "written"
    assert tries[-1] < 2.0 + 0.25  # the last try at the budget's end, not past it


async def test_a_workers_write_rides_out_an_outage_that_ends_within_its_budget() -> None:
    """guide.md: a worker's checkpoints, final writes and hook records ride out outages up to
    `worker_timeout`. `ride_out` gave up as soon as its next backoff step would pass the
    budget, as producer calls did: at 1.5 s of 3 s (9.1 s of 10), so an outage over at 2.5 s
    failed the write. The last try is made at the budget's end."""
    tries: list[float] = []
    began = time.monotonic()

    async def op() -> str:
        tries.append(time.monotonic() - began)
        if tries[-1] < 2.5:  # the server is back 2.5 s into the 3 s budget
            raise AutoReconnect("connection refused")
        return "written"

    assert await ride_out(op, 3.0) == "written"
    assert tries[-1] < 3.0 + 0.25  # the last try at the budget's end, not past it


def _due_at(clock: FakeClock, at: dt.datetime) -> list[asyncio.Future[None]]:
    """The clock's sleepers that wake at `at` (the max-runtime timer, once it has started;
    a sleeper's time is on the clock's `monotonic`)."""
    mono = clock._mono + (at - clock.now())
    return [fut for due, fut in clock._sleepers if due == mono]


@pytest.mark.parametrize("swallows", [False, True], ids=["cancellable", "swallows-cancel"])
async def test_max_runtime_aborts_at_its_bound_and_the_run_ends_within_the_grace_and_a_second(
    db: Any, caplog: pytest.LogCaptureFixture, swallows: bool
) -> None:
    """guide.md, "Statuses and transitions": after `max_runtime_in_minutes` the signal fires
    ("timeout"), not a millisecond before (FakeClock); the handler is cancelled
    `shutdown_grace` later, and the run's end is written at once, or at most a second after
    the cancel when the handler swallows its cancellation (`handler_ignored_cancel`). The grace
    and that second are real time: measured here from the abort the handler saw."""
    clock = FakeClock(T0)
    grace = 0.5
    started = asyncio.Event()
    release = asyncio.Event()
    seen: dict[str, Any] = {}

    async def stuck(job: Job, signal: AbortSignal) -> None:
        started.set()
        await signal.wait()
        seen["reason"], seen["at"], seen["aborted"] = signal.reason, clock.now(), time.monotonic()
        while True:  # ignores the signal
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen["cancelled"] = time.monotonic()
                if not swallows:
                    raise
                await release.wait()  # swallowed: left to finish on its own
                return

    logger = logging.getLogger("test.max_runtime")
    jobs = {"stuck": JobDef(handler=stuck, max_runtime_in_minutes=1)}
    settings = SETTINGS | {"shutdown_grace": grace, "worker_timeout": 600}  # a minute's jump
    p = await init_job_processor(db, jobs=jobs, clock=clock, logger=logger, **settings)
    bound = T0 + dt.timedelta(minutes=1)
    with caplog.at_level(logging.INFO, logger="test.max_runtime"):
        async with p:
            job = await p.schedule_job("stuck")
            await asyncio.wait_for(started.wait(), 10)
            await wait_for(lambda: len(_due_at(clock, bound)) == 1)  # the timer: from its start
            assert (await p.get_job(job.id)).run_started_at == T0
            clock.set(bound - dt.timedelta(milliseconds=1))
            assert not _due_at(clock, bound)[0].done() and "reason" not in seen
            clock.set(bound)
            await wait_for(lambda: "reason" in seen, timeout=5)
            ended = await wait_status(p, job.id, S.ERRORED, S.PENDING, timeout=10)
            written = time.monotonic()
            release.set()
    assert seen["reason"] == "timeout" and seen["at"] == bound
    assert ended.status == S.ERRORED and ended.error == "max runtime exceeded"
    assert ended.ended_at == bound  # the FakeClock did not move: grace and cancel are real time
    cancelled_after = seen["cancelled"] - seen["aborted"]
    assert grace <= cancelled_after < grace + 0.5  # cancelled once the grace has passed
    # written at once after a cancel the handler takes; a swallowed one gets a second first
    # (what the polling of wait_status adds: up to 50 ms, and the final write's round trip)
    assert written - seen["cancelled"] < (1.0 if swallows else 0) + 0.5
    if swallows:
        assert written - seen["cancelled"] >= 1.0
    events = [r.__dict__.get("event") for r in caplog.records]
    assert ("handler_ignored_cancel" in events) is swallows
    assert "job_cancelled" in events


async def test_a_job_claimed_after_its_workers_last_heartbeat_is_recovered_within_the_bound(
    db: Any,
) -> None:
    """guide.md: recovered at most 1.5 x worker_timeout after the worker's last heartbeat, also
    for a job it claimed after that heartbeat (up to heartbeat_interval later), then died: the
    sweep that declares the worker dead recovers it, not a sweep later."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={"send": JobDef(handler=noop)}, clock=clock, **SETTINGS)
    heartbeat = T0 + dt.timedelta(seconds=14)
    await p.storage.workers.register(
        {"_id": "w-claimed-late", "hostname": "gone", "pid": 1, "started_at": T0,
         "last_seen": heartbeat}
    )  # fmt: skip
    claimed_at = heartbeat + dt.timedelta(seconds=4)  # then SIGKILLed, before its next beat
    doc = D.as_running(D.new_job("send", {}, now=claimed_at), "w-claimed-late", claimed_at)
    await p.storage.jobs.insert(doc)
    sweeps = counted_sweeps(p)
    async with p:
        for n in (1, 2):  # 15 s and 30 s: not 30 s silent yet
            clock.advance(15)
            await wait_for(lambda n=n: len(sweeps) == 1 + n)  # type: ignore[misc]
            assert (await p.get_job(str(doc["_id"]))).status == S.RUNNING
        clock.advance(15)  # 45 s: 31 s after its last heartbeat, 27 s after the claim
        await wait_for(lambda: len(sweeps) == 4)
        recovered = await p.get_job(str(doc["_id"]))
    assert recovered.status == S.ERRORED
    assert recovered.ended_at is not None
    assert recovered.ended_at <= heartbeat + dt.timedelta(seconds=45)


async def stopping_on_a_hook(db: Any, work: Any) -> tuple[Any, FakeClock, list[Any], Any]:
    """A processor (FakeClock) stopping: its first job's `on_job_exited` holds the stop until
    `release` is set (later hooks return at once). Returns the processor, its clock, its
    sweeps (`counted_sweeps`) and (the first job, the stop's task, release, hooked ids)."""
    release = asyncio.Event()
    hooked: list[str] = []

    async def hook(job: Job) -> None:
        hooked.append(job.id)
        if len(hooked) == 1:
            await release.wait()

    clock = FakeClock(T0)
    p = await init_job_processor(
        db, jobs={"send": JobDef(handler=work, on_job_exited=hook)}, clock=clock, **SETTINGS
    )
    sweeps = counted_sweeps(p)
    await p.start()
    first = await p.schedule_job("send")
    await wait_for(lambda: len(hooked) == 1)  # its hook runs: the stop will wait for it
    stopping = asyncio.create_task(p.stop())
    await wait_for(lambda: p.worker.stopping.is_set())
    return p, clock, sweeps, (first, stopping, release, hooked)


async def test_a_stop_makes_no_sweep_so_no_recovered_hook_prolongs_it(db: Any) -> None:
    """operations.md: a stop takes at most `shutdown_grace` plus the longest
    `on_job_exited_timeout`. Once it begins the worker sweeps no more (live workers do), so
    a hook another worker left owed meanwhile is not taken up by this stopping one (each such
    hook added up to a timeout more: 8 s for a 3 s timeout were seen)."""
    from job_processor.core.outcome import Outcome

    async def work(job: Job, signal: AbortSignal) -> None:
        return None

    p, clock, sweeps, (mine, stopping, release, hooked) = await stopping_on_a_hook(db, work)
    past = T0 - dt.timedelta(minutes=5)  # another worker died owing this hook
    orphan = D.as_running(D.new_job("send", {}, now=past), "dead-worker", past)
    await p.storage.jobs.insert(orphan)
    await p.storage.jobs.end_run(
        orphan, Outcome(JobStatus.FINISHED, hook_owed=True), past, writer=None, budget=2
    )
    before = len(sweeps)
    for _ in range(4):  # 60 s of the fake clock: four sweep periods
        clock.advance(15)
        await asyncio.sleep(0)
    release.set()
    await stopping
    assert len(sweeps) == before and hooked == [mine.id]
    left = await p.get_job(str(orphan["_id"]))
    assert left.exit_hook == "owed"  # for a live worker's sweep


async def test_a_run_job_called_during_a_stop_keeps_its_process_sweeping(db: Any) -> None:
    """A stop pauses this process's sweeps (above); a run_job called meanwhile holds the
    runtime on after the stop returns, and its process sweeps as usual again (the sweep loop
    used to have ended: no sweep for as long as that run_job ran)."""
    hold_run = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        if job.payload.get("hold"):
            await hold_run.wait()

    p, clock, sweeps, (_, stopping, release, _) = await stopping_on_a_hook(db, work)
    running = asyncio.create_task(p.run_job("send", {"hold": True}))
    await wait_for(lambda: len(p.worker.runs) == 1)
    release.set()
    await stopping
    before = len(sweeps)
    for n in (1, 2):  # two sweep periods of the fake clock while the run_job runs
        clock.advance(15)
        await wait_for(lambda n=n: len(sweeps) == before + n)  # type: ignore[misc]
    hold_run.set()
    assert (await running).status == JobStatus.FINISHED


async def test_a_run_job_that_ends_during_a_stop_pauses_the_sweeps_again(db: Any) -> None:
    """A run_job called during a stop resumes this process's sweeps while it runs; once it
    returns, with the stop still under way, they are paused again (a hook they recovered
    would prolong the stop)."""

    async def work(job: Job, signal: AbortSignal) -> None:
        return None

    p, _, _, (_, stopping, release, _) = await stopping_on_a_hook(db, work)
    assert p._sweeps_paused
    assert (await p.run_job("send")).status == JobStatus.FINISHED
    assert p._sweeps_paused  # paused again: the stop is still under way
    release.set()
    await stopping


async def test_the_sweeps_keep_their_period_however_long_a_pass_takes(db: Any) -> None:
    """Sweeps are due every `worker_timeout / 2` at a fixed rate: a pass that takes 5 s (a
    slow server) does not push the next one back 5 s (the period is what bounds recovery)."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={"send": JobDef(handler=noop)}, clock=clock, **SETTINGS)
    sweeps = counted_sweeps(p)
    counted = p.recovery.sweep

    async def slow(now: dt.datetime, definitions: bool = False) -> int:
        done = await counted(now, definitions)
        clock.advance(5)  # the pass took 5 s
        return int(done)

    async with p:
        p.recovery.sweep = slow
        clock.advance(15)
        await wait_for(lambda: len(sweeps) == 2)
        clock.advance(10)  # 30 s: the next pass is due, not at 35 s
        await wait_for(lambda: len(sweeps) == 3)
    assert sweeps == [T0, T0 + dt.timedelta(seconds=15), T0 + dt.timedelta(seconds=30)]


async def test_slow_sweeps_are_not_run_back_to_back(db: Any) -> None:
    """Passes slower than the period (a loaded server) are at least half a period apart: the
    fixed rate alone ran them back to back, adding load to the server that made them slow."""
    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={}, clock=clock, worker_timeout=30.0)
    passes: list[dt.datetime] = []
    period = p.recovery.worker_timeout / 2

    async def slow_sweep(now: dt.datetime, **kw: Any) -> int:
        passes.append(clock.now())
        clock.advance(period * 1.2)  # each pass takes 1.2 periods (the clock is the only time)
        return 0

    p.recovery.sweep = slow_sweep  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(p.recovery.loop(stop))
    await wait_for(lambda: clock.sleepers >= 1)  # the loop waits for its first pass
    clock.advance(period)  # the first pass is due
    # then the loop sleeps again, on a clock that no one but the passes themselves moves
    await wait_for(lambda: len(passes) >= 1 and clock.sleepers >= 1)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert len(passes) == 1, f"{len(passes)} passes back to back"
