"""job_processor.testing, used the way its docstring tells users to (no server at all)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer

from job_processor import (
    AbortSignal,
    InvalidArgumentError,
    InvalidPayloadError,
    Job,
    JobAbortedError,
    JobDef,
    JobStatus,
    RetryLater,
)
from job_processor.admin import Admin
from job_processor.testing import JobHarness, in_memory_processor, run_until_idle

S = JobStatus


async def reindex(job: Job, signal: AbortSignal) -> int:
    batch = (job.state or {}).get("batch", 0)
    while batch < 100:
        signal.raise_if_aborted()
        batch += 1
        await job.checkpoint({"batch": batch})
    return batch


async def test_a_handler_resumes_from_the_state_it_is_given() -> None:
    harness = JobHarness(payload={"index": "users"}, state={"batch": 98})
    assert await harness.run(reindex) == 100
    assert harness.checkpoints == [{"batch": 99}, {"batch": 100}]
    assert harness.job.state == {"batch": 100}


async def test_the_test_controls_the_abort_signal() -> None:
    harness = JobHarness(abort_after_checkpoints=(3, "shutdown"))
    with pytest.raises(JobAbortedError, match="shutdown"):
        await harness.run(reindex)
    assert harness.checkpoints[-1] == {"batch": 3}
    killed = JobHarness()
    killed.abort("killed")
    with pytest.raises(JobAbortedError, match="killed"):
        await killed.run(reindex)


async def test_the_harness_refuses_what_a_worker_refuses() -> None:
    """Checkpoints and results a worker could not store fail the test as they would fail the
    job; an abort reason a worker never gives is refused."""
    from decimal import Decimal

    from job_processor import InvalidArgumentError, InvalidPayloadError

    for state, said in (
        ({"stats": {"ratio": float("nan")}}, "checkpoint state field 'stats.ratio' is nan"),
        ({"d": Decimal(1)}, "checkpoint state field 'd'"),
        ([1], "checkpoint state must be a dict, got list"),
    ):

        async def saves(job: Job, signal: AbortSignal, state: Any = state) -> None:
            await job.checkpoint(state)

        with pytest.raises(InvalidPayloadError, match=said):
            await JobHarness().run(saves)

    async def naive(job: Job, signal: AbortSignal) -> dict[str, Any]:
        return {"at": dt.datetime(2030, 1, 1)}

    with pytest.raises(InvalidPayloadError, match="could not store this result: result field 'at'"):
        await JobHarness().run(naive)
    with pytest.raises(InvalidArgumentError, match="abort reason must be one of killed, "):
        JobHarness().abort("nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="abort reason must be one of"):
        JobHarness(abort_after_checkpoints=(1, "nope"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware datetime"):
        JobHarness(now=dt.datetime(2030, 1, 1))

    for returned, stored in (({"ratio": float("nan")}, {"ratio": "nan"}), ({"a"}, "{'a'}")):

        async def odd(job: Job, signal: AbortSignal, returned: Any = returned) -> Any:
            return returned

        harness = JobHarness()
        assert await harness.run(odd) is returned  # what the handler returned ...
        assert harness.stored_result == stored  # ... and what a worker stores of it
        with pytest.raises(InvalidPayloadError):  # a later run that fails: nothing stored
            await harness.run(naive)
        assert harness.stored_result is None


class Email(BaseModel):
    to: str


async def test_a_typed_payload_reaches_the_handler_as_its_model() -> None:
    async def send(job: Job[Email], signal: AbortSignal) -> str:
        return job.payload.to.upper()

    assert await JobHarness(Email(to="ada@example.com")).run(send) == "ADA@EXAMPLE.COM"


def test_a_plain_function_handler_runs_too() -> None:
    import asyncio

    def count(job: Job, signal: AbortSignal) -> int:
        return len(job.payload["rows"])

    assert asyncio.run(JobHarness({"rows": [1, 2, 3]}).run(count)) == 3


async def test_a_flow_with_chaining_and_retries_on_the_in_memory_processor() -> None:
    sent: list[str] = []

    async def signup(job: Job, signal: AbortSignal) -> None:
        await job.processor.schedule_job("send-email", {"to": job.payload["email"]})

    async def send_email(job: Job, signal: AbortSignal) -> None:
        if job.failures < 2:
            raise RetryLater(60, "provider busy")
        sent.append(job.payload["to"])

    jobs = {
        "signup": JobDef(handler=signup),
        "send-email": JobDef(handler=send_email, max_attempts=5),
    }
    async with in_memory_processor(jobs=jobs) as processor:
        t0 = processor.clock.now()
        await processor.schedule_job("signup", {"email": "ada@example.com"})
        ran = await run_until_idle(processor)
        assert [(j.name, j.status) for j in ran] == [
            ("signup", S.FINISHED),
            ("send-email", S.PENDING),
            ("send-email", S.PENDING),
            ("send-email", S.FINISHED),
        ]
        assert processor.clock.now() == t0 + dt.timedelta(seconds=120)  # two retries, 60 s each
        assert sent == ["ada@example.com"]
        assert (await processor.get_status()).workers == []


async def test_crons_run_when_the_clock_is_moved_until_a_time() -> None:
    runs: list[Any] = []

    async def hourly(job: Job, signal: AbortSignal) -> None:
        runs.append(job.scheduled_for)

    crons = {"hourly": {"cron_string": "0 * * * *", "handler": hourly}}
    async with in_memory_processor(crons=crons) as processor:
        t0 = processor.clock.now()
        ran = await run_until_idle(processor, until=t0 + dt.timedelta(hours=3))
    assert [j.status for j in ran] == [S.FINISHED] * 3
    assert runs == [t0 + dt.timedelta(hours=h) for h in (1, 2, 3)]


async def test_a_checkpoint_without_await_fails_the_handlers_test() -> None:
    import warnings

    async def forgets(job: Job, signal: AbortSignal) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            job.checkpoint({"step": 1})  # type: ignore[unused-coroutine]
        return "done"

    with pytest.raises(AssertionError, match=r"job.checkpoint\(\) called without `await`"):
        await JobHarness().run(forgets)


async def test_a_plain_def_handler_checkpoints_with_the_sync_form_under_the_harness() -> None:
    def pages(job: Job, signal: AbortSignal) -> int:
        for page in range((job.state or {}).get("page", 0) + 1, 4):
            job.checkpoint_sync({"page": page})
            job.report_progress_sync(page, 3)
        return 3

    harness = JobHarness(state={"page": 1})
    assert await harness.run(pages) == 3
    assert harness.checkpoints == [{"page": 2}, {"page": 3}]
    assert [p["done"] for p in harness.progress_reports] == [2, 3]


class Customer(BaseModel):
    customer_id: int = Field(alias="customerId")  # a camelCase API's model (no populate_by_name)


async def test_the_harness_takes_a_typed_payload_with_aliases_as_a_worker_does() -> None:
    async def bill(job: Job[Customer], signal: AbortSignal) -> int:
        return job.payload.customer_id

    jobs = {"bill": JobDef(handler=bill, payload_model=Customer)}
    async with in_memory_processor(jobs=jobs) as processor:  # a worker runs it
        await processor.schedule_job("bill", Customer(customerId=7))
        [ran] = await run_until_idle(processor)
        assert (ran.status, ran.result) == (S.FINISHED, 7)
    assert await JobHarness(Customer(customerId=7)).run(bill) == 7


async def test_run_until_idle_keeps_a_rate_limit_as_a_worker_does() -> None:
    from job_processor import Limit

    starts: list[dt.datetime] = []

    async def call(job: Job, signal: AbortSignal) -> None:
        starts.append(job.processor.clock.now())

    jobs = {"call-api": JobDef(handler=call, limit=Limit(key="api", rate=1, per_seconds=60))}
    async with in_memory_processor(jobs=jobs) as processor:
        for i in range(3):
            await processor.schedule_job("call-api", {"i": i})
        ran = await run_until_idle(processor)
    assert [j.status for j in ran] == [S.FINISHED] * 3
    # one start per 60 s: the clock moved to when the limit allowed the next one
    assert [b - a for a, b in itertools.pairwise(starts)] == [dt.timedelta(seconds=60)] * 2


async def test_run_until_idle_keeps_a_per_tenant_rate_limit_and_runs_every_job() -> None:
    """A per-value rate limit whose keys are all full: the clock moves to when one has room
    (it returned as if idle, four jobs left pending)."""
    from job_processor import Limit

    starts: list[tuple[int, dt.datetime]] = []

    async def call(job: Job, signal: AbortSignal) -> None:
        starts.append((job.payload["tenant"], job.processor.clock.now()))

    limit = Limit(key="tenant:{tenant}", rate=1, per_seconds=60)
    async with in_memory_processor(jobs={"sync": JobDef(handler=call, limit=limit)}) as processor:
        t0 = processor.clock.now()
        for i in range(6):
            await processor.schedule_job("sync", {"tenant": i % 2})
        ran = await run_until_idle(processor)
        assert [j.status for j in ran] == [S.FINISHED] * 6
    # one start per tenant per 60 s: the clock moved to when each tenant's rate allowed it
    assert sorted((t, (at - t0).total_seconds()) for t, at in starts) == [
        (0, 0.0),
        (0, 60.0),
        (0, 120.0),
        (1, 0.0),
        (1, 60.0),
        (1, 120.0),
    ]


async def test_max_runtime_counts_from_the_claim_when_the_test_moves_the_fake_clock() -> None:
    """A test that sees the job running, then moves the FakeClock past its max runtime: the
    run is aborted "timeout" (the timer counted from when the handler's task first ran, so a
    move made between the claim and then was lost: the job ran for ever)."""
    reasons: list[str | None] = []

    async def stuck(job: Job, signal: AbortSignal) -> None:
        await signal.wait()
        reasons.append(signal.reason)
        signal.raise_if_aborted()

    jobs = {"stuck": JobDef(handler=stuck, max_runtime_in_minutes=1)}
    # a worker_timeout past the move: a jump longer than it would declare the worker dead
    async with in_memory_processor(jobs=jobs, worker_timeout=3600) as processor:
        job = await processor.schedule_job("stuck")
        await processor.start()
        deadline = asyncio.get_running_loop().time() + 10
        while (await processor.get_job(job.id)).status != S.RUNNING:
            assert asyncio.get_running_loop().time() < deadline, "never claimed"
            await asyncio.sleep(0)
        processor.clock.advance(61)
        done = await processor.wait_for(job.id, timeout=10)
    assert (done.status, done.error, reasons) == (S.ERRORED, "max runtime exceeded", ["timeout"])


async def test_run_until_idle_keeps_a_concurrency_limit_and_runs_every_job() -> None:
    from job_processor import Limit

    async def call(job: Job, signal: AbortSignal) -> int:
        return int(job.payload["i"])

    jobs = {"call-api": JobDef(handler=call, limit=Limit(key="api", concurrency=1))}
    async with in_memory_processor(jobs=jobs) as processor:
        for i in range(3):
            await processor.schedule_job("call-api", {"i": i})
        ran = await run_until_idle(processor)
    assert sorted(j.result for j in ran) == [0, 1, 2]


async def test_run_until_idle_leaves_a_paused_name_alone() -> None:
    from job_processor.admin import Admin

    runs: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        runs.append(job.id)

    async with in_memory_processor(jobs={"work": JobDef(handler=work)}) as processor:
        await processor.start()  # registers the name, as any worker start does
        await processor.stop()
        await Admin(processor.storage.db, clock=processor.clock).pause("work")
        job = await processor.schedule_job("work")
        ran = await run_until_idle(processor)
        assert runs == [] and ran == []
        assert (await processor.get_job(job.id)).status == S.PENDING


async def test_the_harness_records_each_checkpoint_as_it_was_saved() -> None:
    async def collect(job: Job, signal: AbortSignal) -> None:
        state: dict[str, Any] = {"done": []}
        for i in range(3):
            state["done"].append(i)
            await job.checkpoint(state)

    harness = JobHarness()
    await harness.run(collect)
    assert harness.checkpoints == [{"done": [0]}, {"done": [0, 1]}, {"done": [0, 1, 2]}]


async def test_the_harness_keeps_a_checkpoint_as_a_worker_saves_it_and_job_state_is_it() -> None:
    """A tuple is saved as a list (BSON has no tuple), a date in UTC; `job.state` is the last
    checkpoint as saved, which the handler's later changes to its own dict do not reach, from
    an async handler and from a plain one (checkpoint_sync) alike."""
    two_hours = dt.timezone(dt.timedelta(hours=2))
    at = dt.datetime(2026, 1, 1, 12, tzinfo=two_hours)
    seen: list[Any] = []

    async def pairs(job: Job, signal: AbortSignal) -> None:
        state: dict[str, Any] = {"done": [1], "pair": (1, 2), "at": at}
        await job.checkpoint(state)
        state["done"].append(2)  # not saved
        seen.append(job.state)

    def plain(job: Job, signal: AbortSignal) -> None:
        state: dict[str, Any] = {"done": [1], "pair": (1, 2), "at": at}
        job.checkpoint_sync(state)
        state["done"].append(2)  # not saved
        seen.append(job.state)

    for handler in (pairs, plain):
        seen.clear()
        harness = JobHarness()
        await harness.run(handler)
        assert harness.checkpoints == [{"done": [1], "pair": [1, 2], "at": at}], handler
        assert harness.checkpoints[0]["at"].utcoffset() == dt.timedelta(0)
        assert seen == harness.checkpoints, handler
        assert harness.job.state == harness.checkpoints[-1]


async def test_the_harness_gives_the_handler_the_payload_a_worker_would() -> None:
    from decimal import Decimal

    async def kind(job: Job, signal: AbortSignal) -> str:
        return type(job.payload["ids"]).__name__

    async with in_memory_processor(jobs={"kind": JobDef(handler=kind)}) as processor:
        await processor.schedule_job("kind", {"ids": (1, 2)})
        [ran] = await run_until_idle(processor)
        assert ran.result == "list"  # what a worker's handler gets: BSON has no tuple
        for bad in ({"amount": Decimal("1.5")}, {"at": dt.datetime(2030, 1, 1)}):
            with pytest.raises(InvalidPayloadError):
                await processor.schedule_job("kind", bad)
    assert await JobHarness({"ids": (1, 2)}).run(kind) == "list"
    for bad in ({"amount": Decimal("1.5")}, {"at": dt.datetime(2030, 1, 1)}):
        with pytest.raises(InvalidPayloadError, match=r"job 'job'"):
            JobHarness(bad)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_an_abort_after_checkpoints_that_could_never_fire_is_refused(count: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"counts checkpoints from 1"):
        JobHarness(abort_after_checkpoints=(count, "shutdown"))


def test_an_ended_dependency_with_a_status_that_is_not_an_end_is_refused() -> None:
    for status in ("finshed", "running"):  # a typo would make an *errored* dependency
        with pytest.raises(InvalidArgumentError, match=r"finished, errored, killed, skipped"):
            JobHarness.ended("part", status=status, result=3)
    assert JobHarness.ended("part", status="killed").status == S.KILLED


async def test_run_until_idle_goes_on_to_until_past_many_slots_of_a_paused_cron() -> None:
    """The slots of a cron whose name is paused move the clock without a run: they do not end
    the loop before `until` (as a limit that never frees does, after 1,000 moves): a job due
    before `until` is run."""
    from job_processor.admin import Admin

    async def noop(job: Job, signal: AbortSignal) -> str:
        return job.name

    crons = {"tick": {"cron_string": "* * * * *", "handler": noop}}
    async with in_memory_processor(jobs={"later": JobDef(handler=noop)}, crons=crons) as processor:
        await processor.start()  # registers the names, as any worker start does
        await processor.stop()
        await Admin(processor.storage.db, clock=processor.clock).pause("tick")
        t0 = processor.clock.now()
        job = await processor.schedule_job("later", delay=dt.timedelta(minutes=1100))
        ran = await run_until_idle(processor, until=t0 + dt.timedelta(minutes=1200))
        assert [j.name for j in ran] == ["later"]
        assert (await processor.get_job(job.id)).status == S.FINISHED


async def test_harness_run_raises_a_handlers_system_exit_as_it_is() -> None:
    """A worker records a handler's SystemExit as its failure; the harness raises it as the
    handler raised it, like any other exception (not the worker's internal wrapper)."""
    import argparse

    def cli(job: Job, signal: AbortSignal) -> None:
        argparse.ArgumentParser(prog="export").parse_args(job.payload["argv"])

    with pytest.raises(SystemExit) as exited:
        await JobHarness(payload={"argv": ["--bogus"]}).run(cli)
    assert exited.value.code == 2


exits_seen: list[tuple[str, str]] = []


async def _child_fails(job: Job, signal: AbortSignal) -> None:
    from job_processor import DoNotRetry

    raise DoNotRetry("boom")


async def _parent(job: Job, signal: AbortSignal) -> None:
    return None


async def _note_exit(job: Job) -> None:
    exits_seen.append((job.name, job.status.value))


async def test_run_until_idle_calls_the_hook_of_a_job_errored_by_its_failed_dependency() -> None:
    """guide.md: on_job_exited is called for a job errored by a failed dependency
    (on_dependency_failure="error"), by a worker's sweep; run_until_idle runs no sweep, and
    the hook stayed owed for ever in a flow's test."""
    exits_seen.clear()
    jobs = {
        "child": JobDef(handler=_child_fails, on_job_exited=_note_exit),
        "parent": JobDef(handler=_parent, on_job_exited=_note_exit),
    }
    async with in_memory_processor(jobs=jobs) as processor:
        child = await processor.schedule_job("child", {})
        parent = await processor.schedule_job(
            "parent", after=[child], on_dependency_failure="error"
        )
        await run_until_idle(processor)
        done = await processor.get_job(parent.id)
        assert done.status == S.ERRORED and done.exit_hook == "done"
    assert sorted(exits_seen) == [("child", "errored"), ("parent", "errored")]


async def test_run_until_idle_never_calls_a_hook_a_live_worker_is_running() -> None:
    """run_until_idle took every owed hook (no live worker given): a hook another processor
    on the same database was calling right then was called again. Only owner-less hooks."""
    import asyncio

    from mongomock_motor import AsyncMongoMockClient

    from job_processor import init_job_processor

    calls: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(job: Job, signal: AbortSignal) -> int:
        return 1

    async def hook(job: Job) -> None:
        calls.append(job.id)
        started.set()
        if len(calls) > 1:
            release.set()  # called again: let both end
        await release.wait()

    jobs = {"j": JobDef(handler=handler, on_job_exited=hook, on_job_exited_timeout=30)}
    client: Any = AsyncMongoMockClient(tz_aware=True)
    worker = await init_job_processor(client["shared"], jobs=jobs, change_streams=False)
    tester = await init_job_processor(client["shared"], jobs=jobs, change_streams=False)
    await worker.start()
    try:
        await tester.schedule_job("j", {})
        await asyncio.wait_for(started.wait(), 20)  # the live worker is calling the hook
        await run_until_idle(tester)
        assert len(calls) == 1, f"the live worker's hook was called {len(calls)} times"
    finally:
        release.set()
        await worker.stop()
        await tester.stop()


async def test_run_until_idle_settles_the_owed_hook_of_a_hookless_job_it_ends_with() -> None:
    """A hookless job errored by its failed dependency has its hook owed (no owner):
    run_until_idle records "none" for it before it returns (it returned with it owed)."""
    jobs = {
        "child": JobDef(handler=_child_fails),  # no on_job_exited
        "parent": JobDef(handler=_parent),  # no on_job_exited
    }
    async with in_memory_processor(jobs=jobs) as processor:
        child = await processor.schedule_job("child", {})
        parent = await processor.schedule_job(
            "parent", after=[child], on_dependency_failure="error"
        )
        await run_until_idle(processor)
        done = await processor.get_job(parent.id)
        assert done.status == S.ERRORED
        assert done.exit_hook == "none", done.exit_hook
        assert processor.hooks.running() == 0


async def test_a_sync_subscribers_emit_returns_once_its_delivery_ended_in_memory() -> None:
    """On the in-memory processor (a FakeClock nobody moves while emit waits), emit() with a
    sync subscriber never returned, though its delivery had ended."""
    import asyncio

    from job_processor import Event, Subscriber

    ran: list[Any] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        ran.append(event.payload)

    subs = {"paid": [Subscriber("audit", handler=audit, mode="sync")]}
    async with in_memory_processor(subscribers=subs) as processor:
        await processor.start()
        event = await asyncio.wait_for(processor.emit("paid", {"n": 1}, sync_timeout=5), 20)
    assert ran == [{"n": 1}]
    assert [(d.target, d.status) for d in event.deliveries] == [("audit", "finished")]


async def test_a_sync_emit_no_worker_serves_raises_past_sync_timeout_in_memory() -> None:
    """Past `sync_timeout` emit raises EventTimeoutError; in memory it waited for ever."""
    import asyncio

    from job_processor import Event, EventTimeoutError, Subscriber

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    subs = {"paid": [Subscriber("audit", handler=audit, mode="sync")]}
    async with in_memory_processor(subscribers=subs) as processor:
        with pytest.raises(EventTimeoutError):
            await asyncio.wait_for(processor.emit("paid", {}, sync_timeout=1), 20)


async def test_run_until_idle_says_it_stopped_at_max_runs_with_jobs_still_due() -> None:
    """Past `max_runs` it returned as if idle, with due jobs still pending, saying nothing."""
    from job_processor import JobSpec

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    async with in_memory_processor(jobs={"part": JobDef(handler=noop)}) as processor:
        await processor.schedule_jobs([JobSpec("part", {"n": n}) for n in range(12)])
        with pytest.raises(RuntimeError, match="max_runs=10 runs with jobs still due"):
            await run_until_idle(processor, max_runs=10)
        assert len(await run_until_idle(processor, max_runs=10)) == 2  # the rest: idle, quiet


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"attempt": 0}, "attempt= must be an integer >= 1"),
        ({"attempt": True}, "attempt= must be an integer >= 1"),
        ({"failures": -1}, "failures= must be an integer >= 0"),
        ({"max_attempts": 0}, "max_attempts= must be an integer >= 1"),
        ({"attempt": 1, "failures": 1, "max_attempts": 3}, "pass attempt=2"),
        ({"attempt": 4, "failures": 3, "max_attempts": 3}, "pass max_attempts=4"),
        ({"progress": [1]}, "progress= must be a mapping with done"),
        ({"progress": {"done": 1, "of": 2}}, "progress= has fields a progress does not: of"),
        ({"progress": {"done": -1}}, "done must be a finite number >= 0"),
    ],
)
def test_the_harness_refuses_counts_and_progress_no_worker_would_pass(
    kwargs: dict[str, Any], named: str
) -> None:
    """A run a worker starts is attempt 1 or more, each failure an earlier run, fewer failures
    than max_attempts (else it errored); progress is what report_progress stored."""
    with pytest.raises(InvalidArgumentError, match=named):
        JobHarness({}, **kwargs)
    assert JobHarness({}, attempt=3, failures=2, max_attempts=3).job.failures == 2


