"""Cluster-wide limits as a user sees them: concurrency across processors, rate windows, slots
freed promptly, dead workers' slots returned by the recovery."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import NetworkTimeout

from job_processor import AbortSignal, FakeClock, InvalidPayloadError, Job, JobDef, JobStatus
from job_processor.core import documents as D
from job_processor.core.definitions import Limit
from tests.helpers import make, wait_for, wait_status

S = JobStatus


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


async def test_a_concurrency_limit_holds_across_processors(db: Any) -> None:
    spans: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()

    async def call_provider(job: Job, signal: AbortSignal) -> None:
        t0 = loop.time()
        await asyncio.sleep(0.1)
        spans.append((t0, loop.time()))

    mail = Limit(key="mail-provider", concurrency=2)
    jobs = {"send": JobDef(handler=call_provider, limit=mail)}
    processors = [await make(db, jobs, concurrency=4) for _ in range(2)]
    ids = [(await processors[0].schedule_job("send")).id for _ in range(10)]
    await asyncio.gather(*(p.start() for p in processors))
    try:
        for job_id in ids:
            await wait_status(processors[0], job_id, S.FINISHED)
        usage = (await processors[0].get_status()).limits
    finally:
        await asyncio.gather(*(p.stop() for p in processors))
    assert len(spans) == 10
    assert max_overlap(spans) == 2  # measured by the handlers: never more than the limit
    assert usage == [
        {
            "key": "mail-provider",
            "running": 0,
            "concurrency": 2,
            "started_in_window": 0,
            "rate": None,
            "per_seconds": None,
        }
    ]


async def test_a_full_limit_holds_back_only_its_names_and_a_freed_slot_is_used_at_once(
    db: Any,
) -> None:
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    async def quick(job: Job, signal: AbortSignal) -> str:
        return "ok"

    one = Limit(key="one-at-a-time", concurrency=1)
    jobs = {
        "held": JobDef(handler=hold, limit=one),
        "next": JobDef(handler=quick, limit=one),
        "free": JobDef(handler=quick),
    }
    processor = await make(db, jobs, concurrency=4, poll_interval=30, change_streams=False)
    async with processor:
        first = await processor.schedule_job("held")
        await wait_status(processor, first.id, S.RUNNING)
        waiting = await processor.schedule_job("next")
        other = await processor.schedule_job("free")
        await wait_status(processor, other.id, S.FINISHED, timeout=5)  # not held back
        assert (await processor.get_job(waiting.id)).status == S.PENDING  # held back
        release.set()
        done = await wait_status(processor, waiting.id, S.FINISHED, timeout=5)
        ended = (await processor.get_job(first.id)).ended_at
    assert done.run_started_at is not None and ended is not None
    # the next poll is 30 s away: the slot given back in this process woke the claim
    assert done.run_started_at - ended < dt.timedelta(seconds=1)


async def test_a_rate_limit_spaces_starts_over_its_window(db: Any) -> None:
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    api = Limit(key="api", rate=2, per_seconds=1)

    async def call(job: Job, signal: AbortSignal) -> str:
        return "ok"

    processor = await make(db, {"call": JobDef(handler=call, limit=api)}, clock=clock)
    ids = [(await processor.schedule_job("call")).id for _ in range(5)]

    async def finished() -> int:
        return sum([(await processor.get_job(i)).status == S.FINISHED for i in ids])

    async with processor:
        for expected in (2, 4, 5):
            await wait_for_async(lambda e=expected: finished_at_least(finished, e))
            assert await finished() == expected  # no more than the rate allows
            clock.advance(1.0)
    starts = sorted([(await processor.get_job(i)).run_started_at for i in ids])  # type: ignore[type-var]
    for earlier, later in zip(starts, starts[2:], strict=False):
        assert later - earlier >= dt.timedelta(seconds=1)  # 2 per second, sliding


async def finished_at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def wait_for_async(predicate: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_dead_workers_slots_are_returned_by_the_recovery_once(db: Any) -> None:
    async def quick(job: Job, signal: AbortSignal) -> str:
        return "ok"

    one = Limit(key="one", concurrency=1)
    processor = await make(db, {"send": JobDef(handler=quick, limit=one, max_attempts=2)})
    # a worker SIGKILLed while running a limited job, holding the only slot
    past = processor.clock.now() - dt.timedelta(minutes=1)
    await processor.storage.workers.register(
        {"_id": "dead-worker", "hostname": "gone", "pid": 1, "started_at": past, "last_seen": past}
    )
    (run_id,), _ = await processor.storage.limits.acquire(one, [D.new_id()], "dead-worker", past)
    crashed = D.as_running(
        D.new_job("send", {}, now=past, limit_key="one", max_attempts=2),
        "dead-worker",
        past,
        run_id,
    )
    await processor.storage.jobs.insert(crashed)
    waiting = await processor.schedule_job("send")
    async with processor:
        rerun = await wait_status(processor, str(crashed["_id"]), S.FINISHED, timeout=10)
        await wait_status(processor, waiting.id, S.FINISHED, timeout=10)
    assert rerun.failures == 1  # the crash counted; its slot came back with the recovery
    doc = await processor.storage.limits.get("one")
    assert doc is not None
    assert (doc["running"], doc["holders"]) == (0, {})


async def test_a_reservation_left_by_a_dead_worker_is_returned(db: Any) -> None:
    one = Limit(key="one", concurrency=1)
    processor = await make(db, {"send": JobDef(handler=lambda j, s: "ok", limit=one)})
    past = processor.clock.now() - dt.timedelta(minutes=1)
    # died between taking a slot and claiming a job: no job carries that run id
    await processor.storage.limits.acquire(one, [D.new_id()], "dead-worker", past)
    job = await processor.schedule_job("send")
    async with processor:
        await wait_status(processor, job.id, S.FINISHED, timeout=10)


async def one_slot_holder(db: Any) -> tuple[Any, asyncio.Event]:
    """A processor whose job "hold" (limit "one", concurrency 1) runs until the event is set."""
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> str:
        await release.wait()
        return "held"

    one = Limit(key="one", concurrency=1)
    return await make(db, {"hold": JobDef(handler=hold, limit=one)}), release


async def test_run_job_waits_for_a_slot(db: Any) -> None:
    processor, release = await one_slot_holder(db)
    first = asyncio.create_task(processor.run_job("hold"))
    await wait_for(lambda: bool(processor.worker.runs))
    second = asyncio.create_task(processor.run_job("hold"))
    await asyncio.sleep(0)
    assert len(processor.worker.runs) == 1  # the second waits for the slot
    release.set()
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert (a.status, b.status) == (S.FINISHED, S.FINISHED)
    assert b.run_started_at is not None and a.ended_at is not None
    assert b.run_started_at >= a.ended_at


async def test_a_per_tenant_limit_holds_per_key_and_its_idle_keys_go_away(db: Any) -> None:
    spans: dict[str, list[tuple[float, float]]] = {}
    loop = asyncio.get_running_loop()

    async def sync_account(job: Job, signal: AbortSignal) -> None:
        t0 = loop.time()
        await asyncio.sleep(0.1)
        spans.setdefault(job.payload["tenant_id"], []).append((t0, loop.time()))

    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=2)
    jobs = {"sync": JobDef(handler=sync_account, limit=per_tenant)}
    processors = [await make(db, jobs, concurrency=4) for _ in range(2)]
    with pytest.raises(InvalidPayloadError, match="needs the payload field 'tenant_id'"):
        await processors[0].schedule_job("sync", {"tenant": "acme"})
    batch = [("sync", {"tenant_id": t}) for t in ("a", "b", "c") for _ in range(5)]
    scheduled = await processors[0].schedule_jobs(batch)
    assert {j.id for j in await processors[0].list_jobs(limit=100)} == {j.id for j in scheduled}
    stored = await processors[0].storage.jobs.get(ObjectId(scheduled[0].id))
    assert stored is not None and stored["limit_key"] == "tenant:a"
    assert scheduled[0].limit_key == "tenant:a"  # read through the API too
    assert (await processors[0].get_job(scheduled[5].id)).limit_key == "tenant:b"
    from job_processor.ops.admin import Admin

    admin = await Admin.open(db, processors[0].storage.prefix)
    await processors[0].start()  # registers the definition, with its limit's key
    await processors[0].stop()
    by_hand = await admin.new_job("sync", {"tenant_id": "c"})  # jobs new, the dashboard
    assert by_hand.jobs[0].limit_key == "tenant:c"
    copy = await admin.duplicate(by_hand.jobs[0].id)
    assert copy.jobs[0].limit_key == "tenant:c"
    with pytest.raises(InvalidPayloadError, match="needs the payload field 'tenant_id'"):
        await admin.new_job("sync", {"tenant": "c"})  # refused as schedule_job refuses it
    await asyncio.gather(*(p.start() for p in processors))
    try:
        for job in scheduled:
            await wait_status(processors[0], job.id, S.FINISHED)
        assert {t: max_overlap(s) for t, s in spans.items()} == {"a": 2, "b": 2, "c": 2}
        status = await processors[0].get_status()
        assert {u["key"] for u in status.limits} <= {"tenant:a", "tenant:b", "tenant:c"}

        for _ in range(200):  # the sweep removes idle per-value keys
            if await processors[0].storage.limits.all() == []:
                break
            await asyncio.sleep(0.05)
        assert await processors[0].storage.limits.all() == []
    finally:
        await asyncio.gather(*(p.stop() for p in processors))


async def test_per_value_keys_found_full_are_forgotten_once_their_wait_has_passed(
    db: Any,
) -> None:
    """A worker remembers the per-value keys it found full (to leave them out of its next
    claims) until a time; a key freed and used up by another process was remembered for ever
    (a soak with a new tenant every 2 s: 58 keys after 6 min on each worker, growing). The
    sweep now forgets those whose time has passed."""

    async def sync_account(job: Job, signal: AbortSignal) -> None:
        await asyncio.sleep(0.01)

    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=1)
    defs = {"sync": JobDef(handler=sync_account, limit=per_tenant)}
    processor = await make(db, defs, concurrency=5)  # the five keys tried in one round
    limits = processor.storage.limits
    held: dict[str, str] = {}
    for n in range(5):  # another process holds each tenant's only slot
        key = f"tenant:t{n}"
        held[key] = D.new_id()
        granted, _ = await limits.acquire(
            per_tenant.for_key(key), [held[key]], "another-worker", processor.clock.now, "x"
        )
        assert granted == [held[key]]
    jobs = [await processor.schedule_job("sync", {"tenant_id": f"t{n}"}) for n in range(5)]
    limiter = processor.worker.limiter
    await processor.start()
    try:
        await wait_for(lambda: set(held) <= set(limiter.blocked))  # found full here
        for job in jobs:  # ended elsewhere: this process never runs these keys again
            await processor.kill_job(job.id)
        for key, run_id in held.items():
            assert await limits.release(key, run_id)
        await wait_for(lambda: not limiter.blocked and not limiter.template_of, timeout=10)
    finally:
        await processor.stop()


async def test_a_per_value_key_this_process_holds_keeps_waking_it_on_release(db: Any) -> None:
    """The sweep forgets per-value keys found full once their wait has passed, but not which
    template a key this process holds a slot of came from: its release still wakes the claim
    loop at once (not at the next poll) for that tenant's next job (found by a review)."""

    async def sync_account(job: Job, signal: AbortSignal) -> None:
        return None

    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=1)
    processor = await make(db, {"sync": JobDef(handler=sync_account, limit=per_tenant)})
    limiter = processor.worker.limiter
    me, now = processor.worker.worker_id, processor.clock.now()
    run_id = D.new_id()
    granted, _ = await processor.storage.limits.acquire(
        per_tenant.for_key("tenant:mine"), [run_id], me, now, per_tenant.key
    )
    assert granted == [run_id]
    limiter.template_of = {"tenant:mine": per_tenant.key, "tenant:gone": per_tenant.key}
    limiter.blocked = {}  # both waits have passed
    await limiter.release_strays(now, now, {me}, {run_id}, me)
    assert limiter.template_of == {"tenant:mine": per_tenant.key}


