"""Events on the test server: async, sync and serial subscribers, keys, replays, and the
durability of fan-outs and serial chains when a process dies in between."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from bson import ObjectId

from job_processor import (
    AbortSignal,
    DoNotRetry,
    Event,
    EventDeliveryError,
    EventTimeoutError,
    JobProcessor,
    JobStatus,
    Subscriber,
    init_job_processor,
)
from job_processor import events as ev
from job_processor.core import event_documents as E
from job_processor.core.definitions import Backoff
from tests.helpers import FAST, wait_for, wait_status

S = JobStatus
QUICK = Backoff(kind="fixed", base_seconds=0.1, jitter=False)


async def make(db: Any, subscribers: dict[str, list[Subscriber]] | None, **kw: Any) -> JobProcessor:
    return await init_job_processor(db, subscribers=subscribers, **(FAST | kw))


async def wait_delivered(
    p: JobProcessor, event_id: str, *targets: str, timeout: float = 15
) -> Event:
    """Until each target has a terminal delivery; returns the event."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        event = await p.get_event(event_id)
        states = {d.target: d.status for d in event.deliveries if d.replay_id is None}
        if all(states.get(t) in {"finished", "errored", "killed", "skipped"} for t in targets):
            return event
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"deliveries not ended: {states}")
        await asyncio.sleep(0.05)


async def test_async_subscribers_get_the_event_and_publishers_need_no_subscribers(db: Any) -> None:
    seen: list[tuple[str, Event]] = []
    threads: list[str] = []

    async def email(event: Event, signal: AbortSignal) -> str:
        seen.append(("email", event))
        return f"mailed {event.payload['shipment_id']}"

    def crm(event: Event, signal: AbortSignal) -> None:  # plain function: runs in a thread
        threads.append(threading.current_thread().name)
        seen.append(("crm", event))

    subs = {
        "shipment_created": [Subscriber("email", handler=email), Subscriber("crm", handler=crm)]
    }
    worker = await make(db, subs)
    publisher = await make(db, None)  # a web app: defines no subscriber, never started
    async with worker:
        event = await publisher.emit("shipment_created", {"shipment_id": "s1"})
        assert [d.target for d in event.deliveries] == ["email", "crm"]
        done = await wait_delivered(publisher, event.id, "email", "crm")
    assert {d.target: d.status for d in done.deliveries} == {"email": "finished", "crm": "finished"}
    assert {name for name, _ in seen} == {"email", "crm"}
    got = dict(seen)["email"]
    assert got.id == event.id
    assert got.payload == {"shipment_id": "s1"}
    assert got.emitted_by == publisher.client_id
    assert got.delivery is not None
    assert got.delivery.attempt == 1
    assert threads and threads[0] != threading.main_thread().name
    email_delivery = next(d for d in done.deliveries if d.target == "email")
    assert email_delivery.result == "mailed s1"
    # each delivery is a job like any other
    job = await publisher.get_job(email_delivery.job_id or "")
    assert job.name == "shipment_created:email"
    listed = await publisher.list_jobs("shipment_created:crm")
    assert [j.id for j in listed] == [next(d.job_id for d in done.deliveries if d.target == "crm")]
    assert (await publisher.list_events("shipment_created"))[0].id == event.id


async def test_an_event_without_subscribers_is_stored_with_nothing_owed(db: Any) -> None:
    p = await make(db, None)
    event = await p.emit("nobody_listens", {"a": 1})
    assert event.fanout == "done"
    assert event.deliveries == []
    assert (await p.get_event(event.id)).payload == {"a": 1}


async def test_serial_subscribers_run_in_order_each_with_its_retries(db: Any) -> None:
    log: list[str] = []
    running = 0

    def step(name: str, fail_first: bool = False) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            nonlocal running
            running += 1
            assert running == 1, "serial subscribers overlapped"
            await asyncio.sleep(0.05)
            running -= 1
            log.append(f"{name}#{event.delivery.attempt if event.delivery else 0}")
            if fail_first and event.delivery and event.delivery.attempt == 1:
                raise ConnectionError("crm down")

        return handler

    subs = {
        "shipped": [
            Subscriber("a", handler=step("a"), mode="serial"),
            Subscriber("b", handler=step("b", fail_first=True), mode="serial", backoff=QUICK),
            Subscriber("c", handler=step("c"), mode="serial"),
        ]
    }
    p = await make(db, subs, concurrency=4)
    async with p:
        event = await p.emit("shipped", {})
        assert [d.target for d in event.deliveries] == ["a"]  # only the head exists yet
        done = await wait_delivered(p, event.id, "a", "b", "c")
    assert log == ["a#1", "b#1", "b#2", "c#1"]
    by = {d.target: d for d in done.deliveries}
    assert [by[t].status for t in "abc"] == ["finished"] * 3
    assert by["b"].failures == 1
    assert by["b"].max_attempts == 3
    assert by["a"].ended_at and by["c"].created_at and by["a"].ended_at <= by["c"].created_at