@pytest.mark.parametrize(
    ("state", "named"),
    [
        ({"at": dt.datetime(2030, 1, 1)}, "'at' is a datetime without a time zone"),
        ({"ratio": float("nan")}, "'ratio' is nan"),
        ([1], "must be a dict"),
    ],
)
def test_the_harness_refuses_a_state_no_checkpoint_could_have_saved(state: Any, named: str) -> None:
    with pytest.raises(InvalidPayloadError, match=f"JobHarness state=: .*{named}"):
        JobHarness({}, state=state)


async def test_the_harness_hands_a_resumed_state_as_read_back() -> None:
    """Through BSON, as a worker reads a checkpoint back: a tuple as a list, a copy."""
    saved = {"pair": (1, 2), "at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}
    harness = JobHarness({}, state=saved, attempt=2)
    assert harness.job.state == {"pair": [1, 2], "at": saved["at"]}
    harness.job.state["pair"].append(3)
    assert saved["pair"] == (1, 2)


async def test_run_until_idle_at_max_runs_does_not_count_a_job_waiting_on_a_dependency() -> None:
    """max_runs equal to the jobs that can run: the one left waits on a dependency of a paused
    name (never due), yet its old scheduled_for made run_until_idle raise 'jobs still due'."""

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    defs = {n: JobDef(handler=noop) for n in ("x", "after-x", "part")}
    async with in_memory_processor(jobs=defs) as processor:
        await processor.start()  # registers the names, as any worker start does
        await processor.stop()
        await Admin(processor.storage.db, clock=processor.clock).pause("x")
        dep = await processor.schedule_job("x")
        waiting = await processor.schedule_job("after-x", after=[dep.id])
        await processor.schedule_job("part")
        ran = await run_until_idle(processor, max_runs=1)
        assert [j.name for j in ran] == ["part"]
        assert (await processor.get_job(waiting.id)).status == JobStatus.WAITING
        assert await run_until_idle(processor) == []


async def test_a_resumed_progress_keeps_the_cut_mark_report_progress_stored() -> None:
    """A long message is stored cut with `cut: True` (readers mask a secret cut by its end);
    handed back to JobHarness as the worker reads it back, the mark was dropped."""
    from job_processor.core import notes as N

    stored = N.progress_of(3, 10, "x" * 600, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert stored.get("cut") is True
    harness = JobHarness({}, attempt=2, progress=stored)
    assert harness.job.progress == stored, harness.job.progress


async def test_in_memory_processor_takes_change_streams_false() -> None:
    """Naming the option (a shared fixture's `change_streams=False`) raised a raw TypeError
    ('got multiple values for keyword argument')."""
    jobs = {"noop": JobDef(handler=reindex)}
    async with in_memory_processor(jobs=jobs, change_streams=False) as processor:
        assert processor.settings.change_streams is False


async def test_run_until_idle_rides_out_a_transient_blip_of_a_final_write_after_a_clock_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A final write is retried on a transient error. run_until_idle runs no heartbeat loop
    and moves the FakeClock past worker_timeout: a retry bounded by the lease got one try, and
    a single blip lost the run's outcome (the job left running)."""
    from pymongo.errors import AutoReconnect

    from tests.helpers import final_write_updates

    failed: list[int] = []

    async def blip(coll: Any, *a: Any, **k: Any) -> Any:
        if not failed:
            failed.append(1)
            raise AutoReconnect("connection reset (one blip)")
        return await coll.update_one(*a, **k)

    final_write_updates(monkeypatch, blip)

    async def handler(job: Job, signal: AbortSignal) -> str:
        return "done"

    async with in_memory_processor({"h": JobDef(handler=handler)}) as processor:
        job = await processor.schedule_job("h", delay=3600)  # run_until_idle moves 1 h
        ran = await run_until_idle(processor)
        after = await processor.get_job(job.id)
    assert failed, "the blip was not injected"
    assert after.status == JobStatus.FINISHED, f"the run's outcome was lost: {after.status}"
    assert [r.status for r in ran] == [JobStatus.FINISHED]


async def test_the_harness_refuses_a_progress_count_too_large_for_a_float() -> None:
    """As a worker refuses it: InvalidArgumentError (it raised OverflowError)."""
    from fractions import Fraction

    async def work(job: Job, signal: AbortSignal) -> None:
        await job.report_progress(Fraction(10**400), None)

    with pytest.raises(InvalidArgumentError, match="done must be a finite number"):
        await JobHarness().run(work)


def test_job_harness_takes_a_model_with_aliases_and_a_nested_excluded_field() -> None:
    from pydantic import BaseModel, Field

    from job_processor.testing import JobHarness

    class Inner(BaseModel):
        a: int = 1
        secret: str = Field("d", exclude=True)

    class Outer(BaseModel):
        inner: Inner = Field(alias="In")

    harness = JobHarness(Outer(In=Inner(a=2, secret="s")))
    assert harness.job.payload.inner.a == 2


class _Meeting(BaseModel):
    at: dt.datetime


async def test_a_typed_payloads_naive_datetime_is_refused_as_the_datetime_rule_says() -> None:
    """guide.md: a naive datetime is refused anywhere in a payload; one a model carried was
    checked only in its JSON form (text) and reached the handler naive. The harness refused
    the dict and took the model."""
    naive = dt.datetime(2030, 1, 1, 9, 0)
    with pytest.raises(InvalidPayloadError, match="'at' is a datetime without a time zone"):
        JobHarness({"at": naive}, payload_model=_Meeting)
    with pytest.raises(InvalidPayloadError, match="'at' is a datetime without a time zone"):
        JobHarness(_Meeting(at=naive))

    async def meet(job: Job[_Meeting], signal: AbortSignal) -> None: ...

    defs = {"meet": JobDef(handler=meet, payload_model=_Meeting), "any": JobDef(handler=meet)}
    async with in_memory_processor(jobs=defs) as processor:
        for name, payload in (("meet", {"at": naive}), ("meet", _Meeting(at=naive))):
            with pytest.raises(InvalidPayloadError, match="'at' is a datetime without a time"):
                await processor.schedule_job(name, payload)
        with pytest.raises(InvalidPayloadError, match="'at' is a datetime without a time"):
            await processor.schedule_job("any", _Meeting(at=naive))  # an untyped job's model
        assert await processor.list_jobs() == []


async def test_run_until_idle_says_it_stopped_at_max_runs_with_a_retry_still_to_come() -> None:
    async def flaky(job: Job, signal: AbortSignal) -> None:
        raise RetryLater(60)

    async with in_memory_processor(jobs={"flaky": JobDef(handler=flaky, max_attempts=50)}) as p:
        await p.schedule_job("flaky")
        with pytest.raises(RuntimeError, match="max_runs=3"):
            await run_until_idle(p, max_runs=3)


async def test_run_until_idle_refuses_a_naive_until_and_a_max_runs_that_is_not_a_count() -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    async with in_memory_processor(jobs={"a": JobDef(handler=noop)}) as processor:
        with pytest.raises(InvalidArgumentError, match="until= must be an aware datetime"):
            await run_until_idle(processor, until=dt.datetime(2031, 1, 1))
        await processor.schedule_job("a", delay=3600)
        with pytest.raises(InvalidArgumentError, match="until= must be an aware datetime"):
            await run_until_idle(processor, until=dt.datetime(2031, 1, 1))
        for bad in ("5", None, 2.5, True, 0):
            with pytest.raises(InvalidArgumentError, match="max_runs= must be an integer"):
                await run_until_idle(processor, max_runs=bad)


@pytest.mark.parametrize("bad", [1, (1,), "shutdown", (1, "shutdown", 2)])
def test_an_abort_after_checkpoints_that_is_not_a_pair_is_refused_naming_the_form(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"abort_after_checkpoints=\(n, reason\)"):
        JobHarness(abort_after_checkpoints=bad)


async def test_run_until_idle_without_until_records_the_slots_it_moves_past_as_missed() -> None:
    """guide.md: without until=, the cron slots the clock moves past are recorded as missed."""
    from job_processor import CronDef

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"tick": CronDef(handler=noop, cron_string="*/10 * * * *")}
    async with in_memory_processor(jobs={"later": JobDef(handler=noop)}, crons=crons) as p:
        await p.schedule_job("later", delay=3600)
        ran = await run_until_idle(p)
        assert "later" in [j.name for j in ran]
        assert [j for j in await p.list_jobs() if j.skip_reason == "missed"]


class _AwareInJson(BaseModel):
    """A naive datetime the model writes as aware text: its JSON serializer adds UTC."""

    at: dt.datetime

    @field_serializer("at", when_used="json")
    def _aware(self, v: dt.datetime) -> str:
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).isoformat()


