"""The processor as a user sees it: schedule, run, fail, kill, stop, resume, exclusive, tags."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobStatus
from job_processor.ops.admin import Admin
from job_processor.testing import run_until_idle
from tests.helpers import make, wait_for, wait_status

S = JobStatus


class Exits:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def __call__(self, job: Job) -> None:
        self.jobs.append(job)

    def of(self, job_id: str) -> list[str]:
        return [j.status.value for j in self.jobs if j.id == job_id]


async def test_scheduled_job_runs_and_records_output(driver_db: Any) -> None:
    exits = Exits()

    async def send(job: Job, signal: AbortSignal) -> dict[str, str]:
        return {"sent_to": job.payload["to"]}

    processor = await make(driver_db, {"send-email": JobDef(handler=send, on_job_exited=exits)})
    async with processor:
        job = await processor.schedule_job("send-email", {"to": "a@b.c"})
        assert job.status == S.PENDING
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.output is not None
    assert done.result == {"sent_to": "a@b.c"}
    assert done.error is None
    assert done.output.duration_ms is not None
    assert done.attempt == 1
    assert done.worker_id == processor.worker_id
    assert done.started_at is not None
    assert done.ended_at is not None
    assert done.ended_at >= done.started_at
    await wait_for(lambda: exits.of(job.id) == ["finished"])


async def test_failing_job_is_errored_with_type_and_traceback(db: Any) -> None:
    exits = Exits()

    async def boom(job: Job, signal: AbortSignal) -> None:
        raise ValueError(f"row {job.payload['row']} is bad")

    processor = await make(db, {"import": JobDef(handler=boom, on_job_exited=exits)})
    async with processor:
        job = await processor.schedule_job("import", {"row": 7})
        failed = await wait_status(processor, job.id, S.ERRORED)
    assert failed.error is not None
    assert failed.error.startswith("ValueError: row 7 is bad")
    assert "Traceback" in failed.error
    assert exits.of(job.id) == ["errored"]


async def test_a_plain_handlers_traceback_starts_at_the_users_code(db: Any) -> None:
    def parse(row: int) -> None:
        raise ValueError(f"row {row} is bad")

    def load(job: Job, signal: AbortSignal) -> None:  # runs on a thread
        parse(job.payload["row"])

    processor = await make(db, {"load": JobDef(handler=load)})
    failed = await processor.run_job("load", {"row": 3})
    assert failed.error is not None
    lines = failed.error.splitlines()
    assert lines[:2] == ["ValueError: row 3 is bad", "Traceback (most recent call last):"]
    assert lines[2].endswith(", in load") and "in parse" in failed.error
    assert "call_maybe_async" not in failed.error  # no frame of the call's plumbing
    assert "in _execute" not in failed.error and "threads.py" not in failed.error


async def test_plain_function_handler_runs_in_a_thread(db: Any) -> None:
    threads: list[str] = []

    def blocking(job: Job, signal: AbortSignal) -> int:
        threads.append(threading.current_thread().name)
        return 42

    processor = await make(db, {"sync": JobDef(handler=blocking)})
    done = await processor.run_job("sync")
    assert done.status == S.FINISHED
    assert done.result == 42
    assert threads
    assert threads[0] != threading.main_thread().name


async def test_run_job_runs_here_is_recorded_and_unregisters(driver_db: Any) -> None:
    exits = Exits()
    seen: list[Job] = []

    async def work(job: Job, signal: AbortSignal) -> str:
        seen.append(await processor.get_job(job.id))
        return "ok"

    processor = await make(driver_db, {"w": JobDef(handler=work, on_job_exited=exits)})
    done = await processor.run_job("w", {"x": 1})
    assert done.status == S.FINISHED
    assert done.result == "ok"
    assert seen[0].status == S.RUNNING
    assert seen[0].worker_id == processor.worker_id
    assert (await processor.get_job(done.id)).status == S.FINISHED
    assert exits.of(done.id) == ["finished"]
    status = await processor.get_status()
    assert status.workers == []  # the temporary worker document is gone


async def test_kill_pending_job_at_once(db: Any) -> None:
    exits = Exits()

    async def never(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("must not run")

    processor = await make(db, {"n": JobDef(handler=never, on_job_exited=exits)})
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    job = await processor.schedule_job("n", {}, scheduled_for=future)
    killed = await processor.kill_job(job.id)
    assert killed.status == S.KILLED
    assert exits.of(job.id) == ["killed"]
    again = await processor.kill_job(job.id)  # idempotent, no second hook
    assert again.status == S.KILLED
    assert exits.of(job.id) == ["killed"]


async def test_kill_running_job_from_another_processor(db: Any) -> None:
    exits = Exits()
    reasons: list[str | None] = []

    async def long(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        reasons.append(signal.reason)
        signal.raise_if_aborted()

    jobs = {"long": JobDef(handler=long, on_job_exited=exits)}
    runner = await make(db, jobs)
    other = await make(db, jobs)  # another "process": shares only the database
    async with runner:
        job = await runner.schedule_job("long")
        await wait_status(runner, job.id, S.RUNNING)
        requested = await other.kill_job(job.id)
        assert requested.status == S.RUNNING
        assert requested.kill_requested_at is not None
        killed = await wait_status(runner, job.id, S.KILLED, timeout=5)
    assert reasons == ["killed"]
    assert killed.error == "killed"
    await wait_for(lambda: exits.of(job.id) == ["killed"])


async def test_max_runtime_aborts_with_timeout_then_cancels(db: Any) -> None:
    exits = Exits()
    reasons: list[str | None] = []

    async def stubborn(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        reasons.append(signal.reason)
        await asyncio.sleep(60)  # ignores the signal: cancelled after the grace period

    processor = await make(
        db,
        {"slow": JobDef(handler=stubborn, max_runtime_in_minutes=0.01, on_job_exited=exits)},
        shutdown_grace=0.3,
    )
    done = await processor.run_job("slow")
    assert reasons == ["timeout"]
    assert done.status == S.ERRORED
    assert done.error == "max runtime exceeded"
    assert exits.of(done.id) == ["errored"]


async def test_graceful_stop_pauses_resumable_and_a_new_worker_resumes(db: Any) -> None:
    exits = Exits()
    runs: list[dict[str, Any] | None] = []

    async def index(job: Job, signal: AbortSignal) -> int:
        runs.append(job.state)
        done = (job.state or {}).get("done", 0)
        while done < 6:
            signal.raise_if_aborted()
            await asyncio.sleep(0.1)
            done += 1
            await job.checkpoint({"done": done})
        return done

    jobs = {"index": JobDef(handler=index, resumable=True, on_job_exited=exits)}
    first = await make(db, jobs)
    await first.start()
    job = await first.schedule_job("index")
    await wait_for(lambda: bool(runs))
    await asyncio.sleep(0.25)
    await first.stop()
    paused = await first.get_job(job.id)
    assert paused.status == S.PAUSED
    assert paused.state is not None
    assert 1 <= paused.state["done"] < 6
    assert exits.of(job.id) == []  # never for paused

    second = await make(db, jobs)
    async with second:
        done = await wait_status(second, job.id, S.FINISHED)
    assert runs[1] == paused.state  # the resumed run saw the checkpoint
    assert done.result == 6
    assert done.started_at == paused.started_at
    assert done.attempt == 2
    assert exits.of(job.id) == ["finished"]


async def test_graceful_stop_requeues_non_resumable_without_using_an_attempt(db: Any) -> None:
    exits = Exits()

    async def polite(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        signal.raise_if_aborted()

    async def stubborn(job: Job, signal: AbortSignal) -> None:
        await asyncio.sleep(60)

    processor = await make(
        db,
        {
            "polite": JobDef(handler=polite, on_job_exited=exits),
            "stubborn": JobDef(handler=stubborn, on_job_exited=exits),
        },
        concurrency=2,
        shutdown_grace=0.3,
    )
    await processor.start()
    a = await processor.schedule_job("polite")
    b = await processor.schedule_job("stubborn")
    await wait_status(processor, a.id, S.RUNNING)
    await wait_status(processor, b.id, S.RUNNING)
    await asyncio.wait_for(processor.stop(), 5)
    for job in (a, b):
        ended = await processor.get_job(job.id)
        assert ended.status == S.PENDING  # runs again from scratch, on any worker
        assert ended.error == "interrupted"
        assert ended.failures == 0  # an interruption is not the job's fault
        assert ended.max_attempts == 1
        assert exits.of(job.id) == []  # not an exit


async def test_handler_that_finishes_during_shutdown_is_finished(db: Any) -> None:
    async def quick(job: Job, signal: AbortSignal) -> str:
        await signal.wait()
        await asyncio.sleep(0.05)
        return "completed anyway"

    processor = await make(db, {"q": JobDef(handler=quick)})
    await processor.start()
    job = await processor.schedule_job("q")
    await wait_status(processor, job.id, S.RUNNING)
    await processor.stop()
    done = await processor.get_job(job.id)
    assert done.status == S.FINISHED
    assert done.result == "completed anyway"


async def test_exclusive_job_skips_while_active(db: Any) -> None:
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    processor = await make(db, {"ex": JobDef(handler=hold, concurrency="exclusive")})
    async with processor:
        first = await processor.schedule_job("ex")
        await wait_status(processor, first.id, S.RUNNING)
        racing = await asyncio.gather(*(processor.schedule_job("ex") for _ in range(5)))
        assert all(j.status == S.SKIPPED for j in racing)
        assert all(j.conflicting_job_id == first.id for j in racing)
        release.set()
        await wait_status(processor, first.id, S.FINISHED)
        after = await processor.schedule_job("ex")
        assert after.status == S.PENDING


async def test_worker_tags_choose_who_runs_what(db: Any) -> None:
    ran_by: dict[str, str] = {}

    async def record(job: Job, signal: AbortSignal) -> None:
        ran_by[job.name] = job.worker_id or ""

    jobs = {
        "anywhere": JobDef(handler=record),
        "main-only": JobDef(handler=record, tag="main"),
        "reports": JobDef(handler=record, tag="reports"),
    }
    main = await make(db, jobs, worker_tags=["main"])
    async with main:
        ids = [(await main.schedule_job(n)).id for n in jobs]
        await wait_status(main, ids[0], S.FINISHED)
        await wait_status(main, ids[1], S.FINISHED)
        await asyncio.sleep(0.5)
        assert (await main.get_job(ids[2])).status == S.PENDING
    reports = await make(db, jobs, worker_tags=["reports"])
    async with reports:
        await wait_status(reports, ids[2], S.FINISHED)
    assert ran_by["main-only"] == main.worker_id
    assert ran_by["reports"] == reports.worker_id


async def test_run_job_runs_here_whatever_the_worker_tags_and_a_pause_say(db: Any) -> None:
    """run_job is an explicit call: it runs the job's first attempt in the calling process
    even when this processor's worker_tags leave the job's tag out or its name is paused (as
    docs/guide.md says); a retry it leaves `pending` is claimed as any job is: only by a
    worker whose tags include it, and not while the name is paused."""
    attempts: list[int] = []

    async def flaky(job: Job, signal: AbortSignal) -> str:
        attempts.append(job.attempt)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    clock = FakeClock(dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC))
    jobs = {"reports": JobDef(handler=flaky, tag="reports", max_attempts=3)}
    main = await make(db, jobs, worker_tags=["main"], clock=clock)
    await main.storage.paused.pause("reports", "ops", clock.now())  # paused before any run
    first = await main.run_job("reports")
    assert first.status == S.PENDING and attempts == [1]  # run here all the same
    assert (await main.run_job("reports")).status == S.FINISHED
    reports = await make(db, jobs, worker_tags=["reports"], clock=clock)
    assert await run_until_idle(reports) == []  # its retry: not while paused
    await (await Admin.open(db, clock=clock)).resume("reports")
    assert await run_until_idle(main) == []  # nor by a worker whose tags leave it out
    assert [j.id for j in await run_until_idle(reports)] == [first.id]
    assert (await reports.get_job(first.id)).status == S.FINISHED


async def test_concurrency_overlaps_jobs(db: Any) -> None:
    active = 0
    peak = 0

    async def slow(job: Job, signal: AbortSignal) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.4)
        active -= 1

    processor = await make(db, {"s": JobDef(handler=slow)}, concurrency=3)
    async with processor:
        ids = [(await processor.schedule_job("s")).id for _ in range(3)]
        for i in ids:
            await wait_status(processor, i, S.FINISHED)
    assert peak == 3


async def test_job_scheduled_for_later_waits(db: Any) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"n": JobDef(handler=noop)})
    async with processor:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.8)
        job = await processor.schedule_job("n", scheduled_for=when)
        await asyncio.sleep(0.4)
        assert (await processor.get_job(job.id)).status == S.PENDING
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.started_at is not None
    assert done.started_at >= when.replace(microsecond=when.microsecond // 1000 * 1000)


async def test_on_job_exited_errors_are_logged_recorded_and_not_fatal(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    async def ok(job: Job, signal: AbortSignal) -> int:
        return 1

    def bad_hook(job: Job) -> None:
        raise RuntimeError(f"hook failed to log out {job.payload['password']}")

    logger = logging.getLogger("test.hooks")
    processor = await make(db, {"j": JobDef(handler=ok, on_job_exited=bad_hook)}, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.hooks"):
        async with processor:
            a = await processor.schedule_job("j", {"password": "hunter2-secret"})
            b = await processor.schedule_job("j", {"password": "hunter2-secret"})
            await wait_status(processor, a.id, S.FINISHED)
            await wait_status(processor, b.id, S.FINISHED)  # the worker went on
    failures = [r for r in caplog.records if r.__dict__.get("event") == "on_job_exited_failed"]
    assert sorted(r.__dict__["fields"]["job_id"] for r in failures) == sorted([a.id, b.id])
    # the first line, masked as job_errored's; the traceback is on the job, where readers mask
    assert all(r.__dict__["fields"]["error"] == "RuntimeError: hook failed to log out ••••••"
               for r in failures)  # fmt: skip
    assert not any(r.exc_info for r in failures)
    for job_id in (a.id, b.id):
        job = await processor.get_job(job_id)
        assert job.exit_hook == "failed"
        assert job.exit_hook_error is not None
        assert job.exit_hook_error.startswith("RuntimeError: hook failed to log out hunter2")


async def test_a_backlog_runs_in_batches_each_job_exactly_once(driver_db: Any) -> None:
    runs: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> int:
        runs.append(job.id)
        await asyncio.sleep(0.01)
        return job.payload["n"]

    exits = Exits()
    jobs = {"w": JobDef(handler=work, on_job_exited=exits)}
    processors = [await make(driver_db, jobs, concurrency=8) for _ in range(2)]
    ids = [(await processors[0].schedule_job("w", {"n": n})).id for n in range(80)]
    await asyncio.gather(*(p.start() for p in processors))
    try:
        for job_id in ids:
            await wait_status(processors[0], job_id, S.FINISHED)
        await wait_for(lambda: len(exits.jobs) == 80)
    finally:
        await asyncio.gather(*(p.stop() for p in processors))
    assert sorted(runs) == sorted(ids)  # each job ran once, across two batching workers
    done = [await processors[0].get_job(i) for i in ids]
    assert [j.result for j in done] == list(range(80))
    assert all(j.attempt == 1 and j.exit_hook == "done" for j in done)
    flushes = sum(p.worker.finals.flushes for p in processors)
    assert flushes <= 80  # never more than one write per job (fewer when grouped)


async def test_a_backlog_costs_well_under_two_commands_per_job_on_the_wire(
    mongo_url: str, db: Any
) -> None:
    """Batch claims and grouped final writes, counted on the wire (the figure itself is for
    benchmarks/bench_scale.py): one claim and one final write per job would be 2.0."""
    from pymongo import AsyncMongoClient, monitoring

    counted: list[str] = []

    class Count(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command.get(event.command_name) == "job_processor_jobs":
                counted.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    async def work(job: Job, signal: AbortSignal) -> None:
        await asyncio.sleep(0.02)

    n = 96
    scheduler = await make(db, {"w": JobDef(handler=work)})
    ids = [(await scheduler.schedule_job("w")).id for _ in range(n)]
    client: Any = AsyncMongoClient(mongo_url, tz_aware=True, event_listeners=[Count()])
    try:
        worker = await make(client[db.name], {"w": JobDef(handler=work)}, concurrency=8)
        counted.clear()  # what init wrote
        async with worker:
            await wait_for(lambda: worker.worker.finals.flushes > 0)
            for job_id in ids:
                await wait_status(scheduler, job_id, S.FINISHED)
        per_job = len([c for c in counted if c != "getMore"]) / n
    finally:
        await client.close()
    assert per_job < 1.5, f"{per_job:.2f} commands per job: {sorted(set(counted))}"


async def test_a_cancelled_handler_says_whether_a_thread_was_left_running(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Both ignore their kill signal and are cancelled after the grace period: the async one
    leaves nothing behind, the plain one its thread."""
    import logging

    started, release = threading.Event(), threading.Event()

    async def deaf_async(job: Job, signal: AbortSignal) -> None:
        started.set()
        await asyncio.Event().wait()

    def deaf_plain(job: Job, signal: AbortSignal) -> None:
        started.set()
        release.wait()

    log = logging.getLogger("myservice.cancel")
    jobs = {"deaf-async": JobDef(handler=deaf_async), "deaf-plain": JobDef(handler=deaf_plain)}
    processor = await make(db, jobs, logger=log, shutdown_grace=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="myservice.cancel"):
            async with processor:
                for name in ("deaf-async", "deaf-plain"):
                    started.clear()
                    job = await processor.schedule_job(name)
                    await wait_for(started.is_set, timeout=10)
                    await processor.kill_job(job.id)
                    await wait_status(processor, job.id, S.KILLED)
    finally:
        release.set()
    left = {
        r.__dict__["fields"]["job_name"]: r.__dict__["fields"]["thread_left_running"]
        for r in caplog.records
        if r.__dict__.get("event") == "job_cancelled"
    }
    assert left == {"deaf-async": False, "deaf-plain": True}


