"""Dead workers: exactly-once recovery; a worker declared dead never overwrites new state."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobStatus, init_job_processor
from job_processor.core import documents as D
from job_processor.core.outcome import Ending, RunEnd
from job_processor.core.runs import WORKER_SILENT
from tests.helpers import make, wait_for, wait_status

S = JobStatus


async def plant_dead_worker_job(
    processor: Any,
    name: str,
    seconds_ago: float = 60,
    worker_id: str = "dead-worker",
    **fields: Any,
) -> str:
    """What a SIGKILLed worker leaves behind: a stale worker document and its running job."""
    storage = processor.storage
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    past = past.replace(microsecond=past.microsecond // 1000 * 1000)
    await storage.workers.register(
        {"_id": worker_id, "hostname": "gone", "pid": 1, "started_at": past, "last_seen": past}
    )
    doc = D.as_running(D.new_job(name, {}, now=past, **fields), worker_id, past)
    await storage.jobs.insert(doc)
    await storage.jobs.save_checkpoint(doc["_id"], doc["run_id"], {"step": 2}, past, budget=5)
    return str(doc["_id"])


async def test_crashed_non_resumable_job_is_errored_once_with_hook(db: Any) -> None:
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    jobs = {"send": JobDef(handler=noop, on_job_exited=hook)}
    sweepers = [await make(db, jobs) for _ in range(3)]
    job_id = await plant_dead_worker_job(sweepers[0], "send")
    await asyncio.gather(*(p.start() for p in sweepers))  # three live workers sweep at once
    try:
        job = await wait_status(sweepers[0], job_id, S.ERRORED)
        await wait_for(lambda: calls == ["errored"])
    finally:
        await asyncio.gather(*(p.stop() for p in sweepers))  # each waits for its hooks
    assert job.error == WORKER_SILENT
    assert calls == ["errored"]
    assert (await sweepers[0].get_job(job_id)).exit_hook == "done"
    status = await sweepers[0].get_status()
    assert all(w.id != "dead-worker" for w in status.workers)


async def test_crashed_resumable_job_is_paused_and_resumed_from_checkpoint(db: Any) -> None:
    states: list[Any] = []

    async def resume(job: Job, signal: AbortSignal) -> str:
        states.append(job.state)
        return "resumed"

    processor = await make(db, {"index": JobDef(handler=resume, resumable=True)})
    job_id = await plant_dead_worker_job(processor, "index", resumable=True, max_attempts=3)
    before = await processor.get_job(job_id)
    async with processor:
        done = await wait_status(processor, job_id, S.FINISHED)
    assert states == [{"step": 2}]
    assert done.attempt == 2
    assert done.failures == 1  # the crash counted as an attempt
    assert done.started_at == before.started_at


async def test_a_recent_claim_without_worker_document_is_left_alone(db: Any) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"n": JobDef(handler=noop)})
    now = processor.clock.now()
    doc = D.as_running(D.new_job("n", {}, now=now), "registering-now", now)
    await processor.storage.jobs.insert(doc)
    assert await processor.recovery.sweep(now) == 0
    assert await processor.recovery.sweep(now + dt.timedelta(seconds=1.5)) == 0
    # (whole seconds past the timeout: nx-27017 compares dates at one-second precision)
    assert await processor.recovery.sweep(now + dt.timedelta(seconds=4)) == 1


async def test_each_worker_is_judged_by_its_own_recorded_worker_timeout(db: Any) -> None:
    """A rolling deploy lowers worker_timeout (60 s to 2 s here): the new workers' sweep judges
    an old worker by the worker_timeout its document records (it gives its runs up at that
    age), never declaring it dead between two of its heartbeats and recovering the job it is
    running; past its own timeout it is dead. A document without a readable one is judged by
    the sweeper's."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"n": JobDef(handler=noop)}, worker_timeout=2.0)
    workers = p.storage.workers.coll
    old = await plant_dead_worker_job(p, "n", seconds_ago=10, worker_id="old-healthy")
    await workers.update_one({"_id": "old-healthy"}, {"$set": {"worker_timeout": 60.0}})
    gone = await plant_dead_worker_job(p, "n", seconds_ago=70, worker_id="old-gone")
    await workers.update_one({"_id": "old-gone"}, {"$set": {"worker_timeout": 60.0}})
    odd = await plant_dead_worker_job(p, "n", seconds_ago=10, worker_id="odd")
    await workers.update_one({"_id": "odd"}, {"$set": {"worker_timeout": "sixty"}})
    assert await p.recovery.sweep(dt.datetime.now(dt.UTC)) == 2
    assert (await p.get_job(old)).status == S.RUNNING
    assert await workers.count_documents({"_id": "old-healthy"}) == 1
    assert (await p.get_job(gone)).status == S.ERRORED
    assert (await p.get_job(odd)).status == S.ERRORED