class _WithComputedDay(BaseModel):
    """A computed field is not stored: computed again when the job runs."""

    n: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def day(self) -> dt.datetime:
        return dt.datetime(2030, 1, self.n)  # naive, never stored


@pytest.mark.parametrize(
    ("payload", "seen"),
    [
        (_AwareInJson(at=dt.datetime(2030, 1, 1, 9)), dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC)),
        (_WithComputedDay(n=2), 2),
    ],
    ids=["json-serializer-writes-aware-text", "computed-field-not-stored"],
)
async def test_a_naive_datetime_the_stored_form_does_not_hold_is_not_refused(
    payload: BaseModel, seen: Any
) -> None:
    """The naive check reads what the handler gets back, not the model's Python dump."""
    got: list[Any] = []

    async def handler(job: Job[Any], signal: AbortSignal) -> None:
        got.append(getattr(job.payload, "at", None) or job.payload.n)

    defs = {"j": JobDef(handler=handler, payload_model=type(payload))}
    async with in_memory_processor(jobs=defs) as processor:
        await processor.schedule_job("j", payload)
        await run_until_idle(processor)
    assert got == [seen]
    JobHarness(payload)  # the harness takes it as well


async def test_run_until_idle_says_it_stopped_at_max_runs_with_cron_slots_still_to_come() -> None:
    from job_processor import CronDef

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"tick": CronDef(handler=noop, cron_string="*/10 * * * *")}
    async with in_memory_processor(crons=crons) as p:
        until = p.clock.now() + dt.timedelta(hours=1)
        with pytest.raises(RuntimeError, match="max_runs=2"):
            await run_until_idle(p, until=until, max_runs=2)