@pytest.mark.parametrize("started", [True, False])
async def test_a_run_job_caller_that_stops_waiting_never_leaves_the_run_half_dropped(
    db: Any, started: bool
) -> None:
    """`asyncio.wait_for(processor.run_job(...), 0.2)` gives up waiting: in a started processor
    the run goes on to its end, once (it used to be cut from its worker, its handler running
    on unowned while the job was run again beside it); in one that is not started the run ends
    as a graceful stop ends it, before the process stops heartbeating."""
    active, most, attempts = 0, 0, []
    release = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> str:
        nonlocal active, most
        active += 1
        most = max(most, active)
        attempts.append(job.attempt)
        try:
            await asyncio.wait_for(release.wait(), 30)  # ignores the signal: a plain handler
        finally:
            active -= 1
        return "done"

    p = await make(db, {"work": JobDef(handler=work, max_attempts=3)}, shutdown_grace=0.5)
    if started:
        await p.start()
    try:
        caller = asyncio.create_task(p.run_job("work"))
        await wait_for(lambda: attempts == [1])  # its handler runs: the caller gives up now
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        (job,) = await p.list_jobs("work")
        if started:
            assert job.status == JobStatus.RUNNING and job.id in p.worker.runs
            release.set()
            ended = await wait_status(p, job.id, JobStatus.FINISHED)
            assert ended.result == "done"
        else:  # stopped within its grace: cancelled, back to pending (interrupted)
            assert job.status == JobStatus.PENDING and active == 0
    finally:
        release.set()
        await p.stop()
    assert most == 1 and attempts == [1]