async def test_worker_declared_dead_does_not_overwrite_recovered_job(db: Any) -> None:
    release = asyncio.Event()
    reasons: list[tuple[int, str | None]] = []

    async def slow(job: Job, signal: AbortSignal) -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            reasons.append((job.attempt, f"cancelled ({signal.reason})"))
            raise
        reasons.append((job.attempt, signal.reason))
        return f"run {job.attempt}"

    jobs = {"slow": JobDef(handler=slow, resumable=True)}
    zombie = await make(db, jobs)
    await zombie.start()
    job = await zombie.schedule_job("slow")
    await wait_status(zombie, job.id, S.RUNNING)
    old_worker = zombie.worker_id
    # Another worker declares it dead (e.g. after a long pause) and recovers its job.
    rescuer = await make(db, jobs)
    await rescuer.storage.workers.unregister(old_worker)
    running = await rescuer.storage.jobs.get(ObjectId(job.id))
    assert running is not None
    recovered = await rescuer.recovery.recover(running, RunEnd(Ending.CRASHED))
    assert recovered is not None
    assert recovered["status"] == "paused"
    # The zombie notices at its next heartbeat: aborts its run and registers afresh.
    await wait_for(lambda: zombie.worker_id != old_worker, timeout=5)
    release.set()
    done = await wait_status(zombie, job.id, S.FINISHED)
    await zombie.stop()
    # Run 1 (the zombie's) was cancelled at once (no shutdown grace for a run given up) and
    # wrote nothing: the job is the recovered one, resumed as run 2 under the new registration.
    assert reasons == [(1, "cancelled (shutdown)"), (2, None)]
    assert done.result == "run 2"
    assert done.attempt == 2
    assert done.worker_id == zombie.worker_id


async def test_a_worker_silent_too_long_abandons_its_runs_and_registers_afresh(db: Any) -> None:
    from job_processor import FakeClock

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=lambda job, signal: None)}, clock=clock, worker_timeout=30
    )
    first = await processor.heartbeat.register()
    await processor.heartbeat.tick()
    assert processor.worker_id == first
    clock.advance(31)  # e.g. the event loop was blocked, or MongoDB unreachable, for 31 s
    await processor.heartbeat.tick()
    assert processor.worker_id != first
    ids = [w.id for w in (await processor.get_status()).workers]
    assert ids == [processor.worker_id]


