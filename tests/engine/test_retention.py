"""Retention as a user sees it: expiry dates on ended jobs, counts trimmed, hooks respected."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, InvalidDefinitionError, Job, JobDef, JobStatus
from tests.helpers import make

S = JobStatus
DAY = dt.timedelta(days=1)


async def insert_finished(
    processor: Any,
    name: str,
    n: int,
    now: dt.datetime,
    extra: dict[int, dict[str, Any]] | None = None,
) -> None:
    """`n` jobs of `name` finished at `now`, inserted at once (a burst, or a backlog the trim
    has not caught up with); `extra`: more fields for some of them, by index."""
    from job_processor.core import documents as D

    docs = []
    for i in range(n):
        doc = D.new_job(name, {}, now=now) | {"status": "finished", "ended_at": now}
        doc.pop("claim_name")
        docs.append(doc | (extra or {}).get(i, {}))
    await processor.storage.jobs.coll.insert_many(docs)


async def ok(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def boom(job: Job, signal: AbortSignal) -> None:
    raise ValueError("no")


async def expiry(processor: Any, job_id: str) -> Any:
    doc = await processor.storage.jobs.get(ObjectId(job_id))
    return doc.get("expires_at")


async def test_ended_jobs_expire_after_their_retention(db: Any) -> None:
    jobs = {
        "default": JobDef(handler=ok),
        "failing": JobDef(handler=boom),
        "gone": JobDef(handler=ok, keep_finished=False),
        "forever": JobDef(handler=ok, keep_finished=True),
        "week": JobDef(handler=ok, keep_finished=dt.timedelta(days=7)),
    }
    processor = await make(db, jobs)
    done = {name: await processor.run_job(name) for name in jobs}  # as the final write left them
    for job in done.values():
        assert job.ended_at is not None
    assert done["default"].expires_at == done["default"].ended_at + DAY
    assert done["failing"].expires_at == done["failing"].ended_at + 30 * DAY
    # "at once": after the floor, 2 x worker_timeout (FAST's) or producer_retry_seconds + 30 s
    floor = dt.timedelta(seconds=max(2 * processor.settings.worker_timeout, 10 + 30))
    assert done["gone"].expires_at == done["gone"].ended_at + floor
    assert (await processor.get_job(done["gone"].id)).status == S.FINISHED  # a retry finds it
    assert done["forever"].expires_at is None
    assert done["week"].expires_at == done["week"].ended_at + 7 * DAY
    assert await expiry(processor, done["week"].id) == done["week"].expires_at  # as stored


async def test_processor_defaults_apply_and_an_owed_hook_delays_the_expiry(db: Any) -> None:
    seen: list[Any] = []

    async def hook(job: Job) -> None:
        seen.append(await expiry(processor, job.id))  # while the hook runs: not expiring yet

    processor = await make(
        db, {"h": JobDef(handler=ok, on_job_exited=hook)}, keep_finished=dt.timedelta(hours=2)
    )
    done = await processor.run_job("h")
    assert seen == [None]
    after = await expiry(processor, done.id)
    assert after is not None
    assert after - done.ended_at >= dt.timedelta(hours=2)  # counted from the hook's record


async def test_skipped_jobs_are_kept_like_finished_ones(db: Any) -> None:
    processor = await make(
        db,
        {"x": JobDef(handler=ok, concurrency="exclusive", keep_finished=dt.timedelta(hours=1))},
    )
    far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    await processor.schedule_job("x", scheduled_for=far)
    skipped = await processor.schedule_job("x")
    assert skipped.status == S.SKIPPED
    assert await expiry(processor, skipped.id) == skipped.created_at + dt.timedelta(hours=1)


async def test_a_count_keeps_the_most_recent_of_each_name(db: Any) -> None:
    jobs = {"a": JobDef(handler=ok, keep_finished=3), "b": JobDef(handler=ok, keep_finished=3)}
    processor = await make(db, jobs)
    runs = [await processor.run_job("a") for _ in range(8)]
    others = [await processor.run_job("b") for _ in range(2)]
    # none within the retention floor (2 x worker_timeout here): a retried insert would not
    # recognise it
    assert await processor.trimmer.run(processor.clock.now()) == 0
    later = processor.clock.now() + dt.timedelta(minutes=5)
    assert await processor.trimmer.run(later) == 5
    left = await processor.list_jobs("a", limit=100)
    assert sorted(j.id for j in left) == sorted(j.id for j in runs[-3:])  # the 3 most recent
    assert len(await processor.list_jobs("b", limit=100)) == len(others)  # under its count
    assert await processor.trimmer.run(later) == 0


async def test_a_count_is_exact_when_jobs_share_a_millisecond(db: Any) -> None:
    processor = await make(db, {"a": JobDef(handler=ok, keep_finished=10)})
    now = processor.clock.now()
    await insert_finished(processor, "a", 50, now)
    assert await processor.trimmer.run(now + dt.timedelta(minutes=5)) == 40
    assert len(await processor.list_jobs("a", limit=100)) == 10


async def test_events_are_kept_for_keep_events(db: Any) -> None:
    import pytest

    from job_processor import InvalidDefinitionError, Subscriber, init_job_processor

    async def audit(event: Any, signal: AbortSignal) -> None:
        return None

    subscribers = {"order_paid": [Subscriber("audit", handler=audit)]}
    default = await init_job_processor(db, subscribers=subscribers)
    event = await default.emit("order_paid", {"order": 1})
    stored = await db["job_processor_events"].find_one({"_id": ObjectId(event.id)})
    assert stored["expires_at"] - stored["emitted_at"] == 30 * DAY
    forever = await init_job_processor(db, subscribers=subscribers, keep_events=True)
    kept = await forever.emit("order_paid", {"order": 2})
    assert "expires_at" not in await db["job_processor_events"].find_one({"_id": ObjectId(kept.id)})
    with pytest.raises(InvalidDefinitionError, match="keep_events must be a positive timedelta"):
        await init_job_processor(db, subscribers=subscribers, keep_events=False)
    # at least the retention floor: a fan-out completed late by a sweep still finds its event
    brief = await init_job_processor(
        db, subscribers=subscribers, keep_events=dt.timedelta(seconds=5)
    )
    short = await brief.emit("order_paid", {"order": 3})
    stored = await db["job_processor_events"].find_one({"_id": ObjectId(short.id)})
    assert stored["expires_at"] - stored["emitted_at"] == brief.settings.retention.floor


async def test_mongodb_deletes_expired_documents_through_ttl_indexes(db: Any) -> None:
    """What deletes: a TTL index on `expires_at` (expireAfterSeconds 0: at that date) on the
    jobs (event deliveries included) and on the events."""
    processor = await make(db, {"a": JobDef(handler=ok)})
    await processor.emit("nothing", {})  # creates the events collection's indexes too
    for coll in ("job_processor_jobs", "job_processor_events"):
        ttl = [
            (dict(ix["key"]), ix.get("expireAfterSeconds"))
            async for ix in await db[coll].list_indexes()
            if "expireAfterSeconds" in ix
        ]
        assert ttl == [({"expires_at": 1}, 0)], (coll, ttl)


async def test_event_deliveries_follow_the_processor_defaults(db: Any) -> None:
    from job_processor import Subscriber
    from tests.helpers import wait_status

    async def audit(event: Any, signal: AbortSignal) -> None:
        return None

    processor = await make(
        db, {}, subscribers={"paid": [Subscriber("audit", handler=audit)]}, keep_finished=2 * DAY
    )
    async with processor:
        event = await processor.emit("paid", {})
        job_id = event.deliveries[0].job_id
        assert job_id is not None
        done = await wait_status(processor, job_id, S.FINISHED)
    assert done.ended_at is not None
    assert done.expires_at == done.ended_at + 2 * DAY


async def test_a_count_keeps_every_job_within_the_floor_and_trims_the_older_ones(db: Any) -> None:
    """A name ending jobs fast: the pass still deletes the older ones past the count (it does
    not stall on the recent ones), and keeps every one created within the floor; those count
    among the 10 most recent, so none of the older ones is kept by the count (it kept their
    10 newest besides)."""
    from job_processor.core import documents as D

    processor = await make(db, {"a": JobDef(handler=ok, keep_finished=10)})
    now = processor.clock.now()
    floor = processor.settings.retention.floor
    old = now - floor - dt.timedelta(minutes=1)

    def ended(at: dt.datetime) -> dict[str, Any]:
        doc = D.new_job("a", {}, now=at) | {"status": "finished", "ended_at": at}
        doc.pop("claim_name")
        return doc

    await processor.storage.jobs.coll.insert_many(
        [ended(old) for _ in range(30)] + [ended(now) for _ in range(50)]
    )
    assert await processor.trimmer.run(now) == 30  # the 30 older ones
    assert len(await processor.list_jobs("a", limit=200)) == 50


async def test_a_job_a_client_kills_gets_its_retention_from_a_worker_sweep(db: Any) -> None:
    """A JobClient knows neither the name's hook for sure nor the worker's retention: its kill
    leaves the exit to a worker's sweep, which records it (no hook here) with the expiry."""
    jobs = {"x": JobDef(handler=ok, keep_failed=3 * DAY)}
    worker = await make(db, jobs)
    client = await make(db, jobs)
    client.hooks_here = False  # as job_processor.sync.JobClient sets it
    pending = await client.schedule_job("x", delay=3600)
    killed = await client.kill_job(pending.id)
    assert killed.status == S.KILLED and killed.exit_hook == "owed"
    assert await expiry(worker, killed.id) is None  # not yet decided
    await worker.recovery.sweep(worker.clock.now() + dt.timedelta(seconds=1))
    await worker.hooks.drain()
    stored = await worker.get_job(killed.id)
    assert stored.exit_hook == "none" and stored.status == S.KILLED
    assert stored.expires_at is not None and stored.exit_hook_at is not None
    # from the sweep's record (the two dates are two readings of the clock, a ms apart at most)
    assert abs(stored.expires_at - (stored.exit_hook_at + 3 * DAY)) <= dt.timedelta(seconds=1)