async def test_a_serial_failure_stops_the_chain_and_records_the_rest_as_skipped(db: Any) -> None:
    ran: list[str] = []

    async def ok(event: Event, signal: AbortSignal) -> None:
        ran.append("ok")

    async def broken(event: Event, signal: AbortSignal) -> None:
        ran.append("broken")
        raise DoNotRetry("invalid shipment")

    subs = {
        "shipped": [
            Subscriber("first", handler=ok, mode="serial"),
            Subscriber("second", handler=broken, mode="serial"),
            Subscriber("third", handler=ok, mode="serial"),
            Subscriber("fourth", handler=ok, mode="serial"),
            Subscriber("side", handler=ok),  # async: not part of the chain
        ]
    }
    p = await make(db, subs, concurrency=2)
    async with p:
        event = await p.emit("shipped", {})
        done = await wait_delivered(p, event.id, "first", "second", "third", "fourth", "side")
    by = {d.target: d for d in done.deliveries}
    assert by["second"].status == "errored"
    assert by["second"].attempt == 1  # DoNotRetry
    for name in ("third", "fourth"):
        assert by[name].status == "skipped"
        assert by[name].skip_reason == "chain_stopped"
        assert by[name].error is not None
        assert "'second' before it ended errored (DoNotRetry: invalid shipment)" in by[name].error
    assert by["side"].status == "finished"
    assert sorted(ran) == ["broken", "ok", "ok"]


async def test_sync_subscribers_make_emit_wait_and_raise_when_they_fail(db: Any) -> None:
    audited: list[str] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        await asyncio.sleep(0.1)
        if event.payload.get("bad"):
            raise ValueError("audit rejected it")
        audited.append(event.id)

    subs = {
        "paid": [Subscriber("audit", handler=audit, mode="sync", max_attempts=2, backoff=QUICK)]
    }
    p = await make(db, subs)
    async with p:
        event = await p.emit("paid", {"amount": 3})
        assert audited == [event.id]  # it ran before emit returned
        assert [d.status for d in event.deliveries] == ["finished"]
        with pytest.raises(EventDeliveryError, match="'audit' errored after 2 attempt") as failed:
            await p.emit("paid", {"bad": True})
        assert "ValueError: audit rejected it" in str(failed.value)
        recorded = await p.get_event(failed.value.event_id)
        assert [d.status for d in recorded.deliveries] == ["errored"]  # recorded first


async def test_a_sync_emit_times_out_when_no_worker_serves_the_subscriber(db: Any) -> None:
    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    await make(db, {"paid": [Subscriber("audit", handler=audit, mode="sync")]})  # registers
    publisher = await make(db, None)
    with pytest.raises(EventTimeoutError, match="no live worker serves 'paid:audit'") as late:
        await publisher.emit("paid", {}, sync_timeout=0.3)
    assert [d.status for d in (await publisher.get_event(late.value.event_id)).deliveries] == [
        "pending"
    ]


async def test_a_sync_timeout_also_names_a_sync_subscriber_that_failed_meanwhile(
    db: Any,
) -> None:
    """Two sync subscribers, one failed for good and one still running at the timeout: the
    error named only the running one, so the failure was found only on get_event."""
    release = asyncio.Event()

    async def audit(event: Event, signal: AbortSignal) -> None:
        raise DoNotRetry("audit rejected it")

    async def ledger(event: Event, signal: AbortSignal) -> None:
        await release.wait()

    subs = {
        "paid": [
            Subscriber("audit", handler=audit, mode="sync"),
            Subscriber("ledger", handler=ledger, mode="sync"),
        ]
    }
    p = await make(db, subs, concurrency=2)
    async with p:
        try:
            with pytest.raises(EventTimeoutError) as late:
                await p.emit("paid", {}, sync_timeout=1.0)
        finally:
            release.set()
    said = str(late.value)
    assert "'audit' errored after 1 attempt(s): DoNotRetry: audit rejected it" in said, said
    assert "'ledger' is running" in said or "'ledger' is pending" in said, said
    assert [d.target for d in late.value.deliveries] == ["ledger"]  # those under way