async def test_no_job_starts_under_a_registration_that_may_have_been_declared_dead(
    db: Any,
) -> None:
    """After an outage longer than worker_timeout, a claim must not start a job: the worker is
    about to declare itself dead and re-register, and the recovery of its old id would run
    that job a second time. Nothing is claimed while its registration is stale, and a claim
    that returns under an id given up meanwhile is re-queued, not run, and no attempt used."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)

    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=work)}, clock=clock, worker_timeout=30
    )
    worker = processor.worker
    first = await processor.heartbeat.register()
    job = await processor.schedule_job("n")
    clock.advance(31)  # no heartbeat for 31 s: others may have declared this worker dead
    assert not worker.trusted()
    assert await worker.claim_once() is None
    assert (await processor.get_job(job.id)).status == S.PENDING  # not even claimed
    # a claim made under the old id that returns once the heartbeat has given that id up
    in_flight = await processor.storage.jobs.claim_next(["n"], first, clock.now())
    assert in_flight is not None
    await processor.heartbeat.tick()  # declared dead: registers afresh
    assert processor.worker_id not in ("", first) and worker.trusted()
    assert not worker.start_claimed(in_flight)
    await worker.claims.release_pending()
    requeued = await processor.get_job(job.id)
    assert (requeued.status, requeued.failures, ran) == (S.PENDING, 0, [])  # no attempt used
    assert requeued.error == "claimed while its worker was being declared dead: not run"
    claimed = await worker.claim_once()  # under the new id, it runs once
    assert claimed is not None and claimed["worker_id"] == processor.worker_id
    await asyncio.gather(*list(worker._tasks))
    done = await processor.get_job(job.id)
    assert (done.status, done.failures, ran) == (S.FINISHED, 0, [job.id])


async def test_a_heartbeat_held_up_by_an_outage_beats_again_at_once(db: Any) -> None:
    """A beat stuck for 25 s wrote the time it started: the next one goes at once, so that
    the worker does not look silent since then (nor declare itself dead 5 s later)."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=lambda job, signal: None)}, clock=clock, worker_timeout=30
    )
    heartbeat = processor.heartbeat
    first = await heartbeat.register()
    beats: list[dt.datetime] = []
    real_beat = heartbeat.workers.beat

    async def slow_first_beat(worker_id: str, now: dt.datetime, also: Any) -> Any:
        beats.append(now)
        if len(beats) == 1:
            clock.advance(25)  # the outage: this beat returns 25 s after it started
        elif len(beats) == 3:
            heartbeat.stop_event.set()
        return await real_beat(worker_id, now, also)

    heartbeat.workers.beat = slow_first_beat  # type: ignore[method-assign]
    loop = asyncio.create_task(heartbeat.loop())
    await wait_for(lambda: len(beats) >= 2)
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert beats[:2] == [start, start + dt.timedelta(seconds=25)]  # no 5 s wait in between
    clock.advance(5)
    await asyncio.wait_for(loop, 5)
    assert beats[2] == start + dt.timedelta(seconds=30)  # then the usual interval
    assert processor.worker_id == first  # never declared dead: the outage was under 30 s


async def test_a_dead_workers_hooks_are_taken_over_with_its_jobs(db: Any) -> None:
    """A hook owed by a worker declared dead is called by the sweep that declares it dead,
    about worker_timeout after its last heartbeat, not worker_timeout + the hook's timeout
    later; one owed by a client (no worker document) still gets that much time."""
    called: list[str] = []

    async def hook(job: Job) -> None:
        called.append(str(job.payload["who"]))

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    p = await make(db, {"send": JobDef(handler=noop, on_job_exited=hook)}, clock=clock)
    last_seen = clock.now() - dt.timedelta(seconds=31)  # past worker_timeout (30 s)
    await p.storage.workers.register(
        {
            "_id": "w-dead",
            "hostname": "gone",
            "pid": 1,
            "started_at": last_seen,
            "last_seen": last_seen,
        }
    )
    for who, owner in (("worker", "w-dead"), ("client", D.new_client_id())):
        doc = D.new_job("send", {"who": who}, now=last_seen)
        hook_id = D.new_id()
        doc |= {"status": "finished", "ended_at": last_seen, "end_id": hook_id}
        doc |= D.hook_owed_fields(S.FINISHED, True, hook_id, owner, last_seen)
        doc.pop("claim_name")
        await p.storage.jobs.coll.insert_one(doc)  # as a worker left it, mid-hook
    await p.heartbeat.register()
    try:
        await p.recovery.sweep(clock.now())
        await p.hooks.drain()
        assert called == ["worker"]  # the dead worker's at once; the client's waits
        for _ in range(3):  # 91 s after the record: worker_timeout + the hook's 60 s
            clock.advance(20)
            await p.heartbeat.tick()  # (a sweeper whose own heartbeat is stale does nothing)
        await p.recovery.sweep(clock.now())
        await p.hooks.drain()
        assert called == ["worker", "client"]
    finally:
        await p.heartbeat.unregister()


