"""Per-tenant limits are fair (scale.md, "Per-tenant limits"; issue 18): one worker with 8
slots and a limit of 4 per tenant, 1,000 jobs of tenant A queued and then 10 of tenant B. All
of B's jobs start within 2 s of being scheduled, the worker runs 4 of A beside 4 of B (every
slot busy), and a full key costs no busy loop.

Driven by a FakeClock that never moves: no poll (`poll_interval`) and no blocked key's expiry
can explain a start, so what is measured is the claim path alone. B's jobs are scheduled in
the worker's own process, which wakes it at once, as a replica set's change stream does for
another process's jobs (elsewhere, add the wait for the next poll). Starts are measured by the
handlers themselves (wall clock), the commands on the wire by a command listener.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from pymongo import AsyncMongoClient

from job_processor import AbortSignal, FakeClock, Job, JobDef, Limit, init_job_processor
from tests.helpers import CommandNames

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
PER_TENANT = Limit(key="tenant:{tenant}", concurrency=4)
B_RUN = 0.3  # seconds each of B's jobs works (A's hold their slots until released)


async def until(predicate: Any, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def next_claim(clock: FakeClock, step: float, count: Any, timeout: float = 30) -> None:
    """Move the clock by `step` until the claim counter moves: one claim round. The clock is
    moved again if the worker was not yet asleep when it moved (a loop that finishes its
    round after the move sleeps a whole interval from the new time)."""
    seen = count()
    deadline = asyncio.get_running_loop().time() + timeout
    while count() == seen:
        assert asyncio.get_running_loop().time() < deadline, "no claim in time"
        clock.advance(step)
        for _ in range(20):
            if count() != seen:
                return
            await asyncio.sleep(0.01)


async def test_a_backlog_of_1000_jobs_of_one_tenant_does_not_hold_back_another(
    mongo_url: str, db: Any
) -> None:
    commands = CommandNames()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[commands]
    )
    release_a = asyncio.Event()
    runs: list[tuple[str, float, float]] = []  # tenant, start, end (time.monotonic())
    running = {"A": 0, "B": 0}
    most = {"A": 0, "B": 0, "both": 0}

    async def work(job: Job, signal: AbortSignal) -> None:
        tenant = job.payload["tenant"]
        start = time.monotonic()
        running[tenant] += 1
        most[tenant] = max(most[tenant], running[tenant])
        most["both"] = max(most["both"], running["A"] + running["B"])
        try:
            if tenant == "A":
                await release_a.wait()
            else:
                await asyncio.sleep(B_RUN)
        finally:
            running[tenant] -= 1
            runs.append((tenant, start, time.monotonic()))

    clock = FakeClock(T0)
    try:
        p = await init_job_processor(
            client[db.name],
            jobs={"sync": JobDef(handler=work, limit=PER_TENANT)},
            clock=clock,
            concurrency=8,
            change_streams=False,
            worker_timeout=30.0,
            shutdown_grace=1.0,
        )
        await p.schedule_jobs([("sync", {"tenant": "A"}) for _ in range(1000)])
        async with p:
            await until(lambda: running["A"] == 4)  # A holds its 4 slots; 4 stay free
            before = len(commands.names)
            scheduled = time.monotonic()
            await p.schedule_jobs([("sync", {"tenant": "B"}) for _ in range(10)])
            await until(lambda: sum(1 for t, _, _ in runs if t == "B") == 10)
            spent = len(commands.names) - before
            b_starts = [start - scheduled for t, start, _ in runs if t == "B"]
            assert running["A"] == 4  # A's backlog still waits behind its own limit
            assert clock.now() == T0  # no poll, no expiry: the claim path alone
            release_a.set()
    finally:
        await client.close()
    assert max(b_starts) < 2.0, sorted(b_starts)  # all of B within 2 s
    assert most == {"A": 4, "B": 4, "both": 8}  # 4 of A beside 4 of B: every slot busy
    # no busy loop: B's 10 jobs cost about 6 commands each (the due query, the compare-and-set
    # on the key, the claim, the final write, the release), the insert and the heartbeats;
    # a loop retrying A's full key during B's 0.9 s would cost hundreds
    assert spent < 10 * 12, spent


async def test_any_number_of_full_tenants_ahead_never_holds_back_another(db: Any) -> None:
    """Six tenants, each at its limit with a backlog ahead of B in claim order, two slots free:
    B starts at the first poll that finds it. The keys a worker knows full expire after a
    `poll_interval`; a claim used to learn them again one per round, four rounds at most, so
    with four or more full tenants ahead, B never started. (FakeClock: each poll is a step.)"""
    started: list[str] = []
    hold = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        started.append(job.payload["tenant"])
        if job.payload["tenant"] != "B":
            await hold.wait()

    one_each = Limit(key="tenant:{tenant}", concurrency=1)
    jobs = {"sync": JobDef(handler=work, limit=one_each)}
    clock = FakeClock(T0)
    settings: dict[str, Any] = {"change_streams": False, "worker_timeout": 30.0}
    p = await init_job_processor(db, jobs=jobs, clock=clock, concurrency=8, **settings)
    producer = await init_job_processor(db, jobs=jobs, clock=clock, **settings)  # not started
    tenants = [f"A{i}" for i in range(6)]
    for tenant in tenants:
        await p.schedule_jobs([("sync", {"tenant": tenant}) for _ in range(3)])
    claims = 0
    real_claim = p.worker.limiter.claim

    async def counted(worker: Any, free: int) -> int:
        nonlocal claims
        got = await real_claim(worker, free)
        claims += 1
        return got

    p.worker.limiter.claim = counted  # type: ignore[method-assign]
    async with p:
        await until(lambda: sorted(started) == tenants)  # each full, 2 of 8 slots free
        await producer.schedule_job("sync", {"tenant": "B"})  # another process: no wake-up
        for _ in range(3):  # polls, each after the keys known full have expired
            await next_claim(clock, p.settings.poll_interval + 0.001, lambda: claims)
        b_started = "B" in started
        hold.set()
    assert b_started


async def test_the_rate_full_keys_are_found_without_reading_every_keys_starts(db: Any) -> None:
    """A per-value limit with a rate: the claim's read of the full keys used to fetch every
    key of the template with all its starts (tenants x rate timestamps at each claim). Each
    key's document keeps until when its rate is full (`rate_full_ms`); the read finds the full
    ones in an index and returns no starts. A reservation given back unused frees the key, and
    a value written under another rate (before a deploy raised it) is not trusted."""
    rated = Limit(key="tenant:{tenant}", rate=3, per_seconds=3600)

    async def work(job: Job, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(T0)
    p = await init_job_processor(db, jobs={"a": JobDef(handler=work, limit=rated)}, clock=clock)
    store = p.storage.limits
    for i in range(40):  # 40 tenants: 10 at their rate, 30 with room
        key = f"tenant:t{i}"
        runs = 3 if i < 10 else 1
        granted, _ = await store.acquire(
            rated.for_key(key), [f"r{i}-{n}" for n in range(runs)], "w", clock.now(), rated.key
        )
        assert len(granted) == runs
    read: list[dict[str, Any]] = []
    real = store.full_of_template

    async def spied(*args: Any) -> list[dict[str, Any]]:
        docs = await real(*args)
        read.extend(docs)
        return docs

    store.full_of_template = spied  # type: ignore[method-assign]
    full = await p.worker.limiter._full_keys(rated, clock.now())
    assert full == {f"tenant:t{i}" for i in range(10)}
    assert len(read) == 10 and not any("starts" in d or "holders" in d for d in read)
    assert await store.release("tenant:t0", "r0-2", started=False)  # never ran: room again
    assert "tenant:t0" not in await p.worker.limiter._full_keys(rated, clock.now())
    raised = Limit(key="tenant:{tenant}", rate=100, per_seconds=3600)  # a deploy raised it
    assert await p.worker.limiter._full_keys(raised, clock.now()) == set()
    clock.advance(3600)  # the window has passed: none full
    assert await p.worker.limiter._full_keys(rated, clock.now()) == set()


async def _processor(db: Any, work: Any, limit: Limit, clock: FakeClock) -> Any:
    return await init_job_processor(
        db,
        jobs={"sync": JobDef(handler=work, limit=limit)},
        clock=clock,
        concurrency=8,
        change_streams=False,
        worker_timeout=30.0,
        shutdown_grace=0.5,
    )


async def _insert_foreign(db: Any, payloads: list[dict[str, Any]]) -> None:
    """Jobs another program inserts: the minimal document of scale.md (no `limit_key`)."""
    due = int(T0.timestamp() * 1000)
    await db["job_processor_jobs"].insert_many(
        [
            {"name": "sync", "claim_name": "sync", "due_ms": due, "payload": p, "priority": 0}
            for p in payloads
        ]
    )


async def test_a_foreign_backlog_of_one_tenant_never_holds_back_another(db: Any) -> None:
    """Jobs inserted without their `limit_key` were candidates again in every claim round
    (`$nin` on the full keys matches a missing field): tenant A's foreign backlog, larger than
    the free slots, kept tenant B's jobs out of every round. Their key is now written on them
    when a round reads them."""
    running = {"A": 0, "B": 0}
    release = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        running[job.payload["tenant"]] += 1
        await release.wait()

    clock = FakeClock(T0)  # never moves: only claim rounds start jobs, no poll
    p = await _processor(db, work, Limit(key="tenant:{tenant}", concurrency=2), clock)
    await _insert_foreign(db, [{"tenant": "A"} for _ in range(20)])
    async with p:
        await until(lambda: running["A"] == 2)  # A at its limit, 6 slots free
        await p.schedule_jobs([("sync", {"tenant": "B"}) for _ in range(2)])  # wakes it
        await until(lambda: running["B"] == 2)
        release.set()
    assert running == {"A": 2, "B": 2}


async def test_foreign_jobs_without_the_field_never_hold_back_the_other_keys(db: Any) -> None:
    """Jobs without the `tenant` field share the templated key's own limit (scale.md); that
    key found full blocked the whole per-value limit until the block expired."""
    running: dict[str, int] = {}
    release = asyncio.Event()

    async def work(job: Job, signal: AbortSignal) -> None:
        tenant = str(job.payload.get("tenant"))
        running[tenant] = running.get(tenant, 0) + 1
        await release.wait()

    clock = FakeClock(T0)
    p = await _processor(db, work, Limit(key="tenant:{tenant}", concurrency=1), clock)
    await _insert_foreign(db, [{}, {}])
    async with p:
        await until(lambda: running.get("None") == 1)
        await until(lambda: "tenant:{tenant}" in p.worker.limiter.blocked)  # the second: full
        await p.schedule_job("sync", {"tenant": "B"})  # wakes the worker at once
        await until(lambda: running.get("B") == 1)
        release.set()
    assert running == {"None": 1, "B": 1}


async def test_a_rate_full_tenant_wakes_the_worker_when_its_window_has_room(db: Any) -> None:
    """scale.md: "A rate-limited key sleeps until the window allows a start". A per-value key
    found rate-full by the claim's indexed read was left out with no wake-up at that time:
    the tenant's next job waited for the next poll."""
    started: list[int] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        started.append(job.payload["n"])

    clock = FakeClock(T0)
    limit = Limit(key="tenant:{tenant}", rate=1, per_seconds=5)
    p = await init_job_processor(
        db,
        jobs={"sync": JobDef(handler=work, limit=limit)},
        clock=clock,
        concurrency=4,
        poll_interval=60.0,  # no poll can explain the second start
        change_streams=False,
        worker_timeout=120.0,
        heartbeat_interval=30.0,
        shutdown_grace=1.0,
    )
    async with p:
        await p.schedule_job("sync", {"tenant": "A", "n": 1})
        await until(lambda: started == [1], timeout=10)
        await until(lambda: p.worker.idle.is_set(), timeout=10)
        p.worker.idle.clear()  # set again by the next claim round that finds nothing
        await p.schedule_job("sync", {"tenant": "A", "n": 2})  # wakes the worker: no room yet
        await until(lambda: p.worker.idle.is_set(), timeout=10)
        assert started == [1]
        clock.advance(5.5)  # the window has room again
        await until(lambda: started == [1, 2], timeout=5)