async def test_deliveries_a_stopped_serial_chain_skips_expire_like_the_others(db: Any) -> None:
    from job_processor import DoNotRetry, Subscriber

    async def fails(event: Any, signal: AbortSignal) -> None:
        raise DoNotRetry("refused")

    async def fine(event: Any, signal: AbortSignal) -> None:
        return None

    subs = {
        "paid": [
            Subscriber("first", handler=fails, mode="serial"),
            Subscriber("second", handler=fine, mode="serial"),
        ]
    }
    processor = await make(db, {}, subscribers=subs, keep_finished=2 * DAY)
    async with processor:
        event = await processor.emit("paid", {})
        skipped: list[Any] = []

        async def second() -> None:
            got = await processor.get_event(event.id)
            skipped[:] = [d for d in got.deliveries if d.target == "second"]

        async def poll() -> bool:
            await second()
            return bool(skipped) and skipped[0].status == "skipped"

        deadline = asyncio.get_running_loop().time() + 15
        while not await poll():
            assert asyncio.get_running_loop().time() < deadline, skipped
            await asyncio.sleep(0.05)
    assert skipped[0].job_id is not None
    stored = await processor.get_job(skipped[0].job_id)
    assert stored.skip_reason == "chain_stopped" and stored.ended_at is not None
    assert stored.expires_at == stored.ended_at + 2 * DAY