async def test_a_key_deduplicates_emits(db: Any) -> None:
    calls: list[str] = []

    async def once(event: Event, signal: AbortSignal) -> None:
        calls.append(event.id)

    p = await make(db, {"signed_up": [Subscriber("welcome", handler=once)]})
    async with p:
        first = await p.emit("signed_up", {"user": 1}, key="user-1")
        again = await p.emit("signed_up", {"user": 1}, key="user-1")
        assert again.id == first.id
        await wait_delivered(p, first.id, "welcome")
        third = await p.emit("signed_up", {"user": 1}, key="user-1")
        assert third.id == first.id
        assert [d.status for d in third.deliveries] == ["finished"]
    assert calls == [first.id]
    assert len(await p.list_events("signed_up")) == 1


async def test_an_owed_fanout_is_completed_by_the_recovery_sweep(db: Any) -> None:
    """The emitter died after storing the event and before creating its deliveries."""
    got: list[str] = []

    async def handler(event: Event, signal: AbortSignal) -> None:
        got.append(event.id)

    p = await make(db, {"shipped": [Subscriber("email", handler=handler)]})
    past = p.clock.now() - dt.timedelta(seconds=10)
    targets = await ev.current_targets(p.storage, "shipped", 10)
    doc = E.new_event(
        "shipped", {}, key=None, now=past, emitted_by="dead", instance_id=None, targets=targets
    )
    await p.storage.events.insert(doc)  # what a crash right after the insert leaves
    assert (await p.get_event(str(doc["_id"]))).fanout == "owed"
    async with p:
        event = await wait_delivered(p, str(doc["_id"]), "email")
    assert event.fanout == "done"
    assert got == [str(doc["_id"])]


async def test_a_serial_chain_continues_after_its_process_died_in_between(db: Any) -> None:
    """The first delivery's final write recorded the chain's next step as owed, then its
    process died: another worker's recovery creates the next delivery."""
    ran: list[str] = []

    def record(name: str) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            ran.append(name)

        return handler

    subs = {
        "shipped": [
            Subscriber("a", handler=record("a"), mode="serial"),
            Subscriber("b", handler=record("b"), mode="serial"),
        ]
    }
    p = await make(db, subs)
    event = await p.emit("shipped", {})
    head = event.deliveries[0]
    # older than worker_timeout + on_job_exited_timeout: its owner is surely gone
    old = p.clock.now() - dt.timedelta(seconds=120)
    await p.storage.jobs.coll.update_one(
        {"_id": ObjectId(head.job_id)},
        {
            "$set": {
                "status": "finished",
                "ended_at": old,
                "exit_hook": "owed",
                "exit_hook_id": "h1",
                "exit_hook_owner": "a-dead-worker",
                "exit_hook_at": old,
            },
            "$unset": {"claim_name": ""},
        },
    )
    async with p:
        done = await wait_delivered(p, event.id, "a", "b")
    assert ran == ["b"]  # "a" had run in the dead process
    assert {d.target: d.status for d in done.deliveries} == {"a": "finished", "b": "finished"}


async def test_replays_deliver_again_with_their_own_records(db: Any) -> None:
    calls: list[tuple[str, str | None]] = []

    def record(name: str) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            calls.append((name, event.delivery.replay_id if event.delivery else None))

        return handler

    subs = {"shipped": [Subscriber("a", handler=record("a")), Subscriber("b", handler=record("b"))]}
    p = await make(db, subs)
    async with p:
        e1 = await p.emit("shipped", {"n": 1})
        e2 = await p.emit("shipped", {"n": 2})
        await wait_delivered(p, e1.id, "a", "b")
        await wait_delivered(p, e2.id, "a", "b")
        replayed = await p.replay_event(e1.id, subscribers=["b"])
        assert [(d.target, d.status) for d in replayed] == [("b", "pending")]
        again = await p.replay_events("shipped", since=e1.emitted_at, subscribers=["a"])
        assert sorted(d.event_id for d in again) == sorted([e1.id, e2.id])
        ids = {d.job_id for d in [*replayed, *again]}
        await wait_for(lambda: len(calls) == 7)
        for job_id in ids:
            await wait_status(p, job_id or "", S.FINISHED)
        shown = await p.get_event(e1.id)
    assert sorted(c[0] for c in calls) == ["a", "a", "a", "a", "b", "b", "b"]
    assert sum(1 for c in calls if c[1] is not None) == 3
    assert shown.replays == 2
    assert [(d.target, d.replay_id is None) for d in shown.deliveries] == [
        ("a", True),
        ("b", True),
        ("b", False),
        ("a", False),
    ]


