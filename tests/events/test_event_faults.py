"""Events on their fault paths (an outside review's findings, each failing before its fix):
a serial chain never stops for good on an outage in the step that starts its next delivery."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, WriteConcernError

from job_processor import (
    AbortSignal,
    Event,
    JobProcessorError,
    JobStatus,
    RetryLater,
    Subscriber,
    init_job_processor,
)
from job_processor.storage.compat import decode
from job_processor.sync import JobClient
from tests.engine.test_crons import until
from tests.events.test_events import make, wait_delivered
from tests.helpers import FAST, wait_for


def serial_pair(ran: list[str]) -> dict[str, list[Subscriber]]:
    """Two serial subscribers of "shipped", "a" then "b", each noting its run in `ran`."""

    def record(name: str) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            ran.append(name)

        return handler

    return {
        "shipped": [
            Subscriber("a", handler=record("a"), mode="serial"),
            Subscriber("b", handler=record("b"), mode="serial"),
        ]
    }


@pytest.mark.parametrize(
    "outage",
    [
        AutoReconnect("connection reset (test)"),
        WriteConcernError("waiting for replication timed out (test)", 64, {}),
    ],
    ids=["unreachable", "write concern not met"],
)
async def test_an_outage_as_a_chain_starts_its_next_delivery_only_delays_it(
    db: Any, outage: Exception
) -> None:
    """The hook that creates the next delivery of a serial chain fails once (MongoDB
    unreachable): it stays owed and a live worker's next sweep calls it again, so "b" runs
    (the hook used to be recorded failed, and "b" waited for ever: a finished delivery cannot
    be retried)."""
    ran: list[str] = []
    p = await make(db, serial_pair(ran))
    real, blips = p.storage.deliveries.create, []

    async def flaky(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not blips:  # the first, after the emit: the hook's insert of "b"
            blips.append(1)
            raise outage
        return await real(docs)

    async with p:
        event = await p.emit("shipped", {})
        p.storage.deliveries.create = flaky  # type: ignore[method-assign]
        shown = await wait_delivered(p, event.id, "a", "b")
    assert blips == [1] and ran == ["a", "b"]
    assert [d.status for d in shown.deliveries] == ["finished", "finished"]
    head = await p.get_job(shown.deliveries[0].job_id or "")
    assert head.exit_hook == "done"


async def test_a_chain_step_that_fails_for_another_reason_is_recorded_not_called_for_ever(
    db: Any,
) -> None:
    """Only a timeout or an outage leaves the chain's step owed for the next sweep: any other
    error (a bug) is recorded as the hook's failure, on the job, instead of being called again
    every sweep for ever."""
    ran: list[str] = []
    p = await make(db, serial_pair(ran))
    calls: list[int] = []

    async def broken(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(1)
        raise ValueError("a bug in the step (test)")

    async with p:
        event = await p.emit("shipped", {})
        p.storage.deliveries.create = broken  # type: ignore[method-assign]
        shown = await wait_delivered(p, event.id, "a")
        head_id = shown.deliveries[0].job_id or ""
        for _ in range(300):  # the hook's record is written after the delivery's end
            head = await p.get_job(head_id)
            if head.exit_hook != "pending":
                break
            await asyncio.sleep(0.02)
        await p.recovery.sweep(p.clock.now())  # a sweep does not call it again
        await p.hooks.drain()
    assert head.exit_hook == "failed" and "a bug in the step" in (head.exit_hook_error or "")
    assert ran == ["a"] and calls == [1]


async def test_an_outage_during_a_sync_wait_is_waited_out(db: Any) -> None:
    """emit's wait for its sync subscriber reads the delivery again and again: a read that
    meets an outage counts as "not yet" (it raised AutoReconnect out of emit, though the
    delivery went on and succeeded)."""
    import asyncio

    async def audit(event: Event, signal: AbortSignal) -> None:
        await asyncio.sleep(0.3)

    p = await make(db, {"paid": [Subscriber("audit", handler=audit, mode="sync")]})
    real, reads = p.storage.deliveries.by_keys, []

    async def flaky(keys: list[str]) -> Any:
        reads.append(1)
        if len(reads) == 2:
            raise AutoReconnect("connection reset (test)")
        return await real(keys)

    p.storage.deliveries.by_keys = flaky  # type: ignore[method-assign]
    async with p:
        event = await p.emit("paid", {}, sync_timeout=10)
    assert [d.status for d in event.deliveries] == ["finished"] and len(reads) > 2


async def test_a_sync_wait_never_outlasts_sync_timeout_on_a_stalled_server(db: Any) -> None:
    """Each read of the wait is bounded by what remains of `sync_timeout` (a stalled server
    made `emit(sync_timeout=1)` take as long as the read did)."""
    import asyncio
    import time

    from job_processor import EventTimeoutError

    async def audit(event: Event, signal: AbortSignal) -> None:
        await asyncio.Event().wait()  # never ends here: the wait times out

    p = await make(db, {"paid": [Subscriber("audit", handler=audit, mode="sync")]})
    real = p.storage.deliveries.by_keys
    stalled = asyncio.Event()

    async def stalling(keys: list[str]) -> Any:
        await stalled.wait()  # a server that does not answer
        return await real(keys)

    p.storage.deliveries.by_keys = stalling  # type: ignore[method-assign]
    async with p:
        started = time.monotonic()
        with pytest.raises(EventTimeoutError):
            await p.emit("paid", {}, sync_timeout=1)
        took = time.monotonic() - started
        stalled.set()
    assert took < 3


async def test_an_event_emitted_again_after_its_delivery_was_removed_returns_at_once(
    db: Any,
) -> None:
    """A key's event emitted again (an idempotent retry) after retention removed its sync
    delivery (jobs are kept a day, events 30): the first event comes back, its delivery ended
    long ago (it waited for a delivery that no longer exists, then timed out)."""
    from bson import ObjectId

    calls: list[str] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        calls.append(event.id)

    p = await make(db, {"paid": [Subscriber("audit", handler=audit, mode="sync")]})
    async with p:
        first = await p.emit("paid", {}, key="order-1", sync_timeout=10)
        job_id = first.deliveries[0].job_id
        await p.storage.jobs.coll.delete_one({"_id": ObjectId(job_id)})  # retention's work
        again = await p.emit("paid", {}, key="order-1", sync_timeout=10)
    assert again.id == first.id and calls == [first.id]


def frozen_after_insert(publisher: Any, clock: Any) -> None:
    """The publisher's process freezes between its event's insert and its fan-out, for
    `worker_timeout` and a second (its FakeClock moves on meanwhile)."""
    real = publisher.storage.events.insert

    async def then_frozen(doc: Any, **kw: Any) -> Any:
        stored = await real(doc, **kw)
        clock.advance(publisher.settings.worker_timeout + 1)  # frozen here
        return stored

    publisher.storage.events.insert = then_frozen


async def test_an_emitter_late_for_its_fan_out_leaves_it_to_the_sweep(db: Any) -> None:
    """An emitter frozen between its event's insert and its fan-out for `worker_timeout` or
    more (a sweep completes the fan-out then, and retention may remove those deliveries
    later) makes none itself: it reads them (`event_fanout_left_to_sweep`)."""
    import datetime as dt

    from job_processor import FakeClock

    async def email(event: Event, signal: AbortSignal) -> None:
        return None

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    publisher = await make(db, {"shipped": [Subscriber("email", handler=email)]}, clock=clock)
    frozen_after_insert(publisher, clock)
    event = await publisher.emit("shipped", {})
    assert event.deliveries == []
    assert await db["job_processor_jobs"].count_documents({}) == 0  # the sweep makes them


async def moving_clock_until(clock: Any, task: Any) -> Any:
    """Move the clock half a second at a time (the sync wait's polls) until `task` is done:
    its result."""
    for _ in range(1000):
        if task.done():
            break
        clock.advance(0.5)
        await asyncio.sleep(0.01)
    return await task


async def frozen_sync_publisher(db: Any) -> tuple[Any, Any, list[str]]:
    """A publisher (FakeClock) of "paid", with the sync subscriber "charge" (noting the event
    ids it ran for), frozen between its events' insert and their fan-out."""
    import datetime as dt

    from job_processor import FakeClock

    ran: list[str] = []

    async def charge(event: Event, signal: AbortSignal) -> None:
        ran.append(event.id)

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    subs = {"paid": [Subscriber("charge", handler=charge, mode="sync")]}
    publisher = await make(db, subs, clock=clock)
    frozen_after_insert(publisher, clock)
    return publisher, clock, ran


async def test_a_sync_emit_whose_fan_out_was_left_to_the_sweep_waits_for_it(db: Any) -> None:
    """The frozen emitter of an event with a sync subscriber leaves the fan-out to the sweep:
    its wait used to count the delivery not made yet as ended (deleted by retention) and
    return at once; it waits until the sweep made it and it ended."""
    publisher, clock, ran = await frozen_sync_publisher(db)
    emitting = asyncio.create_task(publisher.emit("paid", {}, sync_timeout=3600))
    await wait_for(lambda: clock.sleepers >= 1 or emitting.done())  # in its wait, or returned
    assert not emitting.done()
    async with publisher:  # its first sweep completes the fan-out; its worker runs "charge"
        event = await moving_clock_until(clock, emitting)
    assert ran == [event.id]
    assert [(d.target, d.status) for d in event.deliveries] == [("charge", "finished")]


async def test_a_fan_out_completed_between_the_sync_waits_reads_is_not_taken_as_deleted(
    db: Any,
) -> None:
    """The sync wait read the deliveries, then whether the fan-out was done: a sweep that
    completed it in between made the delivery that read missed look deleted (ended), and the
    emit returned before its subscriber ran. It reads the fan-out's state first."""
    publisher, clock, ran = await frozen_sync_publisher(db)
    store = publisher.storage.deliveries
    real_by_keys, calls = store.by_keys, [0]

    async def by_keys(keys: list[str]) -> list[dict[str, Any]]:
        docs = await real_by_keys(keys)
        calls[0] += 1
        if calls[0] == 2:  # _wait_sync's first read: a sweep completes the fan-out right after
            await publisher.events.sweep(clock.now())
        return docs

    store.by_keys = by_keys  # type: ignore[method-assign]
    emitting = asyncio.create_task(publisher.emit("paid", {}, sync_timeout=3600))
    async with publisher:  # its worker runs "charge"
        event = await moving_clock_until(clock, emitting)
        returned_before_run = not ran
    assert not returned_before_run, "sync emit returned before its sync subscriber ran"
    assert [(d.target, d.status) for d in event.deliveries] == [("charge", "finished")]


async def test_a_chain_head_run_where_its_subscriber_is_declared_async_still_advances(
    db: Any,
) -> None:
    """A rolling deploy that makes a subscriber serial: the event's first delivery carries the
    chain, and a replica still declaring the subscriber async runs it. Its definition had no
    on_job_exited, so no hook was owed and the next delivery was never made."""
    ran: list[str] = []

    def note(name: str) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            ran.append(name)

        return handler

    subs_old = {"e": [Subscriber("a", handler=note("a"))]}
    subs_new = {
        "e": [
            Subscriber("a", handler=note("a"), mode="serial"),
            Subscriber("b", handler=note("b"), mode="serial"),
        ]
    }
    old = await init_job_processor(db, subscribers=subs_old, **FAST)
    new = await init_job_processor(db, subscribers=subs_new, **FAST)
    event = await new.emit("e", {})  # the registry now says: a serial, then b
    assert [d.target for d in event.deliveries] == ["a"]
    async with old:  # the replica still declaring "a" async runs the head

        async def head_recorded() -> bool:
            (head,) = [d for d in (await old.get_event(event.id)).deliveries if d.target == "a"]
            job = await old.get_job(head.job_id or "")
            return job.status.value == "finished" and job.exit_hook != "owed"

        await until(head_recorded)
    async with new:

        async def both_ran() -> bool:
            return ran == ["a", "b"]

        await until(both_ran)
    rows = {d.target: d.status for d in (await new.get_event(event.id)).deliveries}
    assert rows == {"a": "finished", "b": "finished"}


async def test_a_replay_keeps_its_event_as_long_again_as_it_was_kept_from_its_emit(
    db: Any,
) -> None:
    """An event replayed on the last day of its `keep_events` (emitted 29 days and 23 hours
    ago, kept 30 days): its replay's retry found it deleted ("no longer exists")."""
    attempts: list[bool] = []

    async def crm(event: Event, signal: AbortSignal) -> None:
        replay = bool(event.delivery and event.delivery.replay_id)
        attempts.append(replay)
        if replay and attempts.count(True) == 1:
            raise RetryLater(1.0, "crm busy")  # the replay's first attempt

    p = await init_job_processor(db, subscribers={"e": [Subscriber("crm", handler=crm)]}, **FAST)
    async with p:
        event = await p.emit("e", {})
        await wait_for(lambda: attempts == [False])
        now = p.clock.now()
        stored = await p.storage.events.coll.find_one({"_id": ObjectId(event.id)})
        aged = {"emitted_at": now - dt.timedelta(days=30) + dt.timedelta(seconds=1)}
        aged["expires_at"] = now + dt.timedelta(seconds=1)  # replace_one: stored as dates
        await p.storage.events.coll.replace_one({"_id": stored["_id"]}, stored | aged)
        (replayed,) = await p.replay_event(event.id)

        async def ended() -> bool:
            job = await p.get_job(replayed.job_id or "")
            return job.status.value in ("finished", "errored")

        await until(ended)
        job = await p.get_job(replayed.job_id or "")
    assert attempts == [False, True, True]
    assert job.status.value == "finished", job.error
    kept = await p.storage.events.coll.find_one({"_id": ObjectId(event.id)})
    assert kept is not None and decode(kept)["expires_at"] > now + dt.timedelta(days=29)


async def test_a_client_retries_a_killed_async_delivery_at_once(mongo_url: str, db: Any) -> None:
    async def crm(event: Event, signal: AbortSignal) -> None:
        return None

    p = await init_job_processor(db, subscribers={"e": [Subscriber("crm", handler=crm)]}, **FAST)
    async with p:  # a worker ran once: the registry has the subscriber's delivery name
        pass
    event = await p.emit("e", {})  # no worker up now: its delivery waits
    (delivery,) = event.deliveries
    job_id = delivery.job_id or ""

    def from_a_web_app() -> tuple[JobStatus, float]:
        mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
        try:
            client = JobClient(mongo[db.name])  # a Django view, say: no jobs=, no hooks
            client.kill_job(job_id)
            began = time.monotonic()
            job = client.retry_job(job_id)
            return job.status, time.monotonic() - began
        finally:
            mongo.close()

    status, took = await asyncio.to_thread(from_a_web_app)
    assert status == JobStatus.PENDING and took < 2, (status, took)


async def test_one_sweep_completes_a_burst_of_owed_fan_outs(db: Any) -> None:
    """250 events whose emitter died before their fan-out (an outage during a burst of emits):
    the first sweep past `worker_timeout` creates all their deliveries, not the first 200."""

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    processor = await make(
        db, {"shipped": [Subscriber("audit", handler=audit)]}, worker_timeout=30.0
    )

    async def died(stored: Any, now: Any) -> Any:  # the emitter died after the event insert
        return [], False

    processor.events._fan_out = died  # type: ignore[method-assign]
    await asyncio.gather(*(processor.emit("shipped", {"n": n}) for n in range(250)))
    deliveries = db["job_processor_jobs"]
    assert await deliveries.count_documents({}) == 0
    later = processor.clock.now() + dt.timedelta(seconds=31)
    assert await processor.events.sweep(later) == 250
    assert await deliveries.count_documents({}) == 250


async def test_a_delivery_retried_by_hand_keeps_its_event_for_its_attempts(db: Any) -> None:
    """A retry of a failed delivery near the end of keep_events: its attempts found the event
    deleted (DoNotRetry) before; it is now kept as long again from the retry, as for a replay.
    A delivery whose event is gone is refused a retry, saying why."""
    from job_processor import DoNotRetry, FakeClock
    from job_processor.ops.admin import Admin
    from job_processor.testing import run_until_idle

    async def audit(event: Event, signal: AbortSignal) -> None:
        raise DoNotRetry("receiver down")

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    keep = dt.timedelta(hours=1)
    p = await make(
        db, {"paid": [Subscriber("audit", handler=audit)]}, clock=clock, keep_events=keep
    )
    events = db["job_processor_events"]
    first = await p.emit("paid", {"order": 1})
    second = await p.emit("paid", {"order": 2})
    await run_until_idle(p, advance_clock=False)
    clock.advance(50 * 60)  # 10 minutes before the events expire
    retried = await p.retry_job(first.deliveries[0].job_id)
    assert retried.status == JobStatus.PENDING
    stored = await events.find_one({"_id": ObjectId(first.id)})
    assert decode(stored)["expires_at"] == clock.now() + keep
    await events.delete_one({"_id": ObjectId(second.id)})  # expired (keep_events)
    with pytest.raises(JobProcessorError, match=r"its event .* is gone"):
        await p.retry_job(second.deliveries[0].job_id)
    admin = await Admin.open(db, p.storage.prefix)
    result = await admin.retry([second.deliveries[0].job_id], actor="ops")
    assert "its event is gone" in result.skipped[second.deliveries[0].job_id]


async def test_a_key_is_free_again_once_its_event_has_expired(db: Any) -> None:
    """docs/events.md: "once the first event has expired, the key is free again". The insert
    met the expired event's dedup_key (nx-27017 removes it at the next read, MongoDB's TTL
    monitor up to a minute later) and emit raised pymongo's raw DuplicateKeyError."""
    from job_processor import FakeClock

    clock = FakeClock(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))  # expires_at already past
    p = await make(db, None, clock=clock, keep_events=dt.timedelta(hours=1))
    first = await p.emit("paid", {"order": 1}, key="order-1")
    clock.advance(2 * 3600)  # past keep_events: the first event has expired
    again = await p.emit("paid", {"order": 2}, key="order-1")
    assert again.id != first.id
    assert again.payload == {"order": 2}


