"""The producer's API on a server: delay=, schedule_jobs, wait_for / result, and short outages
ridden out without a job lost or written twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from job_processor import (
    AbortSignal,
    DatabaseUnreachableError,
    DoNotRetry,
    InvalidArgumentError,
    InvalidDefinitionError,
    InvalidPayloadError,
    Job,
    JobDef,
    JobFailedError,
    JobSpec,
    JobStatus,
    UnknownJobError,
    init_job_processor,
)
from job_processor.engine import waits
from job_processor.storage import transient
from tests.helpers import FAST, CommandNames, make, wait_for, wait_status

S = JobStatus


async def echo(job: Job, signal: AbortSignal) -> Any:
    return job.payload.get("n")


async def fails(job: Job, signal: AbortSignal) -> None:
    raise DoNotRetry("the provider said no")


async def blocks(job: Job, signal: AbortSignal) -> None:
    await signal.wait()
    signal.raise_if_aborted()


JOBS = {
    "echo": JobDef(handler=echo),
    "fails": JobDef(handler=fails),
    "blocks": JobDef(handler=blocks),
    "solo": JobDef(handler=echo, concurrency="exclusive"),
}


async def test_delay_counts_from_now_and_excludes_scheduled_for(db: Any) -> None:
    p = await make(db, JOBS)
    before = p.clock.now()
    job = await p.schedule_job("echo", {"n": 1}, delay=dt.timedelta(minutes=5))
    assert (
        before + dt.timedelta(minutes=5)
        <= job.scheduled_for
        <= p.clock.now() + dt.timedelta(minutes=5)
    )
    soon = await p.schedule_job("echo", delay=1.5)
    assert (soon.scheduled_for - soon.created_at).total_seconds() == pytest.approx(1.5, abs=0.01)
    with pytest.raises(Exception, match="give delay or scheduled_for, not both"):
        await p.schedule_job("echo", scheduled_for=p.clock.now(), delay=5)


async def test_a_batch_keeps_its_order_dedups_and_skips_like_single_calls(db: Any) -> None:
    p = await make(db, JOBS)
    existing = await p.schedule_job("echo", {"n": 0}, key="order-7")
    solo = await p.schedule_job("solo")
    jobs = await p.schedule_jobs(
        [
            ("echo", {"n": 1}),
            JobSpec("echo", {"n": 2}, key="order-7"),  # held by an active job: that job
            JobSpec("echo", {"n": 3}, key="order-8", priority=5, delay=60),
            JobSpec("echo", {"n": 4}, key="order-8"),  # an earlier item's key: its job
            ("solo", {}),  # exclusive, already active: skipped
        ]
    )
    assert jobs[0].payload == {"n": 1} and jobs[0].status == S.PENDING
    assert jobs[1].id == existing.id
    assert jobs[2].priority == 5 and jobs[2].scheduled_for > jobs[2].created_at
    assert jobs[3].id == jobs[2].id
    assert jobs[4].status == S.SKIPPED and jobs[4].conflicting_job_id == solo.id
    stored = await p.list_jobs(limit=100)
    assert len(stored) == 5  # existing, solo, 1, 3, the skipped record: nothing twice
    assert await p.schedule_jobs([]) == []


async def test_a_batch_with_one_bad_item_writes_nothing_and_names_it(db: Any) -> None:
    p = await make(db, JOBS)
    items: list[Any] = [("echo", {"n": i}) for i in range(3)]
    with pytest.raises(UnknownJobError, match=r"item 3: unknown job 'ecoh' \(did you mean 'echo'"):
        await p.schedule_jobs([*items, ("ecoh", {})])
    with pytest.raises(InvalidPayloadError, match=r"item 1: .*'at' is a datetime without"):
        await p.schedule_jobs([items[0], ("echo", {"at": dt.datetime(2030, 1, 1)})])
    assert await p.list_jobs() == []


async def test_a_large_batch_is_one_insert_per_thousand_jobs(mongo_url: str, db: Any) -> None:
    commands = CommandNames()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[commands]
    )
    try:
        p = await init_job_processor(client[db.name], jobs=JOBS, **FAST)
        commands.names.clear()
        jobs = await p.schedule_jobs([("echo", {"n": i}) for i in range(2500)])
        assert commands.names == ["insert", "insert", "insert"]
    finally:
        await client.close()
    assert [j.payload["n"] for j in jobs] == list(range(2500))
    assert await db[f"{p.storage.prefix}jobs"].count_documents({}) == 2500


async def test_wait_for_and_result_see_what_another_process_ended(db: Any) -> None:
    worker = await make(db, JOBS)
    producer = await make(db, JOBS)  # shares only the database with the worker
    async with worker:
        finished = await producer.schedule_job("echo", {"n": 42})
        failed = await producer.schedule_job("fails")
        running = await producer.schedule_job("blocks")
        assert await producer.result(finished.id, timeout=10) == 42
        assert (await producer.wait_for(finished.id)).status == S.FINISHED
        with pytest.raises(JobFailedError) as caught:
            await producer.result(failed.id, timeout=10)
        assert (caught.value.job_id, caught.value.status) == (failed.id, "errored")
        assert "the provider said no" in (caught.value.error or "")
        await wait_status(worker, running.id, S.RUNNING)
        with pytest.raises(TimeoutError) as still:
            await producer.wait_for(running.id, timeout=0.5)
        assert str(still.value) == (
            f"job {running.id} (blocks) is still running after 0.5s: it runs on worker "
            f"{worker.worker_id}"
        )
        waiting = asyncio.create_task(producer.result(running.id, timeout=10))
        await asyncio.sleep(0.2)
        await producer.kill_job(running.id)
        with pytest.raises(JobFailedError, match="killed"):
            await waiting
    # why a job is still pending, when the database tells (the worker has stopped now)
    later = await producer.schedule_job("echo", {"n": 1}, delay=3600)
    with pytest.raises(TimeoutError, match=r"pending after 0.1s: it is scheduled for 20"):
        await producer.wait_for(later.id, timeout=0.1)
    due = await producer.schedule_job("echo", {"n": 2})
    with pytest.raises(TimeoutError, match=r"0.1s: no live worker claims 'echo': start one that"):
        await producer.wait_for(due.id, timeout=0.1)
    await producer.storage.paused.pause("echo", "ops", producer.clock.now())
    with pytest.raises(TimeoutError, match=r"0.1s: 'echo' is paused \(job-processor names resume"):
        await producer.wait_for(due.id, timeout=0.1)
    solo = await producer.schedule_job("solo")
    skipped = await producer.schedule_job("solo")
    with pytest.raises(JobFailedError, match=rf"skipped \(exclusive\): job {solo.id} was active"):
        await producer.result(skipped.id, timeout=1)
    assert solo.status == S.PENDING
    for bad in (float("nan"), float("inf"), 10**400, -1, "5"):  # 10**400: past a float
        with pytest.raises(InvalidArgumentError, match="timeout must be a finite number"):
            await producer.wait_for(solo.id, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"^item 0: job 'echo': delay .* is too long"):
        await producer.schedule_jobs([JobSpec("echo", {}, delay=10**400)])


# ---- short outages: retried within the budget, never written twice -----------------------------


def lose_the_reply(coll: Any, method: str, monkeypatch: pytest.MonkeyPatch, times: int = 1) -> None:
    """The first `times` calls of `method` reach the server, then their reply is lost."""
    real = getattr(coll, method)
    left = [times]

    async def landed_then_lost(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if left[0] > 0:
            left[0] -= 1
            raise AutoReconnect("connection closed (the reply was lost)")
        return result

    monkeypatch.setattr(coll, method, landed_then_lost)


async def test_a_lost_reply_is_retried_and_recognised_not_written_twice(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make(db, JOBS)
    coll = p.storage.jobs.coll
    lose_the_reply(coll, "insert_one", monkeypatch)
    job = await p.schedule_job("echo", {"n": 1})
    lose_the_reply(coll, "insert_many", monkeypatch)
    batch = await p.schedule_jobs([("echo", {"n": i}) for i in range(10)])
    assert len({j.id for j in batch}) == 10
    lose_the_reply(coll, "insert_one", monkeypatch)
    solo = await p.schedule_job("solo")
    lose_the_reply(coll, "insert_one", monkeypatch)
    skipped = await p.schedule_job("solo")  # its skipped record's reply is lost: written once
    assert skipped.status == S.SKIPPED
    assert await coll.count_documents({}) == 1 + 10 + 2
    lose_the_reply(coll, "find_one_and_update", monkeypatch)
    killed = await p.kill_job(job.id)
    assert killed.status == S.KILLED
    lose_the_reply(coll, "find_one_and_update", monkeypatch)
    retried = await p.retry_job(job.id)  # the retry landed: recognised by its retry id
    assert retried.status == S.PENDING
    lose_the_reply(p.storage.events.coll, "insert_one", monkeypatch)
    event = await p.emit("signed_up", {"user": 1})
    assert await p.storage.events.coll.count_documents({}) == 1
    assert solo.status == S.PENDING and event.id


async def test_past_the_budget_the_call_says_where_and_how_long(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make(db, JOBS, producer_retry_seconds=0.5)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("127.0.0.1:1: connection refused")

    monkeypatch.setattr(p.storage.jobs.coll, "insert_one", down)
    with pytest.raises(DatabaseUnreachableError, match=r"did not answer for 0\.\ds .*refused"):
        await p.schedule_job("echo")
    with pytest.raises(InvalidDefinitionError, match="producer_retry_seconds must be"):
        await make(db, JOBS, producer_retry_seconds=-1)
    off = await make(db, JOBS, producer_retry_seconds=0)
    monkeypatch.setattr(off.storage.jobs.coll, "insert_one", down)
    with pytest.raises(AutoReconnect):  # 0: no retry, the driver's error as it is
        await off.schedule_job("echo")


# ---- review findings: the deadline, an outage while waiting, odd delays, cut batches ------------


async def test_a_job_that_ends_between_the_last_paced_read_and_the_deadline_is_returned(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read at the deadline decides: no TimeoutError for a job that ended before it."""
    p = await make(db, JOBS)
    job = await p.schedule_job("echo", {"n": 1})
    real = p.storage.jobs.get_light
    reads = 0

    async def first_read_then_killed(oid: Any) -> Any:
        nonlocal reads
        doc = await real(oid)
        reads += 1
        if reads == 1:  # ended by someone else right after the waiter's first read
            await p.storage.jobs.coll.update_one(
                {"_id": oid}, {"$set": {"status": "killed"}, "$unset": {"claim_name": ""}}
            )
        return doc

    monkeypatch.setattr(p.storage.jobs, "get_light", first_read_then_killed)
    # the wait's clock stands still, so however slow the first read is on a loaded machine it
    # ends before the deadline; the poll (not a change stream) is what this is about
    frozen = time.monotonic()
    monkeypatch.setattr(waits, "time", SimpleNamespace(monotonic=lambda: frozen))
    p.waker.blocking = False
    ended = await p.wait_for(job.id, timeout=0.05)  # the next paced read would be at 0.1 s
    assert ended.status == S.KILLED and reads == 2