async def test_a_count_behind_its_name_is_trimmed_again_at_the_next_sweep(db: Any) -> None:
    """A pass deletes at most a batch per name, every 5 minutes: a name ending more than that
    (1000 per 5 minutes, 3.3 jobs a second) grew without bound (a soak with one worker and 5
    jobs/s of one name with keep_finished=200: 705, then 1,100 jobs left after consecutive
    passes). A pass that deleted a whole batch now runs again at the next sweep, until the
    name is back to its count (the same soak: 1,000 then 205 deleted 16 s apart, 515 left)."""
    processor = await make(db, {"a": JobDef(handler=ok, keep_finished=10)})
    trimmer = processor.trimmer
    trimmer.batch = 20  # the production batch is 1000: the same with fewer documents
    now = processor.clock.now()
    await insert_finished(processor, "a", 55, now)
    later = now + dt.timedelta(minutes=5)
    sweep = dt.timedelta(seconds=processor.settings.worker_timeout / 2)
    assert await trimmer.maybe_run(later) == 20
    assert await trimmer.maybe_run(later + sweep) == 20  # behind: at the next sweep, not in 5 min
    assert await trimmer.maybe_run(later + 2 * sweep) == 5
    assert await trimmer.maybe_run(later + 3 * sweep) == 0  # caught up: every 5 minutes again
    assert len(await processor.list_jobs("a", limit=100)) == 10