async def test_an_expired_event_not_yet_removed_holds_its_key_no_more(db: Any) -> None:
    """On MongoDB the TTL monitor removes an expired event up to a minute late: until then an
    emit with its key got the expired event back. Past its expires_at, it is removed then."""
    p = await make(db, None)
    now = dt.datetime.now(dt.UTC)
    old = {
        "_id": ObjectId(),
        "name": "paid",
        "dedup_key": "paid|k",
        "expires_at": now + dt.timedelta(hours=1),
    }
    await p.storage.events.insert(dict(old))
    new = {"_id": ObjectId(), "name": "paid", "dedup_key": "paid|k"}
    held = await p.storage.events.insert(dict(new), now=now + dt.timedelta(minutes=30))
    assert held["_id"] == old["_id"]  # kept: still its key's
    stored = await p.storage.events.insert(dict(new), now=now + dt.timedelta(hours=2))
    assert stored["_id"] == new["_id"]
    assert await p.storage.events.coll.find_one({"_id": old["_id"]}) is None


@pytest.mark.parametrize("timeout", [1e300, 3.2e7])
async def test_a_sync_timeout_past_a_year_is_refused_before_anything_is_written(
    db: Any, timeout: float
) -> None:
    """It passed the check (any finite number) and then raised a bare OverflowError making the
    wait's deadline (a timedelta), after the event was written."""

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"paid": [Subscriber("audit", handler=audit, mode="sync")]})
    with pytest.raises(JobProcessorError, match=r"^sync_timeout must be .* at most a year"):
        await p.emit("paid", {}, sync_timeout=timeout)
    assert await p.storage.events.coll.count_documents({}) == 0