async def test_a_backlog_of_unlimited_jobs_never_starves_limited_ones(db: Any) -> None:
    """scale.md: limited names are claimed every other time before the others, so limited jobs
    scheduled behind 200 unlimited ones start within the next few claims, long before the
    backlog is through (without that, every claim would fill the slots with unlimited jobs)."""
    starts: list[str] = []

    async def note(job: Job, signal: AbortSignal) -> None:
        starts.append(job.name)
        await asyncio.sleep(0.02)  # the job's work: slots free one by one

    mail = Limit(key="mail", concurrency=5)
    jobs = {"bulk": JobDef(handler=note), "mail": JobDef(handler=note, limit=mail)}
    processor = await make(db, jobs, concurrency=8, poll_interval=30, change_streams=False)
    await processor.schedule_jobs([("bulk", {}) for _ in range(200)])
    async with processor:
        await wait_for(lambda: len(starts) >= 16)
        await processor.schedule_jobs([("mail", {}) for _ in range(3)])
        before = len(starts)  # from when they are in the database
        await wait_for(lambda: starts.count("mail") == 3)
        last_mail = len(starts) - starts[::-1].index("mail")
    # every other claim round takes the limited jobs first: all 3 within three rounds of 8
    # starts (measured: 11; without the alternation, 187: after the whole backlog)
    assert last_mail - before <= 24, starts[before:last_mail]