async def test_an_outage_while_waiting_is_ridden_out_only_until_the_deadline(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make(db, JOBS, producer_retry_seconds=30)
    job = await p.schedule_job("echo")

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("127.0.0.1:1: connection refused")

    monkeypatch.setattr(p.storage.jobs, "get_light", down)
    began = asyncio.get_running_loop().time()
    with pytest.raises(DatabaseUnreachableError, match=r"AutoReconnect: 127\.0\.0\.1:1: conn"):
        await p.wait_for(job.id, timeout=0.5)
    assert asyncio.get_running_loop().time() - began < 5, "not the 30 s budget"
    # down before the wait opens its change stream (a producer that does not know yet whether
    # the server's streams block tries one first): that is bounded by the deadline too
    p.waker.blocking = None
    monkeypatch.setattr(p.storage.jobs, "watch_one", down)
    began = asyncio.get_running_loop().time()
    with pytest.raises(DatabaseUnreachableError, match=r"AutoReconnect: 127\.0\.0\.1:1: conn"):
        await p.wait_for(job.id, timeout=0.5)
    assert asyncio.get_running_loop().time() - began < 5, "not the 30 s budget"


@pytest.mark.parametrize("budget", [10, 0])
async def test_a_wait_whose_reads_hang_ends_at_its_deadline_without_the_reason(
    db: Any, monkeypatch: pytest.MonkeyPatch, budget: float
) -> None:
    """The reads behind a timeout's reason are given half a second each, with retries turned
    off too (`producer_retry_seconds=0` ran them with no bound: a server that did not answer
    held the TimeoutError up until the driver's own timeout)."""
    p = await make(db, JOBS, producer_retry_seconds=budget)
    job = await p.schedule_job("echo")  # no worker: it stays pending
    never = asyncio.Event()

    async def hangs(*args: Any, **kwargs: Any) -> Any:
        await never.wait()

    monkeypatch.setattr(p.storage.paused, "names", hangs)
    async with asyncio.timeout(10):  # without the bound: never
        with pytest.raises(TimeoutError) as caught:
            await p.wait_for(job.id, timeout=0.2)
    assert "is paused" not in str(caught.value) and "live worker" not in str(caught.value)
    # the job's own reads, hanging: bounded by the deadline as well
    monkeypatch.setattr(p.storage.jobs, "get_light", hangs)
    async with asyncio.timeout(10):
        with pytest.raises((TimeoutError, DatabaseUnreachableError)):
            await p.wait_for(job.id, timeout=0.2)


async def test_a_delay_too_long_for_a_date_is_refused_naming_the_job_and_the_item(
    db: Any,
) -> None:
    p = await make(db, JOBS)
    for delay in (float("inf"), 1e12, dt.timedelta.max):
        with pytest.raises(InvalidArgumentError, match=r"'echo': delay .* too long"):
            await p.schedule_job("echo", delay=delay)
        with pytest.raises(InvalidArgumentError, match=r"item 1\b.*too long"):
            await p.schedule_jobs([("echo", {}), JobSpec("echo", {}, delay=delay)])
    assert await p.storage.jobs.coll.count_documents({}) == 0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidDefinitionError, match="finite number of seconds"):
            await make(db, JOBS, producer_retry_seconds=bad)