async def test_a_hook_that_raises_cancelled_error_is_recorded_failed_not_left_owed(
    db: Any,
) -> None:
    """An on_job_exited that raises CancelledError itself (it awaited a task someone
    cancelled; its own task was not cancelled) is a failed hook like any other: recorded
    `failed` with the reason, not left `owed` for ever with nothing said."""

    async def work(job: Job, signal: AbortSignal) -> str:
        return "ok"

    async def hook(job: Job) -> None:
        cancelled = asyncio.ensure_future(asyncio.sleep(10))
        cancelled.cancel()
        await cancelled

    p = await make(db, {"work": JobDef(handler=work, on_job_exited=hook)})
    async with p:
        job = await p.schedule_job("work")
        await wait_status(p, job.id, JobStatus.FINISHED)
        await p.hooks.drain()  # the hook called and recorded
        later = await p.schedule_job("work")  # the worker goes on
        await wait_status(p, later.id, JobStatus.FINISHED)
    ended = await p.get_job(job.id)
    assert ended.exit_hook == "failed"
    assert ended.exit_hook_error == "CancelledError raised by the hook (its task was not cancelled)"


async def test_a_stop_its_caller_stops_waiting_for_never_cuts_a_run_half_way(db: Any) -> None:
    """`asyncio.wait_for(processor.stop(), ...)` that times out while a run is in its grace:
    the run is not cancelled half-way (it used to be, its handler going on unowned); it ends
    and is written, and a second stop() completes."""
    release = asyncio.Event()
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> str:
        ran.append(job.id)
        await release.wait()  # ignores the shutdown signal for a while
        return "done"

    p = await make(db, {"work": JobDef(handler=work)}, shutdown_grace=30.0)
    await p.start()
    job = await p.schedule_job("work")
    await wait_for(lambda: ran == [job.id])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(p.stop(), timeout=0.3)
    assert job.id in p.worker.runs  # still running here, owned
    release.set()
    ended = await wait_status(p, job.id, JobStatus.FINISHED)
    await p.stop()
    assert ended.result == "done" and ran == [job.id]