async def test_a_limited_claim_never_splits_a_job_from_its_slot_across_a_new_registration(
    db: Any,
) -> None:
    """The heartbeat registers afresh between the slot's acquire and the job's claim: the job
    is not claimed under the new id with its slot held by the old one (whose recovery would
    free the slot while the job runs: the limit exceeded). The slot goes back; the job waits."""
    from job_processor.core.definitions import Limit

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    one = Limit(key="one", concurrency=1)
    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=lambda job, signal: None, limit=one)}, clock=clock
    )
    worker = processor.worker
    first = await processor.heartbeat.register()
    job = await processor.schedule_job("n")
    acquire = processor.storage.limits.acquire

    async def acquire_then_reregister(*args: Any, **kwargs: Any) -> Any:
        granted = await acquire(*args, **kwargs)
        worker.worker_id = "w-new"  # the heartbeat's new registration, meanwhile
        return granted

    processor.storage.limits.acquire = acquire_then_reregister  # type: ignore[method-assign]
    assert await worker.limiter.claim(worker, 1) == 0
    assert (await processor.get_job(job.id)).status == S.PENDING  # not claimed under w-new
    assert [d for d in await processor.storage.limits.all() if d.get("holders")] == []
    worker.worker_id = first


async def test_a_claim_that_cannot_be_put_back_now_is_kept_and_known_as_never_started(
    db: Any,
) -> None:
    """MongoDB fails again while an unstarted claim is put back: it is kept for the next
    round, and meanwhile the sweep knows its run never started (no attempt counted)."""
    from pymongo.errors import AutoReconnect

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=lambda job, signal: None)}, clock=clock, worker_timeout=30
    )
    worker = processor.worker
    first = await processor.heartbeat.register()
    job = await processor.schedule_job("n")
    claimed = await processor.storage.jobs.claim_next(["n"], first, clock.now())
    assert claimed is not None
    clock.advance(31)
    assert not worker.start_claimed(claimed)  # untrusted: an orphan
    release = worker.claims.release

    async def down(doc: Any, why: str) -> Any:
        raise AutoReconnect("127.0.0.1:1: connection refused")

    worker.claims.release = down
    with pytest.raises(AutoReconnect):
        await worker.claims.release_pending()
    assert claimed["run_id"] in worker.unstarted and [d for d, _ in worker.claims.pending] == [
        claimed
    ]
    # the sweep (once this worker is registered afresh) re-queues it as never run
    await processor.heartbeat.tick()
    await processor.recovery.sweep(clock.now())
    requeued = await processor.get_job(job.id)
    assert (requeued.status, requeued.failures) == (S.PENDING, 0)
    assert claimed["run_id"] not in worker.unstarted
    worker.claims.release = release
    await worker.claims.release_pending()  # the kept one: already put back, nothing more happens
    assert worker.claims.pending == [] and (await processor.get_job(job.id)).failures == 0