async def with_damaged_owed_events(
    db: Any, handler: Any, damaged: list[Any]
) -> tuple[Any, dt.datetime, Any]:
    """A processor whose fan-outs are left owed (its emitter dies after the event insert), and
    owed events 5 minutes old whose targets another program damaged (`damaged`, oldest
    first): (the processor, their time, the events collection)."""
    processor = await make(db, {"shipped": [Subscriber("audit", handler=handler)]})

    async def died(stored: Any, now: Any) -> Any:
        return [], False

    processor.events._fan_out = died  # type: ignore[method-assign]
    old = processor.clock.now() - dt.timedelta(minutes=5)
    events = db["job_processor_events"]
    for targets in damaged:
        await events.insert_one(
            {"_id": ObjectId(), "name": "shipped", "payload": {}, "emitted_at": old,
             "fanout": "owed", "fanout_owed_at": old, "targets": targets}
        )  # fmt: skip
    return processor, old, events


async def test_a_damaged_owed_event_neither_stops_the_workers_nor_the_other_fan_outs(
    db: Any,
) -> None:
    """An owed event whose targets another program wrote damaged (a hand edit, a migration):
    the sweep raised KeyError on it, so every worker failed to start (its first sweep) or
    stopped (processor_loop_crashed), and no fan-out behind it was completed any more."""
    got: list[str] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        got.append(event.id)

    damaged = [[{"target": "audit"}], "audit", [None]]
    processor, old, events = await with_damaged_owed_events(db, audit, damaged)
    fine = await processor.emit("shipped", {"n": 1})
    await events.update_one(
        {"_id": ObjectId(fine.id)}, {"$set": {"fanout_owed_at": old + dt.timedelta(seconds=1)}}
    )
    async with processor:  # its first sweep completes the fan-out it can
        await wait_for(lambda: got == [fine.id], timeout=15)
    assert (await processor.get_event(fine.id)).fanout == "done"
    assert await events.count_documents({"fanout": "owed"}) == 3  # left for a person to fix