async def test_the_count_of_exits_being_written_is_thread_safe(db: Any) -> None:
    """A JobClient's calls (kill_job among them) come from many threads at once: the count
    behind `hooks.pending` is kept under a lock (unlocked, 8 threads entering it 160,000 times
    raised KeyError tens of times and could leave a stale entry)."""
    import sys

    p = await make(db, {"w": JobDef(handler=lambda j, s: None)})
    errors: list[BaseException] = []

    def enter() -> None:
        for _ in range(20_000):
            try:
                with p.hooks.pending("one-job"):
                    pass
            except Exception as exc:
                errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=enter) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors and not p.hooks.busy("one-job")


async def test_a_side_loop_whose_driver_errs_while_it_is_cancelled_is_cancelled_not_crashed() -> (
    None
):
    """A stop during an outage cancels the side loops inside a server selection; PyMongo's
    async lock then raises `RuntimeError: Lock is not acquired` instead of the cancellation:
    the loop counts as cancelled (no processor_loop_crashed, `run` exits 0); the same error
    outside a cancellation is still a crash."""
    from job_processor.engine.runtime import cancellable

    waiting = asyncio.Event()

    async def selecting() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("Lock is not acquired") from None

    task = asyncio.create_task(cancellable(selecting()))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def broken() -> None:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        await cancellable(broken())


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_a_handler_or_hook_raising_system_exit_fails_its_call_not_the_worker(
    db: Any, mongo_url: str, kind: str
) -> None:
    """A handler that ends in SystemExit (argparse on a bad argument, a reused script's
    sys.exit()) ended the worker process (asyncio lets SystemExit out of the loop), its job
    left running, then recovered elsewhere and ending that worker too; a hook did the same.
    Run in a process of its own: the failure would end the test run."""
    import textwrap

    from tests.conftest import url_with_db

    script = textwrap.dedent(
        f"""
        import argparse, asyncio, sys
        from pymongo import AsyncMongoClient
        from job_processor import JobDef, init_job_processor

        def parse(job, signal):
            argparse.ArgumentParser(prog="export").parse_args(job.payload["argv"])

        async def parse_async(job, signal):
            parse(job, signal)

        def exits(job):
            sys.exit(4)

        async def main():
            client = AsyncMongoClient(sys.argv[1], tz_aware=True)
            handler = parse if {kind!r} == "def" else parse_async
            defs = {{"cli": JobDef(handler=handler, on_job_exited=exits)}}
            p = await init_job_processor(
                client.get_default_database(), jobs=defs,
                poll_interval=0.2, heartbeat_interval=0.5, worker_timeout=2.0,
            )
            async with p:
                job = await p.schedule_job("cli", {{"argv": ["--bogus"]}})
                done = await p.wait_for(job.id, timeout=10)
                for _ in range(100):
                    hooked = await p.get_job(job.id)
                    if hooked.exit_hook not in (None, "owed"):
                        break
                    await asyncio.sleep(0.05)
            print("ENDED", done.status.value, hooked.exit_hook, (done.error or "").splitlines()[0])
            await client.close()

        asyncio.run(main())
        """
    )
    ended = await ended_in_a_process(script, url_with_db(mongo_url, db.name))
    assert ended == "errored failed SystemExit: 2", ended