@pytest.mark.parametrize("inner", ["cycle", "deep"])
async def test_a_model_payload_holding_a_cycle_or_too_deep_a_dict_is_refused_naming_the_job(
    inner: str,
) -> None:
    class Holder(BaseModel):
        data: Any

    value: dict[str, Any] = {}
    if inner == "cycle":
        value["me"] = value
    else:
        cur = value
        for _ in range(5000):
            cur["a"] = {}
            cur = cur["a"]

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    defs = {"typed": JobDef(handler=noop, payload_model=Holder), "any": JobDef(handler=noop)}
    async with in_memory_processor(jobs=defs) as processor:
        for name in defs:
            with pytest.raises(InvalidPayloadError, match=f"job '{name}'"):
                await processor.schedule_job(name, Holder(data=value))


class _StrictAt(BaseModel):
    """A strict model: it does not read its own JSON form (a datetime from text) back."""

    model_config = ConfigDict(strict=True)
    at: dt.datetime


class _AliasedAt(BaseModel):
    """An alias without populate_by_name: its by-name JSON form does not read back."""

    at: dt.datetime = Field(alias="when")


class _LooseAt(BaseModel):
    at: dt.datetime


@pytest.mark.parametrize(
    "payload",
    [_StrictAt(at=dt.datetime(2030, 1, 1, 9)), _AliasedAt(when=dt.datetime(2030, 1, 1, 9))],
    ids=["strict", "aliased"],
)
async def test_an_event_model_with_a_naive_datetime_is_refused_when_it_does_not_read_back(
    payload: BaseModel,
) -> None:
    """events.md: a naive datetime is refused in an event's payload. A model whose JSON form
    did not read back through itself skipped the check: a subscriber got it naive."""
    from job_processor import Event, Subscriber

    seen: list[dt.datetime] = []

    async def audit(event: Event, signal: AbortSignal) -> None:
        seen.append(_LooseAt.model_validate(event.payload).at)

    subs = {"paid": [Subscriber("audit", handler=audit, mode="sync")]}
    async with in_memory_processor(subscribers=subs) as processor:
        await processor.start()
        with pytest.raises(InvalidPayloadError, match="without a time zone"):
            await asyncio.wait_for(processor.emit("paid", payload, sync_timeout=5), 20)
    assert seen == []