async def test_run_job_claimed_again_after_its_worker_was_declared_dead_holds_a_slot(
    db: Any,
) -> None:
    """run_job writes its job running; when its worker was declared dead meanwhile, the job is
    put back (its slot given back) and claimed again under the new id: that claim holds a slot
    again (it used to run with none: a second run of the key could start beside it)."""
    p, release = await one_slot_holder(db)
    armed, real_insert, real_may = [False], p._insert, p.worker.may_claim

    async def insert(doc: Any) -> Any:
        written = await real_insert(doc)
        armed[0] = True  # declared dead as the job was written
        return written

    def may_claim(worker_id: str) -> bool:
        if armed[0]:
            armed[0] = False
            return False
        return real_may(worker_id)

    p._insert = insert  # type: ignore[method-assign]
    p.worker.may_claim = may_claim  # type: ignore[method-assign]
    first = asyncio.create_task(p.run_job("hold"))
    await wait_for(lambda: bool(p.worker.runs))
    (run,) = p.worker.runs.values()
    limit = await db["job_processor_limits"].find_one({"_id": "one"})
    assert limit is not None and list(limit["holders"]) == [run.doc["run_id"]]
    release.set()
    done = await asyncio.wait_for(first, 10)
    assert done.status == S.FINISHED
    limit = await db["job_processor_limits"].find_one({"_id": "one"})
    assert limit is not None and not limit["holders"]