async def test_a_running_delivery_can_be_killed_and_stops_its_chain(db: Any) -> None:
    started = asyncio.Event()

    async def slow(event: Event, signal: AbortSignal) -> None:
        started.set()
        await signal.wait()
        signal.raise_if_aborted()

    async def never(event: Event, signal: AbortSignal) -> None:
        raise AssertionError("must not run")

    subs = {
        "shipped": [
            Subscriber("slow", handler=slow, mode="serial"),
            Subscriber("after", handler=never, mode="serial"),
        ]
    }
    p = await make(db, subs)
    async with p:
        event = await p.emit("shipped", {})
        await asyncio.wait_for(started.wait(), 10)
        await p.kill_job(event.deliveries[0].job_id or "")
        done = await wait_delivered(p, event.id, "slow", "after")
    by = {d.target: d for d in done.deliveries}
    assert by["slow"].status == "killed"
    assert by["after"].status == "skipped"


async def test_handlers_can_emit_follow_up_events(db: Any) -> None:
    async def first(event: Event, signal: AbortSignal) -> None:
        await event.processor.emit("second_thing", {"from": event.id})

    seen: list[dict[str, Any]] = []

    async def second(event: Event, signal: AbortSignal) -> None:
        seen.append(event.payload)

    subs = {
        "first_thing": [Subscriber("chain", handler=first)],
        "second_thing": [Subscriber("end", handler=second)],
    }
    p = await make(db, subs)
    async with p:
        event = await p.emit("first_thing", {})
        await wait_for(lambda: bool(seen))
    assert seen == [{"from": event.id}]


async def test_the_registry_lists_subscribers_with_their_live_workers(db: Any) -> None:
    async def h(event: Event, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"x": [Subscriber("one", handler=h, mode="sync")]})
    other = await make(db, None)
    assert [(s.job_name, s.live_workers) for s in await other.list_subscribers()] == [("x:one", [])]
    async with p:
        infos = await other.list_subscribers()
        assert infos[0].live_workers == [p.worker_id]
    assert await other.prune_subscribers() == ["x:one"]
    assert await other.list_subscribers() == []


async def test_retrying_the_failed_serial_delivery_resumes_the_chain(db: Any) -> None:
    fixed = False
    ran: list[str] = []

    async def flaky(event: Event, signal: AbortSignal) -> None:
        if not fixed:
            raise DoNotRetry("bug")
        ran.append("first")

    async def after(event: Event, signal: AbortSignal) -> None:
        ran.append("after")

    subs = {
        "shipped": [
            Subscriber("first", handler=flaky, mode="serial"),
            Subscriber("after", handler=after, mode="serial"),
        ]
    }
    p = await make(db, subs)
    async with p:
        event = await p.emit("shipped", {})
        stopped = await wait_delivered(p, event.id, "first", "after")
        assert [d.status for d in stopped.deliveries] == ["errored", "skipped"]
        fixed = True
        await p.retry_job(stopped.deliveries[0].job_id or "")
        await wait_for(lambda: ran == ["first", "after"])
        resumed = await p.get_event(event.id)
        while resumed.deliveries[-1].status != "finished":
            await asyncio.sleep(0.05)
            resumed = await p.get_event(event.id)
    assert [(d.target, d.status) for d in resumed.deliveries] == [
        ("first", "finished"),
        ("after", "finished"),
    ]


async def test_job_names_cannot_take_a_delivery_name(db: Any) -> None:
    from job_processor import InvalidDefinitionError, JobDef

    async def h(*args: Any) -> None:
        return None

    with pytest.raises(InvalidDefinitionError, match="taken by event deliveries"):
        await init_job_processor(
            db,
            jobs={"shipped:email": JobDef(handler=h)},
            subscribers={"shipped": [Subscriber("email", handler=h)]},
        )
    with pytest.raises(InvalidDefinitionError, match="taken by event deliveries"):
        await init_job_processor(db, jobs={"webhook-delivery": JobDef(handler=h)})