async def test_runs_are_given_up_when_the_lease_expires_even_while_mongodb_is_silent(
    db: Any,
) -> None:
    """Other workers may recover this worker's jobs (and hand their limit slots on) once its
    last heartbeat is worker_timeout old: its handlers are cancelled then, at once (no
    shutdown grace), without waiting for MongoDB to answer the heartbeat again."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def deaf(job: Job, signal: AbortSignal) -> None:  # ignores its abort signal
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=deaf)}, clock=clock, worker_timeout=30, shutdown_grace=600
    )
    heartbeat = processor.heartbeat
    await heartbeat.register()
    job = await processor.schedule_job("n")
    assert await processor.worker.claim_once() is not None
    await asyncio.wait_for(started.wait(), 5)
    watch = asyncio.create_task(heartbeat.lease_watch())
    try:
        clock.advance(29)
        await asyncio.sleep(0.05)
        assert not cancelled.is_set()  # the lease still holds
        processor.worker.abort(job.id, "killed")  # in its 600 s grace when the lease ends
        clock.advance(1)
        await asyncio.sleep(0.05)
        assert not cancelled.is_set()  # exactly worker_timeout: others do not recover yet
        clock.advance(1)  # 31 s without a successful heartbeat (MongoDB silent, say)
        await asyncio.wait_for(cancelled.wait(), 5)  # not after the 600 s shutdown grace
        await asyncio.gather(*list(processor.worker._tasks))
    finally:
        heartbeat.stop_event.set()
        await watch
    left = await processor.get_job(job.id)
    assert left.status == S.RUNNING  # nothing written: it is the recovery's now
    await heartbeat.register()  # afresh, once MongoDB answers: its own sweep recovers the job
    await processor.recovery.sweep(clock.now())
    recovered = await processor.get_job(job.id)
    assert recovered.status == S.ERRORED  # one attempt: no retry
    assert recovered.error == (  # not WORKER_SILENT: this process knows why
        "its worker gave the run up: it could not reach MongoDB for worker_timeout (no "
        "heartbeat), so others could recover the job"
    )
    await heartbeat.unregister()


async def test_a_handler_that_swallows_its_cancellation_does_not_hold_its_slot(db: Any) -> None:
    """An async handler that catches CancelledError and goes on: the run ends for the worker
    (its slot is free, `handler_ignored_cancel`), the task is left to finish on its own."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    started, release = asyncio.Event(), asyncio.Event()

    async def stubborn(job: Job, signal: AbortSignal) -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores it

    processor = await init_job_processor(
        db, jobs={"n": JobDef(handler=stubborn)}, clock=clock, worker_timeout=30
    )
    await processor.heartbeat.register()
    await processor.schedule_job("n")
    assert await processor.worker.claim_once() is not None
    await asyncio.wait_for(started.wait(), 5)
    clock.advance(31)
    processor.worker.abandon_all("heartbeat_stale")
    await asyncio.wait_for(asyncio.gather(*list(processor.worker._tasks)), 5)
    assert processor.worker.runs == {} and processor.worker._claimed == 0
    release.set()  # the stray task ends by itself later


async def test_a_worker_whose_heartbeat_lands_before_its_delete_is_not_recovered(db: Any) -> None:
    """The sweep read its document as stale, but its heartbeat landed before the delete (which
    then matches nothing): it is alive, and its running jobs are left to it."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    sweeper = await make(db, {"send": JobDef(handler=noop)})
    job_id = await plant_dead_worker_job(sweeper, "send")
    await sweeper.heartbeat.register()

    async def beat_landed(worker_id: str, cutoff: Any) -> bool:
        return False

    sweeper.storage.workers.delete_stale = beat_landed  # type: ignore[method-assign]
    assert await sweeper.recovery.sweep(dt.datetime.now(dt.UTC)) == 0
    assert (await sweeper.get_job(job_id)).status == S.RUNNING
    await sweeper.heartbeat.unregister()


async def test_a_worker_that_gives_its_runs_up_mid_check_reconciles_none_of_them(db: Any) -> None:
    """The kill-request check reads the jobs running under this worker's id, then reconciles
    those it does not run. If the worker gave its runs up meanwhile (its heartbeat found it may
    have been declared dead: its id is emptied until it registers afresh), they are the
    recovery's: it reconciled them anyway, recording their hooks as owed by "" (chaos run)."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"n": JobDef(handler=noop)})
    processor.worker.worker_id = me = "w-giving-up"
    now = processor.clock.now()
    long_ago = now - dt.timedelta(seconds=600)  # a stray its reconciliation would take
    doc = D.as_running(D.new_job("n", {}, now=long_ago), me, long_ago)
    await processor.storage.jobs.insert(doc)
    jobs = processor.ownership.jobs
    read = jobs.running_on

    async def gives_up_meanwhile(worker_id: str) -> Any:
        found = await read(worker_id)
        processor.worker.worker_id = ""  # the heartbeat gave the runs up during the read
        return found

    jobs.running_on = gives_up_meanwhile  # type: ignore[method-assign]
    try:
        await processor.ownership.check(now)
    finally:
        jobs.running_on = read  # type: ignore[method-assign]
    stored = await processor.storage.jobs.get(doc["_id"])
    assert stored is not None and stored["status"] == "running"  # left to the recovery
    processor.worker.worker_id = me  # had it not given them up: reconciled, owned by it
    await processor.ownership.check(now)
    stored = await processor.storage.jobs.get(doc["_id"])
    assert stored is not None and stored["status"] != "running"
    assert stored.get("exit_hook_owner") in (None, me)