@pytest.mark.parametrize("kind", ["plain def given up", "async ignoring its cancel"])
async def test_a_killed_handler_still_running_keeps_its_limit_slot(db: Any, kind: str) -> None:
    """scale.md: at most N runs of a key at once. A plain `def` handler killed is given up
    after the grace and goes on in its thread (an async one that swallows its cancellation
    goes on too); its limit slot was given back with the final write, so the next job of a
    concurrency=1 limit ran beside it. Now the slot is held until the handler returns."""
    import threading

    first_going = threading.Event()
    let_first_end = threading.Event()
    overlap: list[bool] = []

    def stubborn(job: Job, signal: AbortSignal) -> None:  # ignores its abort signal
        first_going.set()
        let_first_end.wait(20)
        first_going.clear()

    async def stubborn_async(job: Job, signal: AbortSignal) -> None:
        first_going.set()
        while not let_first_end.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # swallowed
        first_going.clear()

    async def second(job: Job, signal: AbortSignal) -> None:
        overlap.append(first_going.is_set())

    one = Limit(key="one-at-a-time", concurrency=1)
    handler = stubborn if kind == "plain def given up" else stubborn_async
    jobs = {
        "stubborn": JobDef(handler=handler, limit=one),
        "second": JobDef(handler=second, limit=one),
    }
    p = await make(db, jobs, concurrency=4, shutdown_grace=0.1)
    try:
        async with p:
            first = await p.schedule_job("stubborn")
            await wait_status(p, first.id, JobStatus.RUNNING)
            nxt = await p.schedule_job("second")
            await p.kill_job(first.id)
            killed = await wait_status(p, first.id, JobStatus.KILLED)
            # the slot is still the killed run's, and the next job waits for it (several
            # polls: poll_interval is 0.05 s here)
            limit = await p.storage.limits.get("one-at-a-time")
            assert limit is not None and list(limit.get("holders") or {}) == [killed.run_id]
            with pytest.raises(AssertionError, match="job second is pending"):
                await wait_status(p, nxt.id, JobStatus.RUNNING, timeout=1.0)
            assert first_going.is_set() and overlap == []
            let_first_end.set()  # the handler returns: its slot goes, the next job runs
            await wait_status(p, nxt.id, JobStatus.FINISHED, timeout=10)
            assert overlap == [False]
    finally:
        let_first_end.set()