async def test_a_batch_holding_a_kept_job_still_counts_as_behind(db: Any) -> None:
    """A job past the count whose dependents have not counted it is kept (and another worker
    may delete some first): a pass that deleted fewer than a batch from a full read is still
    behind, and runs again at the next sweep (found by a review: 35 left past the count)."""
    processor = await make(db, {"a": JobDef(handler=ok, keep_finished=10)})
    trimmer = processor.trimmer
    trimmer.batch = 20
    now = processor.clock.now()
    # the 11th newest, the first past the count, has dependents that have not counted it
    await insert_finished(processor, "a", 55, now, {44: {"has_dependents": True}})
    later = now + dt.timedelta(minutes=5)
    sweep = dt.timedelta(seconds=processor.settings.worker_timeout / 2)
    assert await trimmer.maybe_run(later) == 19
    assert trimmer.behind
    assert await trimmer.maybe_run(later + sweep) > 0  # at the next sweep, not in 5 minutes


async def test_an_exclusive_conflict_recorded_where_the_retention_is_unknown_expires_too(
    db: Any, mongo_url: str
) -> None:
    """A producer that does not define the name (a JobClient without `jobs=`, the admin's new
    job) records an exclusive conflict as skipped without knowing the name's retention: the
    record says so (`expiry_pending`) and a worker's sweep gives it the name's expiry. (It used
    to be kept for ever.)"""
    from pymongo import MongoClient

    from job_processor.ops.admin import Admin
    from job_processor.sync import JobClient

    jobs = {"x": JobDef(handler=ok, concurrency="exclusive", keep_finished=dt.timedelta(hours=2))}
    worker = await make(db, jobs)
    far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    await worker.schedule_job("x", scheduled_for=far)  # holds the name's exclusive key
    await worker.start()  # registers "x" (exclusive): how a client without it knows
    await worker.stop()
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_url, tz_aware=True)
    try:
        skipped = await asyncio.to_thread(JobClient(mongo[db.name]).schedule_job, "x")
    finally:
        mongo.close()
    assert skipped.status == S.SKIPPED
    by_admin = await Admin(db).new_job("x", {})
    assert [j.status for j in by_admin.jobs] == [S.SKIPPED]
    ids = [skipped.id, by_admin.jobs[0].id]
    for job_id in ids:
        assert await expiry(worker, job_id) is None  # not known where it was written
    await worker.recovery.sweep(worker.clock.now() + dt.timedelta(seconds=1))
    for job_id in ids:
        stored = await worker.get_job(job_id)
        # from the latest end among that name's records (one update per name): ms apart
        late = stored.expires_at - (stored.created_at + dt.timedelta(hours=2))
        assert dt.timedelta(0) <= late <= dt.timedelta(seconds=1)
    raw = await db["job_processor_jobs"].find_one({"_id": ObjectId(ids[0])})
    assert "expiry_pending" not in raw