async def test_schedule_job_refuses_a_naive_datetime_in_a_strict_payload_model() -> None:
    async def noop(job: Job[Any], signal: AbortSignal) -> None:
        return None

    defs = {"j": JobDef(handler=noop, payload_model=_StrictAt)}
    async with in_memory_processor(jobs=defs) as processor:
        with pytest.raises(InvalidPayloadError, match="without a time zone"):
            await processor.schedule_job("j", _StrictAt(at=dt.datetime(2030, 1, 1, 9)))
        assert await processor.list_jobs() == []


def test_job_harness_checks_a_model_payload_against_payload_model() -> None:
    """schedule_job refuses a model of another class than the definition's."""

    class Holder(BaseModel):
        at: Any

    with pytest.raises(InvalidPayloadError, match="payload must be a _LooseAt, got Holder"):
        JobHarness(Holder(at=dt.datetime(2030, 1, 1, 9)), payload_model=_LooseAt)


@pytest.mark.parametrize("given", [["65b2a0000000000000000000"], [{"status": "finished"}], [3]])
def test_job_harness_refuses_dependencies_that_are_not_jobs_naming_the_argument(given: Any) -> None:
    """guide.md: dependencies=[JobHarness.ended(...), ...]. Anything else (job ids, as `after=`
    takes, a dict) is refused as the harness refuses its other arguments, naming it; it raised
    AttributeError: 'str' object has no attribute 'id'."""
    from job_processor import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="dependencies"):
        JobHarness(dependencies=given)