async def test_init_refuses_a_static_and_a_per_tenant_limit_of_one_key_with_two_settings(
    db: Any,
) -> None:
    """`api:acme` (rate 1 a minute) and `api:{tenant}` filled with "acme" were one document:
    the per-tenant limit's idle sweep removed it, starts and all, and a second `report` ran
    0.1 s after the first (an outside hunt). Refused at init now, naming both keys."""
    from job_processor import InvalidDefinitionError

    async def quick(job: Job, signal: AbortSignal) -> None:
        return None

    jobs = {
        "report": JobDef(handler=quick, limit=Limit(key="api:acme", rate=1, per_seconds=60)),
        "sync": JobDef(handler=quick, limit=Limit(key="api:{tenant}", concurrency=2)),
    }
    with pytest.raises(InvalidDefinitionError, match=r"'api:acme' and 'api:\{tenant\}' can name"):
        await make(db, jobs)


async def test_a_run_job_skipped_by_its_exclusive_name_uses_no_start_of_the_rate(
    db: Any,
) -> None:
    """run_job reserves a slot before its insert; when the insert comes back `skipped` (the
    exclusive name is held) the job never ran, so its reservation leaves the rate window as
    the claim path's unused ones do: the queued job holding the name waited a whole
    `per_seconds` behind a start that never was."""
    started = asyncio.Event()

    async def export(job: Job, signal: AbortSignal) -> None:
        started.set()

    api = Limit(key="export-api", rate=1, per_seconds=60)
    jobs = {"export": JobDef(handler=export, limit=api, concurrency="exclusive")}
    p = await make(db, jobs, concurrency=2)
    queued = await p.schedule_job("export")  # holds the exclusive name
    skipped = await p.run_job("export")
    assert skipped.status == JobStatus.SKIPPED  # never ran
    limit_doc = await db["job_processor_limits"].find_one({"_id": "export-api"})
    assert (limit_doc or {}).get("starts", {}) == {}, limit_doc  # no start was made
    await p.start()
    try:
        await asyncio.wait_for(started.wait(), timeout=5)  # at once, not 60 s later
        await wait_status(p, queued.id, JobStatus.FINISHED)
    finally:
        await p.stop()


async def test_a_per_tenant_slot_given_back_here_wakes_the_claim_loop_for_that_tenant(
    db: Any,
) -> None:
    """scale.md: a full per-value key is left out "until a slot of it is given back in this
    process or the next poll". A key found full by the claim's indexed read, never by a
    refused take, did not wake the worker when its slot was given back here: on a clock that
    never moves (no poll) the tenant's next job never started."""
    gate = asyncio.Event()
    started: list[int] = []

    async def sync_account(job: Job, signal: AbortSignal) -> None:
        started.append(job.payload["n"])
        if job.payload["n"] == 1:
            await gate.wait()

    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=1)
    processor = await make(
        db,
        {"sync": JobDef(handler=sync_account, limit=per_tenant)},
        clock=FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        concurrency=4,
        change_streams=False,
        worker_timeout=30.0,
    )
    async with processor:
        await processor.schedule_job("sync", {"tenant_id": "acme", "n": 1})
        await wait_for(lambda: started == [1], timeout=10)
        await wait_for(lambda: processor.worker.idle.is_set(), timeout=10)
        processor.worker.idle.clear()  # set again by the next claim round that finds nothing
        # scheduled here: wakes the worker, whose claim finds "tenant:acme" full
        second = await processor.schedule_job("sync", {"tenant_id": "acme", "n": 2})
        await wait_for(lambda: processor.worker.idle.is_set(), timeout=10)
        assert started == [1]
        gate.set()  # the first run ends: its slot is given back in this very process
        await wait_status(processor, second.id, JobStatus.FINISHED, timeout=10)