async def test_a_batch_cut_by_an_outage_says_which_items_were_written(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make(db, JOBS, producer_retry_seconds=2)  # (a chunk of 1,000 may take 0.5 s)
    coll = p.storage.jobs.coll
    real = coll.insert_many
    calls = 0

    async def second_chunk_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise AutoReconnect("127.0.0.1:1: connection refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(coll, "insert_many", second_chunk_fails)
    with pytest.raises(DatabaseUnreachableError, match=r"Items 0 to 999 .* were written") as cut:
        await p.schedule_jobs([("echo", {"n": i}) for i in range(2500)])
    assert cut.value.failed_at == 1000
    assert [j.payload["n"] for j in cut.value.written] == list(range(1000))
    assert await coll.count_documents({}) == 1000


async def test_a_cut_flow_batch_is_resumed_with_error_remaining(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`items[error.failed_at:]` of a flow batch named earlier items (a JobSpec, an index) that
    it no longer held: refused. `error.remaining` names the jobs written instead."""
    p = await make(db, JOBS, producer_retry_seconds=1)
    coll = p.storage.jobs.coll
    real, calls, down = coll.insert_many, 0, True

    async def second_chunk_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls >= 2 and down:
            raise AutoReconnect("127.0.0.1:1: connection refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(coll, "insert_many", second_chunk_fails)
    parts = [JobSpec("echo", {"n": n}) for n in range(1001)]
    total = JobSpec("echo", {"total": True}, after=[*parts[998:], 0])
    items = [*parts, total, JobSpec("echo", {"last": True}, after=[total, 1000])]
    with pytest.raises(DatabaseUnreachableError, match=r"error\.remaining") as cut:
        await p.schedule_jobs(items)
    assert cut.value.failed_at == 1000
    down = False  # MongoDB is back
    rest = cut.value.remaining
    assert [r.payload for r in rest] == [{"n": 1000}, {"total": True}, {"last": True}]
    written = {j.payload["n"]: j.id for j in cut.value.written}
    assert rest[1].after == [written[998], written[999], rest[0], written[0]]
    assert rest[2].after == [rest[1], 0]
    again = await p.schedule_jobs(rest)
    assert again[1].after == [written[998], written[999], again[0].id, written[0]]
    assert again[2].after == [again[1].id, again[0].id]
    assert await coll.count_documents({}) == 1003


def test_every_error_pickles_with_its_fields() -> None:
    import pickle

    import job_processor as jp

    failed = pickle.loads(pickle.dumps(JobFailedError("a1", "errored", "boom\ntrace")))
    assert (failed.job_id, failed.status, failed.error, str(failed)) == (
        "a1",
        "errored",
        "boom\ntrace",
        "job a1 errored: boom",
    )
    unknown = pickle.loads(pickle.dumps(UnknownJobError("ecko", ["echo"])))
    assert unknown.name == "ecko" and "did you mean" in str(unknown)
    cut = DatabaseUnreachableError("down")
    cut.failed_at = 3
    assert pickle.loads(pickle.dumps(cut)).failed_at == 3
    errors = [
        v for v in vars(jp).values() if isinstance(v, type) and issubclass(v, jp.JobProcessorError)
    ]
    assert len(errors) > 5
    for cls in errors:
        error = cls.__new__(cls)
        error.args = ("x",)
        assert type(pickle.loads(pickle.dumps(error))) is cls


async def test_at_most_ten_waiters_of_a_processor_hold_a_change_stream(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting change stream holds a pooled connection: past STREAM_WAITERS, waiters poll."""
    from job_processor.engine import jobs_api

    p = await make(db, JOBS)
    job = await p.schedule_job("echo", delay=3600)
    opened = 0

    class Blocking:  # a stream of a replica set: try_next waits for a change
        async def try_next(self) -> None:
            await asyncio.sleep(0.5)

        async def close(self) -> None: ...

    async def watch_one(oid: Any, max_await_ms: int, baseline: int = 0) -> Blocking:
        nonlocal opened
        opened += 1
        return Blocking()

    stored = await p.storage.jobs.get(ObjectId(job.id))

    async def get(oid: Any) -> Any:  # the job as stored: no read that a loaded server slows
        return stored

    monkeypatch.setattr(p.waker, "blocking", True)
    monkeypatch.setattr(p.storage.jobs, "watch_one", watch_one)
    monkeypatch.setattr(p.storage.jobs, "get_light", get)
    waits = [p.wait_for(job.id, timeout=0.3) for _ in range(jobs_api.STREAM_WAITERS + 2)]
    outcomes = await asyncio.gather(*waits, return_exceptions=True)
    assert all(isinstance(o, TimeoutError) for o in outcomes)
    assert opened == jobs_api.STREAM_WAITERS
    assert p._waiters_on_streams == 0


async def test_ten_waiters_follow_a_stream_the_others_poll_and_each_gives_its_stream_back(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """producers.md: at most 10 `wait_for` calls of one processor follow their job on a change
    stream at once, the others poll; a wait that returns gives its stream back. On a stream,
    a `timeout` is read at once more only when the stream's wait (its `getMore`, up to a
    second) returns: at most a second past the deadline."""
    from job_processor.engine.jobs_api import STREAM_WAITERS

    assert STREAM_WAITERS == 10  # the number the doc prints
    p = await make(db, JOBS)  # never started: the jobs end by kills
    jobs = await p.schedule_jobs([JobSpec("echo", {"n": n}, delay=3600) for n in range(12)])
    changed = {ObjectId(j.id): asyncio.Event() for j in jobs}
    streams: list[ObjectId] = []
    reads: Counter[ObjectId] = Counter()

    class Stream:  # a replica set's: a getMore waits for a change, up to its max await (1 s)
        def __init__(self, oid: ObjectId) -> None:
            self.oid = oid

        async def try_next(self) -> dict[str, Any] | None:
            event = changed.setdefault(self.oid, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), 1.0)
            except TimeoutError:
                return None
            return {"documentKey": {"_id": self.oid}}

        async def close(self) -> None: ...

    async def watch_one(oid: ObjectId, max_await_ms: int, baseline: int = 0) -> Stream:
        streams.append(oid)
        return Stream(oid)

    real_get = p.storage.jobs.get_light

    async def get(oid: ObjectId) -> Any:
        reads[oid] += 1
        return await real_get(oid)

    monkeypatch.setattr(p.waker, "blocking", True)
    monkeypatch.setattr(p.storage.jobs, "watch_one", watch_one)
    monkeypatch.setattr(p.storage.jobs, "get_light", get)
    waits = [asyncio.ensure_future(p.wait_for(j.id)) for j in jobs]
    await wait_for(lambda: len(reads) == 12)  # every wait has made its first read
    assert len(streams) == len(set(streams)) == 10
    polling = set(changed) - set(streams)
    assert len(polling) == 2
    await wait_for(lambda: all(reads[oid] >= 3 for oid in polling))  # 0.1 s, then 0.2 s on
    assert all(reads[oid] == 1 for oid in streams)  # read again on a change only
    for j in jobs:
        await p.kill_job(j.id)
    for oid in streams:
        changed[oid].set()
    ended = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert {j.status for j in ended} == {S.KILLED}
    assert p._waiters_on_streams == 0
    await p.wait_for(jobs[0].id)  # a stream again: the ten were given back
    assert len(streams) == 11
    # a deadline on a stream: the read after it waits for the getMore under way
    late = await p.schedule_job("echo", delay=3600)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError, match=r"is still pending after 0\.3s"):
        await p.wait_for(late.id, timeout=0.3)
    assert 0.3 <= loop.time() - began < 0.3 + 1.0 + 0.5
    assert p._waiters_on_streams == 0


async def test_a_lost_insert_reply_is_recognised_even_after_the_job_ran_and_expired(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_finished=False: the job the first attempt inserted has already run (and, without
    the retention floor, expired) when the producer's retry arrives; the retry must still find
    it by its _id, not insert and run it a second time."""
    runs: list[str] = []
    exited = asyncio.Event()

    async def once(job: Job, signal: AbortSignal) -> None:
        runs.append(job.id)

    async def note_exit(job: Job) -> None:
        exited.set()

    jobs = {"once": JobDef(handler=once, keep_finished=False, on_job_exited=note_exit)}
    worker = await make(db, jobs)
    producer = await make(db, jobs)
    coll = producer.storage.jobs.coll
    real = coll.insert_one
    lost: list[bool] = []

    async def landed_ran_then_lost(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if not lost:
            lost.append(True)
            await asyncio.wait_for(exited.wait(), 15)  # it ran
            for _ in range(300):  # its hook's record, which writes its expiry
                if await coll.find_one({"expires_at": {"$exists": True}}):
                    break
                await asyncio.sleep(0.05)
            # the TTL monitor passes now (MongoDB's runs every 60 s, at any moment)
            await coll.delete_many({"expires_at": {"$lte": producer.clock.now()}})
            raise AutoReconnect("connection closed (the reply was lost)")
        return result

    monkeypatch.setattr(coll, "insert_one", landed_ran_then_lost)
    async with worker:
        job = await producer.schedule_job("once")
    assert job.status == S.FINISHED  # the retry found the job the first attempt made
    assert runs == [job.id]


async def test_wait_for_on_a_change_stream_gone_silent_keeps_its_timeout(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change stream whose read never answers (a connection gone silent: PyMongo's
    socketTimeoutMS is none by default): `wait_for(timeout=1)` still ends about a second
    after its deadline (it blocked for as long as the read did)."""
    import time

    async def echo(job: Job, signal: AbortSignal) -> None:
        return None

    class Silent:
        async def try_next(self) -> Any:
            await asyncio.Event().wait()

        async def close(self) -> None:
            return None

    p = await make(db, {"echo": JobDef(handler=echo)})
    job = await p.schedule_job("echo", delay=3600)
    p.waker.blocking = True  # a replica set's streams, which block

    async def watch(*args: Any, **kw: Any) -> Any:
        return Silent()

    monkeypatch.setattr(p.storage.jobs, "watch_one", watch)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="still pending"):
        await asyncio.wait_for(p.wait_for(job.id, timeout=1), 10)
    assert time.monotonic() - began < 5


async def test_a_wait_on_a_job_held_back_by_its_full_limit_says_so(db: Any) -> None:
    """A wait's TimeoutError says why a pending job has not started: a job held back by its
    full cluster-wide limit (concurrency, or rate) names the limit, not "busy" workers (the
    worker has free slots)."""
    from job_processor import Limit

    one = Limit(key="provider", concurrency=1)
    hourly = Limit(key="report-api", rate=1, per_seconds=3600)
    jobs = {"mail": JobDef(handler=blocks, limit=one), "report": JobDef(handler=echo, limit=hourly)}
    p = await make(db, jobs, concurrency=4)
    async with p:
        first = await p.schedule_job("mail")
        await wait_status(p, first.id, S.RUNNING)
        second = await p.schedule_job("mail")
        with pytest.raises(TimeoutError, match=r"its limit 'provider' is full: 1 of 1 running$"):
            await p.wait_for(second.id, timeout=0.5)
        await p.kill_job(first.id)
        await p.result((await p.schedule_job("report")).id, timeout=10)
        held = await p.schedule_job("report")
        with pytest.raises(
            TimeoutError, match=r"'report-api' is full: 1 started in the last 3600s, its rate is 1$"
        ):
            await p.wait_for(held.id, timeout=0.5)


async def test_trigger_cron_rides_out_a_lost_reply_and_an_outage_like_schedule_job(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trigger_cron creates a job, a producer call: a lost insert reply is recognised (one
    task), and an outage past producer_retry_seconds ends in DatabaseUnreachableError, as for
    schedule_job (not the driver's raw error)."""
    from job_processor import CronDef

    crons = {"nightly": CronDef(handler=echo, cron_string="0 2 * * *")}
    p = await make(db, JOBS, crons=crons, producer_retry_seconds=0.5)
    coll = p.storage.jobs.coll
    lose_the_reply(coll, "insert_one", monkeypatch)
    job = await p.trigger_cron("nightly")
    assert job.status == S.PENDING
    assert await coll.count_documents({"name": "nightly"}) == 1
    monkeypatch.undo()

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("127.0.0.1:1: connection refused")

    monkeypatch.setattr(coll, "insert_one", down)
    with pytest.raises(DatabaseUnreachableError):
        await p.trigger_cron("nightly")


async def test_a_wait_judges_a_worker_by_the_worker_timeout_its_document_records(
    db: Any,
) -> None:
    """A producer with a 10 s worker_timeout waits on a job whose worker records 60 s and was
    last seen 20 s ago: alive by its own timeout (status, the sweep). The wait's reason does
    not say that no live worker claims the name."""
    from job_processor.core import documents as D

    producer = await make(db, JOBS, worker_timeout=10.0)
    now = producer.clock.now()
    doc = D.new_worker(now - dt.timedelta(seconds=20), None, None, 1, ["echo"], 60.0)
    await producer.storage.workers.register(doc)
    due = await producer.schedule_job("echo", {"n": 1})
    with pytest.raises(TimeoutError, match="busy with other jobs") as still:
        await producer.wait_for(due.id, timeout=0.1)
    assert "no live worker claims" not in str(still.value)


async def test_a_short_wait_does_not_spin_on_a_stream_that_answers_at_once(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """producers.md: wait_for follows a change stream only where the server's streams block,
    and polls otherwise, "never more than 5 [reads] in any 5 s ... plus one at the deadline".
    A stream whose getMore answers at once with nothing (nx-27017's) was recognised as not
    blocking only when the wait had more than 0.3 s left: a wait with a shorter timeout asked
    it again and again in a tight loop until its deadline, and the next short wait did the
    same."""
    p = await make(db, JOBS)  # a producer that is not started: it has not learnt the server
    job = await p.schedule_job("echo", delay=3600)
    asked = 0

    class AnswersAtOnce:  # nx-27017's stream: its getMore never waits for a change
        async def try_next(self) -> None:
            nonlocal asked
            asked += 1
            await asyncio.sleep(0)
            return None

        async def close(self) -> None: ...

    async def watch_one(oid: ObjectId, max_await_ms: int, baseline: int = 0) -> AnswersAtOnce:
        return AnswersAtOnce()

    monkeypatch.setattr(p.storage.jobs, "watch_one", watch_one)
    assert p.waker.blocking is None
    for _ in range(3):
        with pytest.raises(TimeoutError, match=r"is still pending after 0\.3s"):
            await p.wait_for(job.id, timeout=0.3)
    assert asked <= 3, f"the stream was asked {asked} times in three waits of 0.3 s"
    assert p.waker.blocking is False  # learnt: the next waits poll at once


async def test_a_resumed_blocking_stream_does_not_make_every_later_wait_poll(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyMongo answers a change stream's try_next at once, empty, when it resumes the stream
    after a resumable error (a lost cursor, a network error): one such answer made every later
    wait_for of a producer process poll, on a replica set whose streams block."""
    from pymongo.asynchronous.command_cursor import AsyncCommandCursor
    from pymongo.errors import CursorNotFound

    p = await make(db, JOBS)  # a producer (an app that schedules and waits): no waker running
    job = await p.schedule_job("echo", delay=3600)
    real_send = AsyncCommandCursor._send_message
    kill_next = True

    async def send(self: Any, operation: Any) -> Any:
        nonlocal kill_next
        if getattr(operation, "name", "") == "getMore" and operation.max_await_time_ms:
            if kill_next:  # the stream's cursor was killed: the server says so at once
                kill_next = False
                raise CursorNotFound("cursor id 1 not found", 43, {"ok": 0, "code": 43})
            await asyncio.sleep(operation.max_await_time_ms / 1000)  # a replica set: no change
        return await real_send(self, operation)

    monkeypatch.setattr(AsyncCommandCursor, "_send_message", send)
    p.waker.blocking = True  # a replica set's streams, which block
    with pytest.raises(TimeoutError, match="still pending"):
        await p.wait_for(job.id, timeout=1.5)
    assert not kill_next  # the resumable error was met (and ridden out by PyMongo's resume)
    assert p.waker.blocking is not False, (
        "one resume of a blocking stream made every later wait_for of the process poll"
    )


@pytest.mark.parametrize(
    "when",
    [  # aware, valid datetimes whose UTC instant is outside datetime's range
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(1, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    ],
)
async def test_scheduled_for_outside_the_utc_range_is_an_invalid_argument(
    db: Any, when: dt.datetime
) -> None:
    """A bare OverflowError, naming neither the job nor the field (the delay= path said it)."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"n": JobDef(handler=noop)})
    with pytest.raises(
        InvalidArgumentError, match=r"job .n.: scheduled_for .* \(years 1 to 9999\)"
    ):
        await processor.schedule_job("n", {}, scheduled_for=when)
    with pytest.raises(InvalidArgumentError, match="item 0"):
        await processor.schedule_jobs([JobSpec("n", {}, scheduled_for=when)])


async def test_a_typed_payload_with_an_alias_path_reaches_the_handler_as_scheduled(
    db: Any,
) -> None:
    """guide.md "Typed payloads": the payload is stored in the form that reads back as the
    same value (a field read through an AliasPath reached the handler as its default)."""
    from pydantic import AliasPath, BaseModel, Field

    class Nested(BaseModel):
        a: int = Field(1, validation_alias=AliasPath("outer", "inner"))

    async def seen(job: Job[Nested], signal: AbortSignal) -> int:
        return job.payload.a

    p = await make(db, {"nested": JobDef(handler=seen, payload_model=Nested)})
    job = await p.run_job("nested", Nested(outer={"inner": 9}))
    assert job.status == JobStatus.FINISHED
    assert job.output is not None and job.output.result == 9


async def test_a_computed_field_under_extra_forbid_is_not_stored(db: Any) -> None:
    """The dump held the computed field; the worker, reading it back under extra="forbid",
    errored the job it had accepted."""
    from pydantic import BaseModel, ConfigDict, computed_field

    class Doubled(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def double(self) -> int:
            return self.x * 2

    async def doubled(job: Job[Doubled], signal: AbortSignal) -> int:
        return job.payload.double

    p = await make(db, {"doubled": JobDef(handler=doubled, payload_model=Doubled)})
    job = await p.run_job("doubled", Doubled(x=2))
    assert job.status == JobStatus.FINISHED, (job.status, job.error)
    assert job.output is not None and job.output.result == 4


async def test_a_long_timeout_without_retries_returns_an_ended_job(db: Any) -> None:
    """With producer_retry_seconds=0 each read ran under the wait's whole timeout: 1e17 s made
    a maxTimeMS past 64 bits (a bare OverflowError, for a job long ended)."""
    p = await make(db, JOBS, producer_retry_seconds=0)
    job = await p.schedule_job("echo", {"n": 1})
    await p.kill_job(job.id)
    assert (await p.wait_for(job.id, timeout=1e17)).status == S.KILLED
    assert (await p.wait_for(job.id, timeout=1e300)).status == S.KILLED


async def test_a_retry_budget_past_a_year_is_refused_naming_the_option(db: Any) -> None:
    """1e17 passed the check, then init_job_processor overflowed making a timedelta of it."""
    for budget in (1e17, 1e10):
        with pytest.raises(InvalidDefinitionError, match=r"producer_retry_seconds .*at most"):
            await make(db, JOBS, producer_retry_seconds=budget)


async def test_a_wait_longer_than_one_reads_bound_reads_again_until_the_job_ends(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read of a long wait is bounded by transient.COMMAND_BOUND, not by the whole wait:
    without retries the wait polls on and returns the job once it ends; with them, a read that
    hangs past that bound is made again (it ran until the call's whole budget was spent, then
    raised DatabaseUnreachableError with the job long ended)."""
    monkeypatch.setattr(transient, "COMMAND_BOUND", 0.3)
    off = await make(db, JOBS, producer_retry_seconds=0)
    off.waker.blocking = False  # polls
    job = await off.schedule_job("echo")  # no worker: pending until killed
    real = off.storage.jobs.get_light
    reads = 0

    async def counted(oid: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real(oid)

    monkeypatch.setattr(off.storage.jobs, "get_light", counted)
    waiting = asyncio.create_task(off.wait_for(job.id, timeout=1e17))
    await wait_for(lambda: reads >= 2, timeout=10)
    await off.kill_job(job.id)
    async with asyncio.timeout(10):
        assert (await waiting).status == S.KILLED

    p = await make(db, JOBS, producer_retry_seconds=10)
    p.waker.blocking = False
    job = await p.schedule_job("echo")
    hanging = asyncio.Event()
    never = asyncio.Event()
    real = p.storage.jobs.get_light

    async def hangs_once(oid: Any) -> Any:
        if not hanging.is_set():
            hanging.set()
            await never.wait()
        return await real(oid)

    monkeypatch.setattr(p.storage.jobs, "get_light", hangs_once)
    waiting = asyncio.create_task(p.wait_for(job.id, timeout=1e17))
    async with asyncio.timeout(5):  # without the bound: the 10 s budget, then an error
        await hanging.wait()
        await p.kill_job(job.id)
        assert (await waiting).status == S.KILLED


async def test_a_wait_on_a_paused_name_gives_a_resume_command_that_runs_as_shown(
    db: Any,
) -> None:
    """`names resume send email` (unquoted) resumes nothing: the shell splits it."""
    producer = await make(db, {"send email": JobDef(handler=echo)})
    job = await producer.schedule_job("send email", {"n": 1})
    await producer.storage.paused.pause("send email", "ops", producer.clock.now())
    with pytest.raises(TimeoutError, match=r"\(job-processor names resume 'send email'\)"):
        await producer.wait_for(job.id, timeout=0.1)


async def test_a_wait_on_the_in_memory_backend_leaves_later_waits_on_a_server_whole(
    db: Any,
) -> None:
    """A wait on an in-memory processor (mongomock adds `_id: 1` to the projection it is
    given) made every later wait of the process read only the job's `_id` on the server: a
    job "(None) is still None"."""
    from job_processor.testing import in_memory_processor

    async with in_memory_processor({"echo": JobDef(handler=echo)}) as memory:
        job = await memory.schedule_job("echo", {"n": 1})
        assert (await memory.get_job(job.id)).status == JobStatus.PENDING
        with pytest.raises(TimeoutError):
            await memory.wait_for(job.id, timeout=0.1)
    producer = await make(db, {"echo": JobDef(handler=echo)})
    job = await producer.schedule_job("echo", {"n": 2})
    with pytest.raises(TimeoutError, match=r"is still pending"):
        await producer.wait_for(job.id, timeout=0.1)