@pytest.mark.parametrize(
    "given", [3, None.__class__, JobHarness.ended("part")], ids=["int", "class", "one-job"]
)
def test_job_harness_refuses_dependencies_that_are_not_a_list_naming_the_argument(
    given: Any,
) -> None:
    """`dependencies=3` raised a bare TypeError; one job, not in a list, was iterated as its
    (field, value) pairs."""
    from job_processor import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="dependencies= takes a list of jobs"):
        JobHarness(dependencies=given)


@pytest.mark.parametrize("seconds", ["5", None, float("nan"), True, [1]])
@pytest.mark.parametrize("verb", ["advance", "sleep"])
async def test_the_fake_clock_refuses_what_is_not_a_number_of_seconds(
    verb: str, seconds: Any
) -> None:
    """advance("5") and sleep(None) raised TypeError, NaN a ValueError from timedelta; True
    moved the clock one second."""
    from job_processor import FakeClock

    clock = FakeClock()
    with pytest.raises(InvalidArgumentError, match=rf"^FakeClock\.{verb}\(\) takes a number"):
        getattr(clock, verb)(seconds)
    assert (clock.now(), clock.sleepers) == (FakeClock().now(), 0)


@pytest.mark.parametrize("seconds", [2**70, float("inf"), 10**12])
async def test_the_fake_clock_refuses_to_advance_past_the_datetimes_python_holds(
    seconds: float,
) -> None:
    """An OverflowError from timedelta or the datetime sum; the clock stays where it was."""
    from job_processor import FakeClock

    clock = FakeClock()
    with pytest.raises(InvalidArgumentError, match=r"^FakeClock\.advance\(.*\) moves the clock"):
        clock.advance(seconds)
    assert clock.now() == FakeClock().now()