@pytest.mark.parametrize(
    "kw",
    [
        {"keep_finished": 2**63},
        {"keep_finished": dt.timedelta(days=3_000_000)},
        {"keep_failed": dt.timedelta.max},
        {"keep_events": dt.timedelta.max},
    ],
)
async def test_a_retention_too_large_to_write_is_refused_at_init_naming_the_field(
    db: Any, kw: dict[str, Any]
) -> None:
    """A skip of 2**63 crashed the worker's loop at its first trimming pass; an expiry past
    the year 9999 turned a finished run into an error (True keeps for ever)."""
    field = next(iter(kw))
    with pytest.raises(InvalidDefinitionError, match=field):
        await make(db, {"a": JobDef(handler=ok)}, **kw)
    if field != "keep_events":
        with pytest.raises(ValueError, match=field):
            JobDef(handler=ok, **kw)


async def test_a_count_never_deletes_a_job_that_has_just_ended(db: Any) -> None:
    """A job created long ago (scheduled for later, or a long run) that has just ended is kept
    through the floor, whatever the count: its producer's `result()` still finds it."""
    from job_processor import FakeClock
    from job_processor.testing import run_until_idle

    clock = FakeClock(dt.datetime.now(dt.UTC))
    processor = await make(db, {"report": JobDef(handler=ok, keep_finished=3)}, clock=clock)
    later = await processor.schedule_job("report", {"n": 0}, delay=600)
    for n in (1, 2, 3):
        await processor.schedule_job("report", {"n": n})
    await run_until_idle(processor, advance_clock=False)  # the three quick ones finish
    clock.advance(600)
    await run_until_idle(processor, advance_clock=False)  # the scheduled one finishes now
    await processor.trimmer.run(clock.now())  # a pass right after it ended
    assert await processor.result(later.id) == "ok"
    clock.advance(3600)  # past the floor: the count applies, to the 3 most recently created
    await processor.trimmer.run(clock.now())
    left = await processor.list_jobs("report")
    assert later.id not in [j.id for j in left] and len(left) == 3


async def test_a_count_keeps_n_jobs_in_all_not_n_beyond_those_within_the_floor(db: Any) -> None:
    """scale.md: the n most recently created are kept, and every one created or ended within
    the floor. Once as many as n were created within the floor, none older is kept by the
    count: it kept n more of the older ones besides (keep_finished=3 kept 7 jobs here, 3 of
    them past the floor)."""
    from job_processor import FakeClock
    from job_processor.testing import run_until_idle

    clock = FakeClock(dt.datetime.now(dt.UTC))
    processor = await make(db, {"report": JobDef(handler=ok, keep_finished=3)}, clock=clock)
    for n in range(5):
        await processor.schedule_job("report", {"n": n})
    await run_until_idle(processor, advance_clock=False)
    clock.advance(3600)  # an hour later, past the floor (60 s)
    recent = [await processor.schedule_job("report", {"n": n}) for n in range(5, 9)]
    await run_until_idle(processor, advance_clock=False)
    assert await processor.trimmer.run(clock.now()) == 5  # every older one
    left = await processor.list_jobs("report", limit=100)
    assert sorted(j.id for j in left) == sorted(j.id for j in recent)  # within the floor
    clock.advance(3600)  # those too are past the floor now: the count alone
    assert await processor.trimmer.run(clock.now()) == 1
    left = await processor.list_jobs("report", limit=100)
    assert sorted(j.id for j in left) == sorted(j.id for j in recent[-3:])


