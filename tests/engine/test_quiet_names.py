"""The built-in webhook delivery name, which every delivering process claims but few use, is left
out of a busy worker's claims until a delivery is seen (a probe per `poll_interval` looks for
one); no delivery waits more than one `poll_interval` longer for it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, FakeClock, Job, JobDef, init_job_processor
from job_processor.core import documents as D
from tests.helpers import FAST, make, wait_for

from ..receiver import Receiver, receiving

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
WEBHOOK = "webhook-delivery"


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


async def test_a_busy_worker_looks_for_due_deliveries_once_per_poll_interval(db: Any) -> None:
    clock = FakeClock(NOW)
    p = await init_job_processor(
        db, jobs={"a": JobDef(handler=noop)}, clock=clock, **(FAST | {"poll_interval": 2.0})
    )
    worker = p.worker
    assert WEBHOOK in worker.names and worker.quiet == {WEBHOOK}
    assert WEBHOOK in worker.claimable_names(), "an idle worker's claims carry every name"
    worker._backlog = True  # the last claim found a job
    assert worker.claimable_names() == ["a"], "a busy worker's claims leave it out"
    reads = 0
    any_due = worker.jobs.any_due

    async def counted(names: list[str], now: dt.datetime) -> bool:
        nonlocal reads
        reads += 1
        return await any_due(names, now)

    worker.jobs.any_due = counted  # type: ignore[method-assign]
    await worker.probe_quiet()
    assert reads == 1 and worker.quiet == {WEBHOOK}, "none due: still quiet"
    await p.storage.jobs.insert(D.new_job(WEBHOOK, {"event_id": "e"}, now=NOW))
    clock.advance(1.9)
    await worker.probe_quiet()
    assert reads == 1, "not again within poll_interval"
    clock.advance(0.1)
    await worker.probe_quiet()
    assert reads == 2 and worker.quiet == set(), "one due: found"
    assert all(WEBHOOK in worker.claimable_names() for _ in range(3)), "in every claim now"


async def test_a_processor_that_delivers_nothing_has_no_quiet_name(db: Any) -> None:
    p = await make(db, {"a": JobDef(handler=noop)}, webhook_options={"deliver": False})
    assert p.worker.quiet == set() and p.worker.claimable_names() == ["a"]


class Claims(monitoring.CommandListener):
    """The names each claim (findAndModify on the jobs) carried."""

    def __init__(self) -> None:
        self.names: list[set[str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        if event.command_name == "findAndModify" and str(cmd["findAndModify"]).endswith("jobs"):
            self.names.append(names_in(cmd.get("query", {})))

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


async def test_a_delivery_made_elsewhere_reaches_a_busy_worker_then_every_claim_has_it(
    mongo_url: str, db: Any, receiver: Receiver
) -> None:
    """Another process (delivering nothing itself) adds an endpoint and emits while this worker
    never runs out of its own jobs (each schedules the next): the delivery is made all the
    same, and from then on each claim carries the webhook name."""
    claims = Claims()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[claims]
    )
    chained = 0

    async def chain(job: Job, signal: AbortSignal) -> None:
        nonlocal chained
        chained += 1
        await job.processor.schedule_job("chain", {})  # due after the delivery: it goes first

    try:
        worker = await make(client[db.name], {"chain": JobDef(handler=chain)})
        emitter = await make(db, {}, webhook_options={"deliver": False})
        await worker.schedule_job("chain", {})
        async with worker:
            await wait_for(lambda: chained >= 20)  # a backlog that never ends
            await emitter.webhooks.add(url=receiver.url("/hook"), events=["paid"])
            await emitter.emit("paid", {"order": 1})
            await receiver.wait("/hook", 1, timeout=15)
            assert worker.worker.quiet == set()
            before = len(claims.names)
            await wait_for(lambda: len(claims.names) >= before + 3)
            later = claims.names[before:]
            assert all(WEBHOOK in names for names in later), later
        busy = [n for n in claims.names if n == {"chain"}]
        assert len(busy) >= 10, "claims under the backlog carried one name"
    finally:
        await client.close()


async def test_a_due_delivery_is_not_starved_by_better_jobs_at_each_first_claim(
    db: Any, receiver: Receiver
) -> None:
    """Concurrency 8: three high-priority jobs are always waiting (each schedules the next),
    so the first claim of every round takes one; a delivery older than the low-priority
    backlog goes in a round's batch once the probe has seen it, long before that backlog
    ends (as it would in a claim of every name)."""
    lo_left = 600
    hi_on = True

    async def hi(job: Job, signal: AbortSignal) -> None:
        if hi_on:
            await job.processor.schedule_job("hi", {}, priority=5)

    async def lo(job: Job, signal: AbortSignal) -> None:
        nonlocal lo_left
        lo_left -= 1
        await asyncio.sleep(0.005)

    worker = await make(
        db,
        {"hi": JobDef(handler=hi), "lo": JobDef(handler=lo)},
        concurrency=8,
    )
    emitter = await make(db, {}, webhook_options={"deliver": False})
    await emitter.webhooks.add(url=receiver.url("/hook"), events=["paid"])
    await emitter.emit("paid", {"order": 1})  # older than every "lo" job below
    for _ in range(3):
        await worker.schedule_job("hi", {}, priority=5)
    await worker.schedule_jobs([("lo", {})] * lo_left)
    async with worker:
        await receiver.wait("/hook", 1, timeout=15)
        ran = 600 - lo_left
        assert ran < 100, f"delivered after {ran} of the 600 younger low-priority jobs"
        hi_on = False
