"""Fault paths: every run ends in a recorded status with its reason, and on_job_exited is never
lost. Each test here reproduces a way a job used to stay running forever or lose its hook."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId
from pydantic import BaseModel
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, DatabaseUnreachableError, Job, JobDef, JobStatus
from job_processor.core import documents as D
from job_processor.core.runs import WORKER_SILENT
from job_processor.ops.admin import Admin
from tests.helpers import make, wait_for, wait_status

from .test_recovery import plant_dead_worker_job

S = JobStatus


class Calls:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def __call__(self, job: Job) -> None:
        self.statuses.append(job.status.value)


async def test_a_result_too_large_to_store_is_errored_with_the_reason(db: Any) -> None:
    exits = Calls()

    async def huge(job: Job, signal: AbortSignal) -> str:
        return "x" * (17 * 1024 * 1024)  # over MongoDB's 16 MB document limit

    jobs = {"export": JobDef(handler=huge, concurrency="exclusive", on_job_exited=exits)}
    processor = await make(db, jobs)
    done = await processor.run_job("export")
    assert done.status == S.ERRORED
    assert done.error is not None
    assert done.error.startswith("could not record the run's outcome (finished): the result is 17.")
    assert "is 17.0 MiB (17825805 bytes), over the 15 MiB a job can hold" in done.error
    assert (done.failures, done.attempt) == (1, 1)  # as its history says: a failed attempt
    assert exits.statuses == ["errored"]
    # the exclusive name was freed with the final write: the next one is not skipped
    assert (await processor.schedule_job("export")).status == S.PENDING


async def test_results_bson_cannot_hold_are_stored_as_text_even_cycles(db: Any) -> None:
    """A result that holds itself, or whose repr() raises, finishes the job: stored as text."""

    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr here")

    async def cyclic(job: Job, signal: AbortSignal) -> Any:
        d: dict[str, Any] = {"a": 1}
        d["self"] = d
        return d

    async def opaque(job: Job, signal: AbortSignal) -> Any:
        return Opaque()

    async def deep(job: Job, signal: AbortSignal) -> Any:
        value: list[Any] = []
        for _ in range(5000):  # deeper than Python's stack
            value = [value]
        return value

    processor = await make(
        db,
        {
            "cyclic": JobDef(handler=cyclic),
            "opaque": JobDef(handler=opaque),
            "deep": JobDef(handler=deep),
        },
    )
    done = await processor.run_job("cyclic")
    assert (done.status, done.result) == (S.FINISHED, "{'a': 1, 'self': {...}}")
    done = await processor.run_job("opaque")
    assert done.status == S.FINISHED
    assert done.result == (
        "<Opaque that BSON cannot hold and repr() failed on: RuntimeError: no repr here>"
    )
    done = await processor.run_job("deep")
    assert done.status == S.FINISHED
    assert done.result == "<list that BSON cannot hold and repr() failed on: nested too deeply>"


async def test_a_result_whose_repr_raises_an_error_whose_str_raises_is_still_stored(
    db: Any,
) -> None:
    """repr() failing with an exception whose own str() fails: the job ended errored as an
    "internal error" of job-processor (and the worker logged job_execution_failed)."""

    class Unsaid(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str here")

    class Opaque:
        def __repr__(self) -> str:
            raise Unsaid

    async def opaque(job: Job, signal: AbortSignal) -> Any:
        return Opaque()

    exits = Calls()
    processor = await make(db, {"opaque": JobDef(handler=opaque, on_job_exited=exits)})
    done = await processor.run_job("opaque")
    assert (done.status, done.error) == (S.FINISHED, None)
    assert done.result == (
        "<Opaque that BSON cannot hold and repr() failed on: Unsaid: <exception str() failed>>"
    )
    assert exits.statuses == ["finished"]


async def test_results_bson_cannot_hold_are_stored_as_text_whatever_datetimes_they_hold(
    db: Any,
) -> None:
    """A result BSON cannot hold is stored as its repr(), finished, even when it holds a naive
    datetime (a dict keyed by day: its keys are text in the repr, never read back as UTC) or
    walking it raises (a mapping whose iteration fails, a time zone whose utcoffset() does):
    the first was errored for good ("return an aware datetime", whose repr is stored all the
    same), the others "internal error"."""
    exits = Calls()

    class Broken(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("no iteration here")

        def __len__(self) -> int:
            return 1

        def __repr__(self) -> str:
            return "<Broken>"

    class NoOffset(dt.tzinfo):
        def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
            raise RuntimeError("no offset here")

        def __repr__(self) -> str:
            return "NoOffset()"

    day = dt.datetime(2030, 1, 1)
    results: dict[str, Any] = {
        "by_day": {day: 5},
        "mixed": {"at": day, "amount": Decimal("1.50")},
        "broken": Broken(),
        "zoned": {"at": dt.datetime(2030, 1, 1, tzinfo=NoOffset())},
    }

    async def returns(job: Job, signal: AbortSignal) -> Any:
        return results[job.name]

    processor = await make(
        db, {name: JobDef(handler=returns, on_job_exited=exits) for name in results}
    )
    stored = {}
    for name in results:
        done = await processor.run_job(name)
        assert done.status == S.FINISHED, done.error
        stored[name] = done.result
    assert stored == {
        "by_day": "{datetime.datetime(2030, 1, 1, 0, 0): 5}",
        "mixed": "{'at': datetime.datetime(2030, 1, 1, 0, 0), 'amount': Decimal('1.50')}",
        "broken": "<Broken>",
        "zoned": "{'at': datetime.datetime(2030, 1, 1, 0, 0, tzinfo=NoOffset())}",
    }
    assert exits.statuses == ["finished"] * 4


async def test_a_cyclic_payload_or_checkpoint_is_refused_naming_the_field(db: Any) -> None:
    from job_processor import InvalidPayloadError

    seen: list[str] = []

    async def saves(job: Job, signal: AbortSignal) -> None:
        state: dict[str, Any] = {"rows": []}
        state["rows"].append(state)
        try:
            await job.checkpoint(state)
        except InvalidPayloadError as exc:
            seen.append(str(exc))

    processor = await make(db, {"saves": JobDef(handler=saves, resumable=True)})
    payload: dict[str, Any] = {"order": {}}
    payload["order"]["again"] = payload
    with pytest.raises(InvalidPayloadError, match=r"payload field 'order.again' holds the dict"):
        await processor.schedule_job("saves", payload)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidPayloadError, match=r"job 'saves': payload is nested too deeply"):
        await processor.schedule_job("saves", {"deep": deep})
    from job_processor.engine.execution import check_state

    with pytest.raises(InvalidPayloadError, match=r"checkpoint state is nested too deeply"):
        check_state({"deep": deep})
    assert await processor.list_jobs() == []
    assert (await processor.run_job("saves")).status == S.FINISHED
    assert seen == [
        "checkpoint state field 'rows[0]' holds the dict or list that contains it (a cycle), "
        "which MongoDB cannot store: pass a copy without the cycle"
    ]


async def test_a_kill_requested_during_a_run_whose_result_cannot_be_stored_wins(db: Any) -> None:
    """Kill wins on every path: an unstorable result with a kill requested meanwhile (by
    another process: only the database knows) ends killed at once, not running until
    reconciliation."""
    processor: Any = None

    async def huge(job: Job, signal: AbortSignal) -> str:
        await processor.storage.jobs.coll.update_one(
            {"_id": ObjectId(job.id)}, {"$set": {"kill_requested_at": processor.clock.now()}}
        )
        return "x" * (17 * 1024 * 1024)

    exits = Calls()
    processor = await make(db, {"export": JobDef(handler=huge, on_job_exited=exits)})
    done = await processor.run_job("export")
    assert done.status == S.KILLED
    assert done.error is not None
    assert done.error.startswith("killed; could not record the run's outcome (finished)")
    assert (await processor.get_job(done.id)).status == S.KILLED
    assert exits.statuses == ["killed"]


class Email(BaseModel):
    to: str


async def test_an_invalid_job_document_is_errored_with_the_reason(db: Any) -> None:
    async def send(job: Job[Email], signal: AbortSignal) -> str:
        return job.payload.to

    processor = await make(db, {"send": JobDef(handler=send, payload_model=Email)})
    # another program inserted a job whose payload does not match the model
    bad = D.new_job("send", {"to": 42}, now=processor.clock.now())
    await processor.storage.jobs.insert(bad)
    async with processor:
        failed = await wait_status(processor, str(bad["_id"]), S.ERRORED)
    assert failed.error is not None
    assert failed.error.startswith("invalid job document:")
    assert "payload.to" in failed.error
    first = failed.error.splitlines()[0]  # what an HTTP client or a one-line log shows
    assert first.startswith("invalid job document: payload does not match Email: field 'to'")


async def test_a_final_write_that_cannot_be_made_is_reconciled_by_its_own_worker(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB refuses the final write for longer than worker_timeout (a long election): the
    worker gives up on it, then reconciles the job it no longer runs instead of leaving it
    running forever."""
    runs: list[int] = []

    async def work(job: Job, signal: AbortSignal) -> str:
        runs.append(job.attempt)
        return "ok"

    quick = {"kind": "fixed", "base_seconds": 0.1, "jitter": False}
    processor = await make(db, {"w": JobDef(handler=work, max_attempts=2, backoff=quick)})
    coll = processor.storage.jobs.coll
    real = coll.update_one  # the final write is an update_one (no document comes back)
    refused = asyncio.Event()
    loop = asyncio.get_running_loop()
    election_ends: list[float] = []

    async def election(query: Any, update: Any, **kw: Any) -> Any:
        """Final writes are refused for 2.5 s, longer than worker_timeout (2 s)."""
        if "end_id" in update.get("$set", {}):
            if not election_ends:
                election_ends.append(loop.time() + 2.5)
                refused.set()
            if loop.time() < election_ends[0]:
                raise AutoReconnect("no primary")
        return await real(query, update, **kw)

    monkeypatch.setattr(coll, "update_one", election)
    async with processor:
        job = await processor.schedule_job("w")
        await asyncio.wait_for(refused.wait(), 10)
        done = await wait_status(processor, job.id, S.FINISHED, timeout=20)
    assert runs == [1, 2]
    assert done.failures == 1
    assert done.history[0]["error"].startswith("its worker lost track of the run")