@pytest.mark.parametrize("seconds", [2**70, float("inf")])
async def test_a_fake_clock_sleep_longer_than_it_can_count_waits_until_cancelled(
    seconds: float,
) -> None:
    """As asyncio.sleep(math.inf) does (it raised OverflowError at the call)."""
    from job_processor import FakeClock

    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    clock.advance(10 * 365 * 24 * 3600)
    await asyncio.sleep(0)
    assert not sleeper.done() and clock.sleepers == 1
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.sleepers == 0


async def test_the_fake_clock_still_takes_ints_floats_and_steps_back() -> None:
    from job_processor import FakeClock

    clock = FakeClock()
    start = clock.now()
    sleeper = asyncio.ensure_future(clock.sleep(1.5))
    clock.advance(1)
    clock.advance(0.5)
    await sleeper
    clock.advance(-2)
    assert clock.now() == start - dt.timedelta(seconds=0.5)


@pytest.mark.parametrize("payload", [7, "x", ["a"]])
def test_an_ended_dependency_refuses_a_payload_that_is_not_a_dict(payload: Any) -> None:
    """dict(payload or {}): TypeError for 7, ValueError for "x"."""
    with pytest.raises(InvalidArgumentError, match=r"^JobHarness\.ended: payload= takes"):
        JobHarness.ended("part", payload=payload)