async def test_a_backlog_of_flow_records_never_delays_a_crashed_workers_recovery(db: Any) -> None:
    """The sweep reads what it acts on in one query of at most 1,000 documents; when flow
    records fill it (skipped jobs awaiting a retention only another process knows, here 1,000
    of a name this one does not define), the running jobs and owed hooks are read on their own:
    a dead worker's job is still recovered at the first sweep."""
    from job_processor.storage.job_reads import ATTENTION_LIMIT

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"send": JobDef(handler=noop)})
    now = dt.datetime.now(dt.UTC)
    backlog = [
        {"name": "elsewhere", "status": "skipped", "expiry_pending": True, "ended_at": now}
        for _ in range(ATTENTION_LIMIT)
    ]
    await p.storage.jobs.coll.insert_many(backlog)  # first in the collection's natural order
    crashed = await plant_dead_worker_job(p, "send")
    recovered = await p.recovery.sweep(p.clock.now())
    assert recovered == 1
    assert (await p.get_job(crashed)).status == S.ERRORED


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "w-no-last-seen", "hostname": "h"},
        {"_id": "w-null", "last_seen": None},
        {"_id": "w-text", "last_seen": "yesterday"},
    ],
)
async def test_a_worker_document_without_a_readable_heartbeat_is_removed_not_fatal(
    db: Any, doc: dict[str, Any]
) -> None:
    """A worker document another program wrote (or damaged) whose `last_seen` is not a date
    shows no heartbeat: the sweep removes it (`worker_document_invalid`) and recovers its jobs;
    it used to crash every worker's sweep, and with it the processor's loops and `start()`."""

    async def noop(job: Job, signal: AbortSignal) -> str:
        return "ok"

    p = await make(db, {"send": JobDef(handler=noop)})
    crashed = await plant_dead_worker_job(p, "send", worker_id=str(doc["_id"]))
    await db["job_processor_workers"].replace_one({"_id": doc["_id"]}, doc)
    async with p:  # its start sweeps: no crash
        stored = await wait_status(p, crashed, S.ERRORED)
        later = await p.schedule_job("send")
        await wait_status(p, later.id, S.FINISHED)
        assert not p.failed.is_set()
    assert await db["job_processor_workers"].find_one({"_id": doc["_id"]}) is None
    assert stored.error is not None


async def test_a_worker_neither_claims_nor_starts_a_claim_in_its_leases_last_moments(
    db: Any,
) -> None:
    """A claim that lands just before the worker's lease ends, its reply after, was never
    started by the worker, but a sweep of another worker recorded it as crashed (an attempt
    used, for a run that never happened). From `heartbeat_interval` (at most a quarter of
    `worker_timeout`) before its lease ends, a worker sends no claim, and a claim whose
    reply comes then is put back unstarted; the next successful heartbeat claims again."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    p = await make(db, {"send": JobDef(handler=noop, max_attempts=1)}, clock=clock)
    await p.heartbeat.register()
    me = p.worker.worker_id
    job_id = (await p.schedule_job("send", {})).id
    clock.advance(1.6)  # worker_timeout 2 s, heartbeat_interval 0.5 s: in the last 0.5 s
    assert p.worker.trusted() and not p.worker.may_claim(me)
    assert await p.worker.claim_batch() == 0
    assert (await p.get_job(job_id)).status == S.PENDING
    # a claim sent before, whose reply comes now, is put back unstarted (no attempt used)
    claimed = await p.storage.jobs.claim_next(["send"], me, clock.now(), budget=2)
    assert claimed is not None and not p.worker.start_claimed(claimed)
    await p.worker.claims.release_pending()
    back = await p.get_job(job_id)
    assert back.status == S.PENDING and back.attempt == 0
    await p.heartbeat.tick()  # a beat lands: the lease is whole again
    assert p.worker.may_claim(me)
    assert await p.worker.claim_batch() == 1
    await wait_status(p, job_id, S.FINISHED)
    await p.stop()