async def test_a_resumable_job_that_crashes_its_worker_every_time_ends_errored(db: Any) -> None:
    exits = Calls()

    async def oom(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("must not run again")

    processor = await make(db, {"index": JobDef(handler=oom, resumable=True, on_job_exited=exits)})
    job_id = await plant_dead_worker_job(
        processor, "index", resumable=True, max_attempts=3, extra={"failures": 2}
    )
    async with processor:
        failed = await wait_status(processor, job_id, S.ERRORED)
        await wait_for(lambda: exits.statuses == ["errored"])
    assert failed.failures == 3
    assert failed.error == f"{WORKER_SILENT}: crashed during 3 attempts, not resumed again"
    assert failed.state == {"step": 2}  # the checkpoint is kept for a manual retry


async def test_a_kill_requested_just_before_an_attempt_fails_wins_over_the_retry(
    db: Any,
) -> None:
    exits = Calls()
    runs: list[int] = []

    async def fails_after_kill(job: Job, signal: AbortSignal) -> None:
        runs.append(job.attempt)
        await other.kill_job(job.id)  # another process: only the database knows
        raise ConnectionError("provider down")

    jobs = {"send": JobDef(handler=fails_after_kill, max_attempts=5, on_job_exited=exits)}
    processor = await make(db, jobs)
    other = await make(db, jobs)
    done = await processor.run_job("send")
    assert done.status == S.KILLED
    assert runs == [1]
    assert exits.statuses == ["killed"]


async def test_a_failed_start_leaves_nothing_behind(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = await make(db, {"n": JobDef(handler=lambda job, signal: None)})

    async def broken_sweep(now: dt.datetime, definitions: bool = False) -> int:
        raise AutoReconnect("connection refused")

    monkeypatch.setattr(processor.recovery, "sweep", broken_sweep)
    with pytest.raises(DatabaseUnreachableError) as raised:
        await processor.start()
    assert isinstance(raised.value.__cause__, AutoReconnect)
    assert not processor.started
    assert (await processor.get_status()).workers == []  # no worker document left
    await processor.stop()  # a no-op, not an error
    monkeypatch.undo()
    async with processor:
        assert len((await processor.get_status()).workers) == 1


async def test_an_owed_hook_of_a_dead_process_is_called_by_a_live_worker(db: Any) -> None:
    exits = Calls()
    processor = await make(db, {"send": JobDef(handler=lambda j, s: None, on_job_exited=exits)})
    # a worker SIGKILLed right after its final write: the hook is recorded as owed by it
    past = processor.clock.now() - dt.timedelta(minutes=5)
    doc = D.as_running(D.new_job("send", {}, now=past), "dead-worker", past)
    await processor.storage.jobs.insert(doc)
    from job_processor.core.outcome import Outcome

    written = await processor.storage.jobs.end_run(
        doc, Outcome(S.FINISHED, hook_owed=True), past, writer="dead-worker", budget=2
    )
    assert written.doc is not None
    assert written.doc["exit_hook"] == "owed"
    async with processor:
        await wait_for(lambda: exits.statuses == ["finished"])
        job = await wait_for_hook(processor, str(doc["_id"]), "done")
    assert job.exit_hook_error is None


async def wait_for_hook(processor: Any, job_id: str, state: str) -> Job:
    deadline = asyncio.get_running_loop().time() + 10
    while (job := await processor.get_job(job_id)).exit_hook != state:
        assert asyncio.get_running_loop().time() < deadline, job.exit_hook
        await asyncio.sleep(0.05)
    return job


async def test_a_hanging_hook_times_out_and_never_blocks_stop(db: Any) -> None:
    async def hangs(job: Job) -> None:
        await asyncio.Event().wait()

    jobs = {"n": JobDef(handler=lambda j, s: 1, on_job_exited=hangs, on_job_exited_timeout=0.3)}
    processor = await make(db, jobs)
    async with processor:
        job = await processor.schedule_job("n")
        await wait_status(processor, job.id, S.FINISHED)
    done = await wait_for_hook(processor, job.id, "failed")
    assert done.exit_hook_error == "timed out after 0.3s"


async def test_plain_hooks_that_hang_never_starve_plain_handlers_or_hooks(db: Any) -> None:
    """Each timed-out plain-def hook keeps its thread (a thread cannot be cancelled): more of
    them than asyncio's default executor has threads (min(32, cores + 4)), then a plain handler
    with a plain hook still runs at once, and health shows the stuck calls."""
    from job_processor import health

    release = threading.Event()
    ran: list[str] = []

    def hangs(job: Job) -> None:
        release.wait()

    def plain_hook(job: Job) -> None:
        ran.append(job.id)

    jobs = {
        "hanging": JobDef(handler=lambda j, s: 1, on_job_exited=hangs, on_job_exited_timeout=0.2),
        "plain": JobDef(handler=lambda j, s: "ok", on_job_exited=plain_hook),
    }
    processor = await make(db, jobs, concurrency=8)
    try:
        async with processor:
            hung = [await processor.schedule_job("hanging") for _ in range(12)]
            for job in hung:
                await wait_for_hook(processor, job.id, "failed")
            plain = await processor.schedule_job("plain")
            done = await wait_status(processor, plain.id, S.FINISHED, timeout=5)
            assert done.output is not None and done.output.result == "ok"
            await wait_for_hook(processor, plain.id, "done")
            assert ran == [plain.id]

            async def stuck_in_health() -> int:
                report = await health.check(db, collection_prefix=processor.storage.prefix)
                assert report.ok, report.reason
                assert report.worker is not None
                return int(report.worker["stuck_threads"])

            deadline = asyncio.get_running_loop().time() + 10
            while (stuck := await stuck_in_health()) < 12:
                assert asyncio.get_running_loop().time() < deadline, stuck
                await asyncio.sleep(0.1)
            report = await health.check(db, collection_prefix=processor.storage.prefix)
            assert "12 plain-def handler or hook call(s) given up" in report.reason
            overview = await Admin(db).overview()
            assert any(
                "12 plain-def handler or hook call(s) given up" in w for w in overview.warnings
            )
            assert (await processor.get_status()).workers[0].stuck_threads == 12
    finally:
        release.set()
    # the hook that returned late does not change what was recorded at its timeout
    assert (await processor.get_job(hung[0].id)).exit_hook == "failed"


async def test_hooks_skip_skipped_jobs_and_run_again_after_retry_job(db: Any) -> None:
    exits = Calls()
    attempts: list[int] = []

    async def flaky(job: Job, signal: AbortSignal) -> None:
        attempts.append(job.attempt)
        if len(attempts) == 1:
            raise ValueError("first time")

    jobs = {"x": JobDef(handler=flaky, concurrency="exclusive", on_job_exited=exits)}
    processor = await make(db, jobs)
    blocker = await processor.schedule_job(
        "x", scheduled_for=dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    )
    skipped = await processor.schedule_job("x")
    assert skipped.status == S.SKIPPED
    await processor.kill_job(blocker.id)
    first = await processor.run_job("x")
    assert first.status == S.ERRORED
    await processor.retry_job(first.id)
    async with processor:
        await wait_status(processor, first.id, S.FINISHED)
        await wait_for(lambda: exits.statuses == ["killed", "errored", "finished"])
    assert (await processor.get_job(skipped.id)).exit_hook is None  # never ran: no hook


async def test_a_resumable_job_that_returns_on_shutdown_is_paused_and_resumes(db: Any) -> None:
    started = asyncio.Event()

    async def steps(job: Job, signal: AbortSignal) -> int:
        step = (job.state or {}).get("step", 0)
        while step < 5:
            if signal.aborted:
                return step  # the idiomatic early return: its work is only half done
            await job.checkpoint({"step": step + 1})
            step += 1
            started.set()
            await asyncio.sleep(0.05 if job.attempt > 1 else 10)
        return step

    jobs = {"steps": JobDef(handler=steps, resumable=True)}
    first = await make(db, jobs)
    await first.start()
    job = await first.schedule_job("steps")
    await asyncio.wait_for(started.wait(), 10)
    await first.stop()
    paused = await first.get_job(job.id)
    assert paused.status == S.PAUSED  # not "finished" with its work half done
    assert paused.state == {"step": 1}
    assert paused.failures == 0
    second = await make(db, jobs)
    async with second:
        done = await wait_status(second, job.id, S.FINISHED)
    assert done.result == 5
    assert done.attempt == 2