async def test_a_handler_raising_cancelled_error_itself_says_so(db: Any) -> None:
    """A handler that awaited a task someone else cancelled (its own task never was): the
    error was the bare word "cancelled", with no type nor traceback."""

    async def fetch(job: Job, signal: AbortSignal) -> str:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner
        return "x"

    p = await make(db, {"fetch": JobDef(handler=fetch)})
    failed = await p.run_job("fetch")
    assert failed.status == S.ERRORED
    assert failed.error is not None and "CancelledError" in failed.error, failed.error


@pytest.mark.parametrize("kind", ["def", "hook"])
async def test_a_plain_handler_or_hook_raising_keyboard_interrupt_fails_its_call_not_the_worker(
    db: Any, mongo_url: str, kind: str
) -> None:
    """Raised on a worker thread (never a Ctrl-C there), KeyboardInterrupt was passed back into
    the event loop and ended the process, the job left running: a poison job, as SystemExit."""
    import textwrap

    from tests.conftest import url_with_db

    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pymongo import AsyncMongoClient
        from job_processor import JobDef, init_job_processor

        def plain(job, signal):
            if {kind!r} != "hook":
                raise KeyboardInterrupt
            return "ok"

        def hook(job):
            if {kind!r} == "hook":
                raise KeyboardInterrupt

        async def main():
            client = AsyncMongoClient(sys.argv[1], tz_aware=True)
            defs = {{"w": JobDef(handler=plain, on_job_exited=hook)}}
            p = await init_job_processor(
                client.get_default_database(), jobs=defs,
                poll_interval=0.2, heartbeat_interval=0.5, worker_timeout=2.0,
            )
            async with p:
                job = await p.schedule_job("w")
                done = await p.wait_for(job.id, timeout=10)
                for _ in range(100):
                    hooked = await p.get_job(job.id)
                    if hooked.exit_hook not in (None, "owed"):
                        break
                    await asyncio.sleep(0.05)
            print("ENDED", done.status.value, hooked.exit_hook)
            await client.close()

        asyncio.run(main())
        """
    )
    ended = await ended_in_a_process(script, url_with_db(mongo_url, db.name))
    assert ended == ("finished failed" if kind == "hook" else "errored done"), ended


async def ended_in_a_process(script: str, url: str) -> str:
    """Run `script` (given the database's URL) in a Python process of its own, which must exit
    0 (a worker's process not ended by what a handler raised), and return what it printed
    after "ENDED "."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    out = stdout.decode()
    assert proc.returncode == 0, (proc.returncode, out[-500:], stderr.decode()[-800:])
    return out.split("ENDED ", 1)[1].strip()


def test_a_processor_started_again_in_another_event_loop_is_refused_at_start() -> None:
    """The same in-memory processor, started, stopped, then started in another event loop (a
    second `asyncio.run()`): start() returned and the claim loop crashed at its first wait
    (its events were bound to the first loop), nothing claimed. start() now refuses, naming
    the fix, and the processor is left as it was (not started); a processor made in the new
    loop on the same database runs the job."""
    from mongomock_motor import AsyncMongoMockClient

    async def work(job: Job, signal: AbortSignal) -> str:
        return "done"

    client: Any = AsyncMongoMockClient(tz_aware=True)
    jobs = {"work": JobDef(handler=work)}

    async def first_loop() -> Any:
        p = await make(client["app"], jobs, change_streams=False)
        async with p:
            job = await p.schedule_job("work")
            assert (await p.wait_for(job.id, timeout=10)).status == S.FINISHED
        return p

    p = asyncio.run(first_loop())

    async def second_loop() -> JobStatus:
        job = await p.schedule_job("work")  # a producer's call still works here
        with pytest.raises(RuntimeError, match=r"another event loop.*init_job_processor"):
            await p.start()
        assert not p.started and not p.failed.is_set()
        await p.stop()  # nothing to stop
        fresh = await make(client["app"], jobs, change_streams=False)
        async with fresh:
            return (await fresh.wait_for(job.id, timeout=10)).status

    assert asyncio.run(second_loop()) == S.FINISHED


def test_a_start_that_failed_can_be_retried_in_another_event_loop() -> None:
    """start()'s docstring: a start that fails (MongoDB unreachable) leaves nothing behind and
    can be called again. It tied the processor to its event loop before failing, so a retry
    in a new `asyncio.run()` (a supervisor's restart, a test's loop) was refused ('already ran
    in another event loop') though nothing ever ran. Only a start that succeeded ties it."""
    from mongomock_motor import AsyncMongoMockClient
    from pymongo.errors import ServerSelectionTimeoutError

    from job_processor import DatabaseUnreachableError

    async def work(job: Job, signal: AbortSignal) -> str:
        return "done"

    client: Any = AsyncMongoMockClient(tz_aware=True)
    jobs = {"work": JobDef(handler=work)}
    p = asyncio.run(make(client["app"], jobs, change_streams=False))
    sweep = p.recovery.sweep

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        # the heartbeat registered, then MongoDB went: its side loops are waiting in this loop
        while not beats:
            await asyncio.sleep(0)
        raise ServerSelectionTimeoutError("127.0.0.1:27017: [Errno 111] Connection refused")

    beats: list[None] = []
    tick = p.heartbeat.tick

    async def counted() -> None:
        beats.append(None)
        await tick()

    p.heartbeat.tick = counted  # type: ignore[method-assign]

    async def first_loop() -> None:
        p.recovery.sweep = unreachable  # type: ignore[method-assign]
        with pytest.raises(DatabaseUnreachableError):
            await p.start()
        assert not p.started

    asyncio.run(first_loop())
    p.recovery.sweep = sweep  # type: ignore[method-assign]

    async def second_loop() -> JobStatus:
        async with p:  # MongoDB back: the retry starts
            job = await p.schedule_job("work")
            status = (await p.wait_for(job.id, timeout=10)).status
            beats.clear()
            for _ in range(200):  # far less than a heartbeat interval
                await asyncio.sleep(0)
            # its side loops wait on events of this loop (those of the first one failed at
            # once: the heartbeat wrote at every turn of the loop, a core busy)
            assert len(beats) <= 1, len(beats)
            return status

    assert asyncio.run(second_loop()) == S.FINISHED

    async def third_loop() -> None:  # it ran in the second loop: tied to it now
        with pytest.raises(RuntimeError, match="another event loop"):
            await p.start()

    asyncio.run(third_loop())


def test_run_job_and_run_until_idle_serve_one_loop_per_test() -> None:
    """`run_job` and `run_until_idle` with one processor in several event loops (a test
    framework's loop per test) keep working: only `start()` is tied to its first loop."""
    from mongomock_motor import AsyncMongoMockClient

    from job_processor.testing import run_until_idle

    async def work(job: Job, signal: AbortSignal) -> str:
        return "done"

    client: Any = AsyncMongoMockClient(tz_aware=True)
    p = asyncio.run(make(client["app"], {"work": JobDef(handler=work)}, change_streams=False))

    async def one_test() -> list[JobStatus]:
        await p.schedule_job("work")
        ran = await run_until_idle(p)
        return [j.status for j in ran] + [(await p.run_job("work")).status]

    for _ in range(3):
        assert asyncio.run(one_test()) == [S.FINISHED, S.FINISHED]
