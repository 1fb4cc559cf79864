"""The built-in webhook delivery name, which every delivering process claims but few use, is left
out of a busy worker's claims until a delivery is seen; a probe once per `poll_interval` looks
for a due one meanwhile (`engine.quiet`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, FakeClock, Job, JobDef, init_job_processor
from job_processor.core import documents as D
from tests.helpers import FAST, make, wait_for, wait_status

from ..receiver import Receiver, receiving

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
WEBHOOK = "webhook-delivery"


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


async def test_the_probe_reads_once_per_poll_interval_and_a_due_delivery_ends_the_quiet(
    db: Any,
) -> None:
    clock = FakeClock(NOW)
    p = await init_job_processor(
        db, jobs={"a": JobDef(handler=noop)}, clock=clock, **(FAST | {"poll_interval": 2.0})
    )
    quiet = p.worker.quiet
    assert WEBHOOK in p.worker.names and quiet.names == {WEBHOOK}
    assert quiet.left_out(0) == quiet.left_out(1) == set(), "idle, or one job: every name"
    assert quiet.left_out(2) == {WEBHOOK}, "two claims in a row found a job: busy"
    reads = 0
    any_due = p.storage.jobs.any_due

    async def counted(names: list[str], now: dt.datetime) -> bool:
        nonlocal reads
        reads += 1
        return await any_due(names, now)

    p.storage.jobs.any_due = counted  # type: ignore[method-assign]
    assert await quiet.probe(frozenset()) and reads == 1, "none due: the round narrows"
    assert await quiet.probe(frozenset({WEBHOOK})) and reads == 1, "paused: nothing to read"
    await p.storage.jobs.insert(D.new_job(WEBHOOK, {"event_id": "e"}, now=NOW))
    clock.advance(1.9)
    assert await quiet.probe(frozenset()) and reads == 1, "not again within poll_interval"
    clock.advance(0.1)
    assert not await quiet.probe(frozenset()) and reads == 2, "one due: found"
    assert quiet.names == set() and quiet.left_out(5) == set(), "every claim carries it now"


async def test_a_probe_that_fails_narrows_nothing_and_reads_again_next_round(db: Any) -> None:
    clock = FakeClock(NOW)
    p = await init_job_processor(db, jobs={"a": JobDef(handler=noop)}, clock=clock, **FAST)
    calls = 0

    async def down(names: list[str], now: dt.datetime) -> bool:
        nonlocal calls
        calls += 1
        raise AutoReconnect("connection refused")

    p.storage.jobs.any_due = down  # type: ignore[method-assign]
    assert not await p.worker.quiet.probe(frozenset()), "this round claims every name"
    assert not await p.worker.quiet.probe(frozenset()) and calls == 2, "read again at once"
    assert p.worker.quiet.names == {WEBHOOK}


async def test_a_processor_that_delivers_nothing_has_no_quiet_name(db: Any) -> None:
    p = await make(db, {"a": JobDef(handler=noop)}, webhook_options={"deliver": False})
    assert p.worker.quiet.names == set() and p.worker.claimable_names() == ["a"]


class Claims(monitoring.CommandListener):
    """The names each claim (findAndModify on the jobs) carried, and the probes (a `find` of the
    webhook name alone)."""

    def __init__(self) -> None:
        self.names: list[set[str]] = []
        self.probes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        target = str(cmd.get(event.command_name, ""))
        if not target.endswith("jobs"):
            return
        if event.command_name == "findAndModify":
            self.names.append(names_in(cmd.get("query", {})))
        elif event.command_name == "find" and names_in(cmd.get("filter", {})) == {WEBHOOK}:
            self.probes += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


def names_in(query: dict[str, Any]) -> set[str]:
    """The claim's names, in either form (`$in`, or an `$or` of `$eq`)."""
    out: set[str] = set()
    for branch in query.get("$or", [query]):
        cond = branch.get("claim_name")
        if isinstance(cond, dict):
            out |= set(cond.get("$in", [])) | ({cond["$eq"]} if "$eq" in cond else set())
        elif isinstance(cond, str):
            out.add(cond)
    return out


async def counted_worker(mongo_url: str, db: Any, jobs: dict[str, Any], **kw: Any) -> Any:
    claims = Claims()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[claims]
    )
    return claims, client, await make(client[db.name], jobs, **kw)


async def test_jobs_one_at_a_time_cost_no_probe_and_carry_every_name(
    mongo_url: str, db: Any
) -> None:
    """A service whose jobs come one at a time is never busy: each claim carries every name,
    and no probe is read (the commands per job stay those of a claim of every name)."""
    claims, client, worker = await counted_worker(mongo_url, db, {"a": JobDef(handler=noop)})
    try:
        async with worker:
            for _ in range(4):
                job = await worker.schedule_job("a", {})
                await wait_status(worker, job.id, "finished")
                await wait_for(worker.worker.idle.is_set)  # its next claim found nothing
        assert claims.names and all(WEBHOOK in n for n in claims.names), claims.names
        assert claims.probes == 0
    finally:
        await client.close()