@pytest.mark.parametrize("handler", [None, "reindex", 3])
async def test_the_harness_run_refuses_what_is_not_a_handler(handler: Any) -> None:
    """It raised TypeError: 'NoneType' object is not callable, from the engine's threads."""
    with pytest.raises(InvalidArgumentError, match=r"^JobHarness\.run takes the handler"):
        await JobHarness().run(handler)


@pytest.mark.parametrize("given", [None, "processor", JobHarness])
async def test_run_until_idle_refuses_what_is_not_a_processor(given: Any) -> None:
    """run_until_idle(None) raised AttributeError: 'NoneType' object has no attribute 'started'."""
    with pytest.raises(InvalidArgumentError, match=r"^run_until_idle takes the JobProcessor"):
        await run_until_idle(given)


@pytest.mark.parametrize("payload", [{1: "x"}, {"tags": {"a", "b"}}, {"x": object()}])
def test_an_ended_dependency_payload_is_refused_as_the_harness_refuses_its_own(
    payload: Any,
) -> None:
    """JobHarness(payload) refuses what schedule_job refuses; ended() checked only the type:
    {1: "x"} became {} silently, a set or an object stayed in the dependency's payload, which
    no real dependency (read back from MongoDB) can hold."""
    with pytest.raises(InvalidPayloadError):
        JobHarness(payload)
    with pytest.raises(InvalidPayloadError):
        JobHarness.ended("part", payload=payload)


def test_an_ended_dependency_reads_as_stored() -> None:
    """What `await job.dependencies()` returns is read back from MongoDB: a tuple is a list
    there, in the payload and in the result; a name that is no text is refused."""
    assert JobHarness({"ids": (1, 2)}).job.payload == {"ids": [1, 2]}
    ended = JobHarness.ended("part", payload={"ids": (1, 2)}, result=(3, 4))
    assert (ended.payload, ended.result) == ({"ids": [1, 2]}, [3, 4])
    for name in (None, 7, ""):
        with pytest.raises(InvalidArgumentError, match="name must be a job name"):
            JobHarness.ended(name)  # type: ignore[arg-type]


def test_ended_refuses_an_error_that_is_no_text() -> None:
    """JobHarness.ended(status="errored", error=7, result=3) gave a job with no output at all
    (neither the result nor an error), said nowhere: a worker stores an error as text."""
    with pytest.raises(InvalidArgumentError, match="error= takes the error's text"):
        JobHarness.ended("part", status="errored", error=7, result=3)  # type: ignore[arg-type]