async def test_a_full_batch_of_damaged_owed_events_does_not_hide_the_fan_outs_behind_it(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that damaged a whole batch of owed events (OWED_BATCH, 200; 2 here): the
    sweep stopped at that batch ("damaged ones only"), so every fan-out owed behind them was
    never completed, sweep after sweep."""
    from job_processor.events import bus

    monkeypatch.setattr(bus, "OWED_BATCH", 2)

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    # a whole batch of damaged ones, the oldest
    processor, _, events = await with_damaged_owed_events(db, audit, ["audit", [None]])
    fine = await processor.emit("shipped", {"n": 1})  # owed now, behind them
    assert await processor.events.sweep(processor.clock.now() + dt.timedelta(hours=1)) == 1
    assert (await processor.get_event(fine.id)).fanout == "done"
    assert await events.count_documents({"fanout": "owed"}) == 2  # left for a person to fix


async def test_an_event_owed_by_its_time_only_is_fanned_out_once_not_at_every_sweep(
    db: Any,
) -> None:
    """An event another program left with an old `fanout_owed_at` but a `fanout` other than
    "owed" (a hand edit, a migration): each sweep made its fan-out again (no duplicate: the
    delivery keys are unique) and logged it recovered, for ever. Once made, it is done."""
    got: list[str] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        got.append(event.id)

    processor, _old, events = await with_damaged_owed_events(db, audit, [])
    event = await processor.emit("shipped", {"n": 1})
    await events.update_one({"_id": ObjectId(event.id)}, {"$set": {"fanout": None}})
    later = processor.clock.now() + dt.timedelta(hours=1)
    assert await processor.events.sweep(later) == 1
    assert await processor.events.sweep(later) == 0  # it was 1 at every sweep
    stored = await events.find_one({"_id": ObjectId(event.id)})
    assert stored is not None and stored["fanout"] == "done" and "fanout_owed_at" not in stored
    assert len((await processor.get_event(event.id)).deliveries) == 1