async def test_a_delivery_made_elsewhere_reaches_a_busy_worker_then_every_claim_has_it(
    mongo_url: str, db: Any, receiver: Receiver
) -> None:
    """Another process (delivering nothing itself) adds an endpoint and emits while this worker
    never runs out of its own jobs (each schedules the next): the delivery is made all the
    same, and from then on each claim carries the webhook name."""
    chained = 0

    async def chain(job: Job, signal: AbortSignal) -> None:
        nonlocal chained
        chained += 1
        await job.processor.schedule_job("chain", {})  # due after the delivery: it goes first

    claims, client, worker = await counted_worker(mongo_url, db, {"chain": JobDef(handler=chain)})
    try:
        emitter = await make(db, {}, webhook_options={"deliver": False})
        await worker.schedule_job("chain", {})
        async with worker:
            await wait_for(lambda: chained >= 20)  # a backlog that never ends
            await emitter.webhooks.add(url=receiver.url("/hook"), events=["paid"])
            await emitter.emit("paid", {"order": 1})
            await receiver.wait("/hook", 1, timeout=15)
            assert worker.worker.quiet.names == set()
            before = len(claims.names)
            await wait_for(lambda: len(claims.names) >= before + 3)
            later = claims.names[before:]
            assert all(WEBHOOK in names for names in later), later
        busy = [n for n in claims.names if n == {"chain"}]
        assert len(busy) >= 10, "claims under the backlog carried one name"
        assert claims.probes >= 1
    finally:
        await client.close()


def gated(tokens: asyncio.Queue[None], started: list[str]) -> Any:
    async def handler(job: Job, signal: AbortSignal) -> None:
        started.append(job.name)
        await tokens.get()  # each run ends when the test gives it a token

    return handler


async def test_a_due_delivery_goes_in_a_busy_rounds_batch_behind_a_better_first_claim(
    db: Any, receiver: Receiver
) -> None:
    """Concurrency 8, runs that end when the test says, a clock that moves when it says: two
    full rounds make the worker busy; then a delivery is made elsewhere, with a high-priority
    job and younger low-priority ones, and one `poll_interval` passes. The next round's first
    claim takes the high-priority job; the delivery goes in the same round's batch (the probe
    saw it), as in a claim of every name, while that round's runs are all still held."""
    clock = FakeClock(NOW)
    tokens: asyncio.Queue[None] = asyncio.Queue()
    started: list[str] = []
    handler = gated(tokens, started)
    worker = await make(
        db,
        {"hi": JobDef(handler=handler), "lo": JobDef(handler=handler)},
        concurrency=8,
        clock=clock,
    )
    emitter = await make(db, {}, webhook_options={"deliver": False})  # due now: before NOW
    await emitter.webhooks.add(url=receiver.url("/hook"), events=["paid"])
    await worker.schedule_jobs([("lo", {})] * 16)
    try:
        async with worker:
            await wait_for(lambda: len(started) == 8)  # round 1: every name
            for _ in range(8):
                tokens.put_nowait(None)
            await wait_for(lambda: len(started) == 16)  # round 2: busy from here on
            await emitter.emit("paid", {"order": 1})
            await worker.schedule_job("hi", {}, priority=5)
            await worker.schedule_jobs([("lo", {})] * 16)  # younger than the delivery
            clock.advance(FAST["poll_interval"])
            for _ in range(8):
                tokens.put_nowait(None)
            # the next round's runs are all held (the delivery's own run is not): it is taken
            # in that round or never, as the 8 slots stay full
            await receiver.wait("/hook", 1, timeout=10)
            # hi, the delivery and 6 "lo" in that round; the delivery's slot may be refilled once
            assert started[16] == "hi" and started.count("lo") <= 16 + 7, started
    finally:
        for _ in range(64):
            tokens.put_nowait(None)


async def test_a_narrowed_claim_that_finds_nothing_claims_every_name_at_once(
    db: Any, receiver: Receiver
) -> None:
    """Concurrency 1, a 30 s poll, no change stream: the worker is busy (its probe read nothing
    due) when a delivery is made elsewhere; the round after its last own job narrows, finds
    nothing, and claims again at once with every name: the delivery does not wait 30 s."""
    tokens: asyncio.Queue[None] = asyncio.Queue()
    started: list[str] = []
    worker = await make(
        db,
        {"lo": JobDef(handler=gated(tokens, started))},
        poll_interval=30.0,
        concurrency=1,
        change_streams=False,  # no wake-up from the delivery's insert: only the claims
    )
    emitter = await make(db, {}, webhook_options={"deliver": False})
    await emitter.webhooks.add(url=receiver.url("/hook"), events=["paid"])
    await worker.schedule_jobs([("lo", {})] * 3)
    try:
        async with worker:
            for n in (1, 2):
                await wait_for(lambda n=n: len(started) == n)  # type: ignore[misc]
                tokens.put_nowait(None)
            await wait_for(lambda: len(started) == 3)  # its round probed: nothing due yet
            await emitter.emit("paid", {"order": 1})
            tokens.put_nowait(None)
            await receiver.wait("/hook", 1, timeout=10)  # well within the 30 s poll
    finally:
        for _ in range(8):
            tokens.put_nowait(None)