async def test_a_slot_recovered_from_a_dead_holder_wakes_the_claim_loop(db: Any) -> None:
    """A slot a dead worker held, given back by the recovery sweep (`release_strays`), left a
    job of that limit waiting for the next poll: on a clock that never moves (no poll) it never
    started. The sweep now wakes the claim loop when it gives a slot back."""
    started = asyncio.Event()

    async def send(job: Job, signal: AbortSignal) -> None:
        started.set()

    mail = Limit(key="mail", concurrency=1)
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    processor = await make(
        db,
        {"send": JobDef(handler=send, limit=mail)},
        clock=clock,
        change_streams=False,
        worker_timeout=30.0,
    )
    granted, _ = await processor.storage.limits.acquire(  # a worker that died holding it
        mail.for_key("mail"), ["its-run"], "dead-worker", clock.now, "mail"
    )
    assert granted == ["its-run"]
    async with processor:
        await wait_for(lambda: processor.worker.idle.is_set(), timeout=10)
        processor.worker.idle.clear()
        await processor.schedule_job("send", {})  # wakes the worker: its claim finds "mail" full
        await wait_for(lambda: processor.worker.idle.is_set(), timeout=10)
        assert not started.is_set()
        later = clock.now() + dt.timedelta(minutes=5)  # the holder is long gone
        await processor.recovery.sweep(later)
        await asyncio.wait_for(started.wait(), timeout=10)


@pytest.mark.parametrize(
    "limit",
    [
        Limit(key="mail", concurrency=1),
        Limit(key="mail", rate=1, per_seconds=3600),
        Limit(key="mail:{tenant}", concurrency=1),
    ],
    ids=["concurrency", "rate", "per-value"],
)
async def test_a_slot_taken_with_its_reply_cut_is_given_back_at_once(
    driver_db: Any, limit: Limit
) -> None:
    """The take of a slot (`LimitStore.acquire`, under the driver's bound on Motor) applied but
    its reply cut (NetworkTimeout): the slot stayed held under a run id no job carries until
    the sweep gave it back as a stray, `worker_timeout` later (its start kept in a rate's
    window: an hour here), the limit's jobs pending meanwhile. The run ids taken are now given
    back at once, unstarted, and the job runs at the next claim."""

    async def send(job: Job, signal: AbortSignal) -> str:
        return "sent"

    processor = await make(
        driver_db, {"send": JobDef(handler=send, limit=limit)}, worker_timeout=30.0
    )
    coll = processor.storage.limits.coll
    cut: list[str] = []

    def cut_once(real: Any) -> Any:
        async def write(*args: Any, **kw: Any) -> Any:
            result = await real(*args, **kw)
            if not cut and ("rev" in args[0] or real.__name__ == "insert_one"):
                cut.append(real.__name__)  # the take applied, its reply lost
                raise NetworkTimeout("reply cut")
            return result

        return write

    coll.update_one, coll.insert_one = cut_once(coll.update_one), cut_once(coll.insert_one)
    async with processor:
        job = await processor.schedule_job("send", {"tenant": "acme"})
        done = await wait_status(processor, job.id, S.FINISHED, timeout=10)
    assert cut and done.result == "sent"
    key = limit.key_for({"tenant": "acme"})
    doc = await processor.storage.limits.get(key)
    assert doc is not None and (doc["running"], doc["holders"]) == (0, {})