async def test_subscriber_job_options_and_webhook_defaults_reach_their_delivery_jobs(
    db: Any,
) -> None:
    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    sub = Subscriber(
        "audit", handler=audit, tag="main", max_attempts=4, backoff=QUICK, max_runtime_in_minutes=2
    )
    p = await make(db, {"paid": [sub]})
    job = p.definitions["paid:audit"]
    assert (job.tag, job.max_attempts, job.backoff, job.max_runtime_in_minutes) == (
        "main",
        4,
        QUICK,
        2,
    )
    webhook = p.definitions[E.WEBHOOK_JOB]
    assert webhook.max_attempts == 10  # the default: exponential backoff, 10 attempts
    assert (webhook.backoff.kind, webhook.backoff.base_seconds) == ("exponential", 10)
    await p.webhooks.add(url="http://127.0.0.1:9/hook", events=["paid"])
    event = await p.emit("paid", {})
    by = {d.kind: d for d in event.deliveries}
    assert by["subscriber"].max_attempts == 4
    assert by["webhook"].max_attempts == 10
    stored = await p.get_job(by["subscriber"].job_id or "")
    assert stored.tag == "main"


async def test_a_misspelt_event_name_warns_is_flagged_and_strict_mode_raises(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from job_processor import InvalidArgumentError
    from job_processor.ops.admin import Admin

    async def placed(event: Event, signal: AbortSignal) -> None:
        return None

    logger = logging.getLogger("test.events.misspelt")
    subs = {"order_placed": [Subscriber("email", handler=placed)]}
    p = await make(db, subs, logger=logger)
    with caplog.at_level(logging.WARNING, logger="test.events.misspelt"):
        event = await p.emit("order_placd", {"order": 1})
    assert event.targets == []  # stored, delivered to nobody
    [warned] = [r for r in caplog.records if r.__dict__.get("event") == "event_without_target"]
    assert "did you mean 'order_placed'?" in warned.__dict__["fields"]["hint"]
    warning = "events with no subscriber or webhook: 'order_placd' (did you mean 'order_placed'?)"
    status = await p.get_status()
    assert any(w.startswith(warning) for w in status.warnings), status.warnings
    overview = await (await Admin.open(db)).overview()
    assert any(w.startswith(warning) for w in overview.warnings)  # the dashboard's overview
    strict = await make(db, subs, strict_events=True)
    with pytest.raises(InvalidArgumentError, match=r"'order_placd' \(did you mean 'order_placed'"):
        await strict.emit("order_placd", {"order": 2})
    assert len(await strict.list_events("order_placd")) == 1  # nothing written by the refusal
    await strict.emit("order_placed", {"order": 3})  # a known name goes through


async def test_an_event_whose_endpoint_is_disabled_is_not_a_typo_and_its_warning_clears(
    db: Any,
) -> None:
    """Its only listener, a webhook endpoint, is disabled: strict_events does not refuse it
    (the name is known, even when it became known since the process last read the names:
    a refusal reads them again), no did-you-mean names the event itself; once a subscriber
    listens and the events are replayed, the status warning is gone."""
    from job_processor import InvalidArgumentError
    from job_processor.events.webhooks import generate_secret

    strict = await make(db, None, strict_events=True, webhook_secrets={"s": generate_secret()})
    with pytest.raises(InvalidArgumentError):  # a typo refused: the known names read (none)
        await strict.emit("order.payd", {"order": 0})
    hook = await strict.webhooks.add(
        url="https://hooks.example.com/paid", events=["order.paid"], secret_ref="s"
    )
    await strict.webhooks.disable(hook.id)
    event = await strict.emit("order.paid", {"order": 1})  # no raise
    assert event.targets == []
    [warning] = [w for w in (await strict.get_status()).warnings if "order.paid" in w]
    assert "did you mean" not in warning
    assert "the endpoints listening to it are disabled: enable one, then replay them" in warning

    async def paid(event: Event, signal: AbortSignal) -> None:
        return None

    listening = await make(db, {"order.paid": [Subscriber("ledger", handler=paid)]})
    async with listening:
        [delivery] = await listening.replay_event(event.id)
        assert delivery.target == "ledger"
        await wait_status(listening, delivery.job_id, "finished")
        assert not [w for w in (await listening.get_status()).warnings if "order.paid" in w]


async def test_a_plain_subscriber_given_up_is_logged_when_it_returns(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    started, release = threading.Event(), threading.Event()

    def slow(event: Event, signal: AbortSignal) -> None:  # never looks at the signal
        started.set()
        release.wait()

    log = logging.getLogger("myservice.events")
    p = await make(db, {"paid": [Subscriber("slow", handler=slow)]}, logger=log)
    try:
        with caplog.at_level(logging.WARNING, logger="myservice.events"):
            async with p:
                event_id = (await p.emit("paid", {"order": 7})).id
                await wait_for(lambda: started.is_set(), timeout=10)
                (delivery,) = (await p.get_event(event_id)).deliveries
                assert delivery.job_id is not None
                await p.kill_job(delivery.job_id)  # given up after its grace: still running
                await wait_delivered(p, event_id, "slow")
                release.set()
                await wait_for(
                    lambda: any(
                        r.__dict__.get("event") == "subscriber_returned_late"
                        for r in caplog.records
                    ),
                    timeout=10,
                )
    finally:
        release.set()
    late = next(r for r in caplog.records if r.__dict__.get("event") == "subscriber_returned_late")
    fields = late.__dict__["fields"]
    assert fields["subscriber"] == "slow" and fields["event_id"] == event_id
    assert fields["function"] == "slow" and fields["job_id"] == delivery.job_id
    cancelled = next(r for r in caplog.records if r.__dict__.get("event") == "job_cancelled")
    assert cancelled.__dict__["fields"]["thread_left_running"] is True
    assert (await p.get_job(delivery.job_id)).status == S.KILLED


async def test_delivery_jobs_are_not_made_by_hand(db: Any) -> None:
    from job_processor.core.errors import InvalidArgumentError
    from job_processor.ops.admin import Admin

    async def email(event: Event, signal: AbortSignal) -> None:
        pass

    p = await make(db, {"paid": [Subscriber("email", handler=email)]})
    async with p:  # registers its definitions, deliveries marked as such
        admin = await Admin.open(db, p.storage.prefix)
        for name in ("paid:email", "webhook-delivery"):
            with pytest.raises(InvalidArgumentError, match="is an event delivery"):
                await admin.new_job(name, {})


async def test_a_subscribers_error_in_the_workers_log_hides_the_events_secrets(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The delivery's own payload names the event only; the error quotes the event's payload,
    whose secrets the worker's log hides as the event's page does."""
    import logging

    async def crm(event: Event, signal: AbortSignal) -> None:
        said = event.payload
        raise ValueError(f"crm refused {said['card_number']} for {said['email']}")

    logger = logging.getLogger("test.events.masking")
    subs = {"order": [Subscriber("crm", handler=crm, mode="sync", max_attempts=1)]}
    p = await make(db, subs, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.events.masking"):
        async with p:
            payload = {"card_number": "4111-1111-1111", "email": "ada@example.com"}
            with pytest.raises(EventDeliveryError):
                await p.emit("order", payload)
    (errored,) = [r for r in caplog.records if r.__dict__.get("event") == "job_errored"]
    assert errored.__dict__["fields"]["error"] == (
        "ValueError: crm refused •••••• for ada@example.com"
    )


async def test_strict_emit_does_not_fail_once_the_catch_all_endpoint_is_disabled(db: Any) -> None:
    """Listened to by a "*" endpoint only, which its failures then disabled: strict emits of the
    name started raising (the name was known only through "*", left out of the known names),
    and the status called it a probable typo (an outside review's finding, failing before its
    fix)."""
    from job_processor.events.webhooks import generate_secret

    p = await make(db, None, strict_events=True, webhook_secrets={"s": generate_secret()})
    hook = await p.webhooks.add(url="https://hooks.example.com/all", events=["*"], secret_ref="s")
    event = await p.emit("order.paid", {"order": 1})  # listened to by the "*" endpoint
    assert [t.target for t in event.targets] == [f"webhook:{hook.id}"]
    await p.webhooks.disable(hook.id, reason="failures")
    again = await p.emit("order.paid", {"order": 2})
    assert again.targets == []
    [warning] = [w for w in (await p.get_status()).warnings if "order.paid" in w]
    assert "the endpoints listening to it are disabled: enable one, then replay them" in warning


async def test_a_job_named_webhook_delivery_is_refused_even_with_deliver_false(db: Any) -> None:
    """With deliver=False the name was not reserved: the job claimed every webhook delivery
    of the database, ran its own handler and ended them finished, no request sent."""
    from job_processor import InvalidDefinitionError, JobDef, WebhookOptions

    async def mine(job: Any, signal: AbortSignal) -> str:
        return "my own job ran"

    with pytest.raises(InvalidDefinitionError, match="taken by event deliveries"):
        await init_job_processor(
            db,
            jobs={"webhook-delivery": JobDef(handler=mine)},
            webhook_options=WebhookOptions(deliver=False),
            **FAST,
        )


async def test_a_job_named_like_another_services_subscriber_is_refused(db: Any) -> None:
    """A subscriber declared by another process (in the registry) takes its job name: a job
    of that name claimed its deliveries and the subscriber never ran."""
    from job_processor import InvalidDefinitionError, JobDef

    async def ship(event: Event, signal: AbortSignal) -> None: ...

    async def mine(job: Any, signal: AbortSignal) -> str:
        return "my own job ran"

    await make(db, {"order": [Subscriber("ship", handler=ship)]})
    with pytest.raises(InvalidDefinitionError, match=r"'order:ship' is taken .* declared by"):
        await init_job_processor(db, jobs={"order:ship": JobDef(handler=mine)}, **FAST)
    assert await init_job_processor(db, jobs={"order-ship": JobDef(handler=mine)}, **FAST)


async def test_strict_emit_refuses_a_name_whose_only_endpoint_was_removed(db: Any) -> None:
    """The names known were cached a minute: a name whose only endpoint was removed was
    still stored by a strict emit."""
    from job_processor import InvalidArgumentError
    from job_processor.events.webhooks import generate_secret

    strict = await make(db, None, strict_events=True, webhook_secrets={"s": generate_secret()})
    hook = await strict.webhooks.add(
        url="https://hooks.example.com/paid", events=["order.paid"], secret_ref="s"
    )
    await strict.webhooks.disable(hook.id)
    await strict.emit("order.paid", {"order": 1})  # stored: its only endpoint is disabled
    await strict.webhooks.remove(hook.id)  # nothing knows the name any more
    with pytest.raises(InvalidArgumentError, match="no subscriber and no webhook endpoint"):
        await strict.emit("order.paid", {"order": 2})
    assert len(await strict.list_events("order.paid")) == 1


async def test_a_subscriber_named_like_another_services_job_is_refused(db: Any) -> None:
    """The reverse order of the registry check: the job's process started first (its name in
    the names registry), then a process declaring the subscriber: the job claimed the
    deliveries and the subscriber never ran."""
    from job_processor import InvalidDefinitionError, JobDef

    async def ship(event: Event, signal: AbortSignal) -> None: ...

    async def mine(job: Any, signal: AbortSignal) -> str:
        return "my own job ran"

    other = await init_job_processor(db, jobs={"order:ship": JobDef(handler=mine)}, **FAST)
    async with other:  # running: its name is registered
        with pytest.raises(InvalidDefinitionError, match=r"'order:ship' .* is a job that"):
            await make(db, {"order": [Subscriber("ship", handler=ship)]})
    # a subscriber that already ran here restarts (its own delivery rows are not a clash)
    await make(db, {"paid": [Subscriber("ship", handler=ship)]})
    started = await make(db, {"paid": [Subscriber("ship", handler=ship)]})
    async with started:
        pass
    assert await make(db, {"paid": [Subscriber("ship", handler=ship)]})


async def test_a_subscriber_restarts_over_its_delivery_row_written_before_the_mark(
    db: Any,
) -> None:
    """A names-registry row of a subscriber's delivery written by a version before the
    `delivery` mark: the process declaring that subscriber restarts on this version (the
    subscribers registry says the row is its delivery), not refused as another's job."""

    async def ship(event: Event, signal: AbortSignal) -> None: ...

    first = await make(db, {"paid": [Subscriber("ship", handler=ship)]})
    async with first:  # its delivery 'paid:ship' registered, its subscriber declared
        pass
    await first.storage.definitions.coll.update_one(
        {"_id": "paid:ship"}, {"$unset": {"delivery": ""}}
    )
    again = await make(db, {"paid": [Subscriber("ship", handler=ship)]})  # the upgrade
    async with again:
        pass