async def test_a_count_trims_a_steady_flow_of_jobs_created_long_before_they_end(db: Any) -> None:
    """keep_finished=10 at the default timings (sweep every 15 s, floor 60 s): jobs scheduled
    an hour ahead, 10 of them ending every sweep. The newest-created ones always ended within
    the floor: a pass reads on past them to the older ones (it re-read the same kept batch at
    every sweep while the name grew without bound)."""
    from job_processor.core import documents as D

    processor = await make(
        db, {"a": JobDef(handler=ok, keep_finished=10)}, worker_timeout=30.0, heartbeat_interval=5.0
    )
    trimmer = processor.trimmer
    trimmer.batch = 20  # the production batch is 1000: the same with fewer documents
    sweep = dt.timedelta(seconds=processor.settings.worker_timeout / 2)
    assert processor.settings.retention.floor == dt.timedelta(seconds=60)
    start = processor.clock.now()
    for k in range(80):  # 20 minutes of sweeps
        t = start + k * sweep
        docs = [
            D.new_job("a", {}, now=t - dt.timedelta(hours=1))
            | {"status": "finished", "ended_at": t}
            for _ in range(10)
        ]
        for doc in docs:
            doc.pop("claim_name")
        await processor.storage.jobs.coll.insert_many(docs)
        await trimmer.maybe_run(t)
    left = await processor.storage.jobs.coll.count_documents({"name": "a"})
    # 10 kept by the count, 50 ended within the floor (the last 5 sweeps), and at most the
    # 200 that end in the 5 minutes between two passes that are not behind
    assert left <= 10 + 50 + 200, left


async def test_a_trim_pass_reads_a_bounded_number_of_jobs_and_still_reaches_the_older_ones(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 jobs created long ago ended within the floor (a backlog drained): a pass reads at
    most 10 batches' worth (it read them all, at every pass), and the passes that follow go on
    from where it stopped, to the older jobs past the count."""
    from job_processor.core import documents as D
    from job_processor.storage.job_reads import JobReads

    read = {"n": 0}
    original = JobReads.trim_cursor

    def counted(self: JobReads, query: Any, keep: int, batch: int) -> Any:
        cursor = original(self, query, keep, batch)

        async def docs() -> Any:
            async for d in cursor:
                read["n"] += 1
                yield d

        return docs()

    monkeypatch.setattr(JobReads, "trim_cursor", counted)
    processor = await make(db, {"a": JobDef(handler=ok, keep_finished=10)})
    now = processor.clock.now()
    ended_now = {"status": "finished", "ended_at": now}
    window = [D.new_job("a", {}, now=now - dt.timedelta(hours=1)) | ended_now for _ in range(600)]
    old_end = {"status": "finished", "ended_at": now - dt.timedelta(hours=2)}
    old = [D.new_job("a", {}, now=now - dt.timedelta(hours=2)) | old_end for _ in range(30)]
    for doc in window + old:
        doc.pop("claim_name")
    await processor.storage.jobs.coll.insert_many(window + old)
    trimmer = processor.trimmer
    trimmer.batch = 20
    passes = 0
    while await processor.storage.jobs.coll.count_documents({"name": "a"}) > 600 and passes < 6:
        read["n"] = 0
        await trimmer.run(now)
        assert read["n"] <= 10 * trimmer.batch
        passes += 1
    assert await processor.storage.jobs.coll.count_documents({"name": "a"}) == 600


async def test_a_large_count_is_counted_on_the_server_not_read_as_ids(
    db: Any, mongo_url: str
) -> None:
    """keep_finished=1,000,000: a pass counted the jobs created within the floor by reading up
    to a million ids into the worker at every sweep (memory and bytes growing with the count);
    it is a count on the server, a reply of a few bytes, and the jobs are still all kept."""
    from pymongo import AsyncMongoClient

    from job_processor.core import documents as D
    from tests.helpers import ReplyBytes

    listener = ReplyBytes("job_processor_jobs")
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[listener]
    )
    try:
        processor = await make(client[db.name], {"a": JobDef(handler=ok, keep_finished=10**6)})
        now = processor.clock.now()
        recent = {"status": "finished", "ended_at": now}
        docs = [D.new_job("a", {}, now=now) | recent for _ in range(1000)]
        for doc in docs:
            doc.pop("claim_name")
        await processor.storage.jobs.coll.insert_many(docs)
        listener.bytes = 0
        assert await processor.trimmer.run(now + dt.timedelta(seconds=30)) == 0
        assert listener.bytes < 2_000, f"a pass read {listener.bytes} B of jobs to count them"
        assert await processor.storage.jobs.coll.count_documents({"name": "a"}) == 1000
    finally:
        await client.close()
