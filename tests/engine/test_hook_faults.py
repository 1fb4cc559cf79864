"""on_job_exited on its fault paths (an outside review's findings, each failing before its fix):
a hook whose exception cannot be printed is recorded failed (it stayed owed, marked as running
here, for the worker's life); a retry settling a killed exit's hook and this worker's own sweep
never both call it; a blip while a worker that does not define the job hands the hook over
strands nothing and does not fail the kill; a hook that does not end when cancelled is still
bounded by on_job_exited_timeout."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect

from job_processor import Job, JobDef, JobStatus, init_job_processor
from job_processor.ops.admin import Admin
from tests.helpers import make, wait_for, wait_status

S = JobStatus


class ApiError(Exception):
    """A user exception with a buggy __str__ (an attribute the constructor never set)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"API error {self.code}: {self.reason}"  # type: ignore[attr-defined]


async def test_a_hook_raising_an_exception_whose_str_fails_is_recorded_failed(db: Any) -> None:
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)
        raise ApiError(503)

    processor = await make(db, {"j": JobDef(handler=lambda j, s: 1, on_job_exited=hook)})
    async with processor:
        job = await processor.schedule_job("j")
        await wait_status(processor, job.id, S.FINISHED)
        deadline = asyncio.get_running_loop().time() + 5
        while (stored := await processor.get_job(job.id)).exit_hook == "owed":
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        # its own sweep, long after: the hook is neither recorded nor taken over
        await processor.recovery.sweep(processor.clock.now() + dt.timedelta(seconds=60))
        await asyncio.sleep(0.5)
        stored = await processor.get_job(job.id)
        leaked = set(processor.hooks.in_flight)
    assert calls == ["finished"]
    assert leaked == set(), f"job id left in in_flight: {leaked}"
    assert stored.exit_hook == "failed", f"exit_hook is {stored.exit_hook!r}"
    assert stored.exit_hook_error and "ApiError" in stored.exit_hook_error


async def test_a_sweep_during_a_retrys_take_over_never_calls_the_hook_a_second_time(
    db: Any,
) -> None:
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    # worker_timeout 60: no periodic sweep during the test; the one sweep is made below
    worker = await make(
        db, {"j": JobDef(handler=lambda j, s: None, on_job_exited=hook)}, worker_timeout=60
    )
    admin = await Admin.open(db, clock=worker.clock)
    take = worker.storage.jobs.take_hook
    held, gate = asyncio.Event(), asyncio.Event()
    armed = False

    async def slow_reply(doc: Any, writer: str, now: Any) -> Any:
        nonlocal armed
        out = await take(doc, writer, now)  # the take-over lands...
        if armed:
            armed = False
            held.set()
            await gate.wait()  # ...and its reply is slow to come back
        return out

    worker.storage.jobs.take_hook = slow_reply  # type: ignore[method-assign]
    async with worker:
        job = await worker.schedule_job("j", delay=3600)
        await admin.kill([job.id], actor="ops")  # CLI / dashboard kill: owed, no owner
        armed = True
        retry = asyncio.create_task(worker.retry_job(job.id))  # settles the killed exit's hook
        await asyncio.wait_for(held.wait(), 10)
        # this worker's periodic sweep comes round meanwhile
        await worker.recovery.sweep(worker.clock.now() + dt.timedelta(seconds=1))
        gate.set()
        await asyncio.wait_for(retry, 10)
        await wait_for(lambda: worker.hooks.in_flight == set())
        await asyncio.sleep(0.3)
    assert calls.count("killed") == 1, calls


async def test_a_blip_while_handing_over_a_hook_does_not_strand_it(db: Any) -> None:
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    defining = await make(db, {"j": JobDef(handler=lambda j, s: None, on_job_exited=hook)})
    other = await make(db, {"other": JobDef(handler=lambda j, s: None)})  # serves other names
    disown = other.storage.jobs.disown_hook
    blips = 1

    async def flaky(job_id: Any, hook_id: str) -> None:
        nonlocal blips
        if blips:
            blips -= 1
            raise AutoReconnect("connection reset by peer (a failover)")
        await disown(job_id, hook_id)

    other.storage.jobs.disown_hook = flaky  # type: ignore[method-assign]
    async with other, defining:
        job = await defining.schedule_job("j", delay=3600)
        raised = None
        try:
            await other.kill_job(job.id)
        except Exception as exc:  # the kill landed all the same
            raised = exc
        assert (await other.get_job(job.id)).status == S.KILLED
        for _ in range(3):  # several sweeps of the worker that defines "j" (and of the other)
            later = dt.timedelta(seconds=1)  # past the record, within worker_timeout (2 s)
            await defining.recovery.sweep(defining.clock.now() + later)
            await other.recovery.sweep(other.clock.now() + later)
            await asyncio.sleep(0.5)
        stored = await other.get_job(job.id)
    assert calls == ["killed"], f"hook calls: {calls}, exit_hook: {stored.exit_hook}"
    assert raised is None, f"kill_job raised {raised!r} although the job was killed"


async def test_a_hook_that_does_not_end_when_cancelled_is_still_bounded(db: Any) -> None:
    async def hook(job: Job) -> None:
        try:
            await asyncio.sleep(30)  # a call that hangs
        except asyncio.CancelledError:
            await asyncio.sleep(3)  # its cleanup takes its time, then the hook returns

    jobs = {"j": JobDef(handler=lambda j, s: 1, on_job_exited=hook, on_job_exited_timeout=0.5)}
    processor = await make(db, jobs)
    async with processor:
        job = await processor.schedule_job("j")
        await wait_status(processor, job.id, S.FINISHED)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while (stored := await processor.get_job(job.id)).exit_hook == "owed":
            if loop.time() - t0 > 10:
                break
            await asyncio.sleep(0.05)
        took = loop.time() - t0
    assert took < 2.0, f"the hook was settled {took:.1f}s after the job ended (timeout 0.5s)"
    assert (stored.exit_hook, stored.exit_hook_error) == ("failed", "timed out after 0.5s")


async def test_retry_takes_over_its_own_hook_that_was_never_started(db: Any) -> None:
    """hooks._abandoned: "this process runs its own hooks right after its final writes; one it
    is not running a few seconds later was never started here (a reply lost on the way)" -> it
    is taken over. a0131cc wrapped settle's _abandoned in `pending(job_id)`, which makes
    `busy(job_id)` True: its own hook is never abandoned, and retry_job waits for the deadline
    (on_job_exited_timeout + 5 s; 65 s by default) and is then refused."""
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(job.status.value)

    p = await make(
        db,
        {"j": JobDef(handler=lambda j, s: None, on_job_exited=hook, on_job_exited_timeout=3)},
    )
    job = await p.schedule_job("j", delay=3600)

    async def lost(definition: Any, doc: Any) -> None:  # the hook's call never happened here
        return None

    p.hooks.after_write = lost  # type: ignore[method-assign]
    await p.kill_job(job.id)  # owed, owned by this process (its client id)
    del p.hooks.after_write
    stored = await p.storage.jobs.get(ObjectId(job.id))
    assert stored["exit_hook"] == "owed" and stored["exit_hook_owner"] == p.identity
    old = p.clock.now() - dt.timedelta(seconds=30)  # well past OWN_HOOK_GRACE
    await p.storage.jobs.coll.update_one({"_id": ObjectId(job.id)}, {"$set": {"exit_hook_at": old}})

    retried = await asyncio.wait_for(p.retry_job(job.id), 4)  # 8 s with the defect, then refused
    assert retried.status == S.PENDING
    assert calls == ["killed"]


async def test_a_hook_raising_its_own_timeout_error_is_not_said_to_have_timed_out(
    db: Any,
) -> None:
    """A hook whose own call timed out (aiohttp, asyncio.timeout inside it) failed at once:
    recorded with its traceback, not "timed out after 60s" (the hook's budget, which it never
    reached), nor logged as on_job_exited_timed_out."""

    async def hook(job: Job) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)  # the hook's own HTTP call, say

    p = await make(db, {"j": JobDef(handler=lambda j, s: 1, on_job_exited=hook)})
    async with p:
        job = await p.schedule_job("j")
        await wait_status(p, job.id, S.FINISHED)
        stored = await settled(p, job.id)
    assert stored.exit_hook == "failed"
    assert stored.exit_hook_error != "timed out after 60s", stored.exit_hook_error
    assert "TimeoutError" in (stored.exit_hook_error or "")


async def test_a_hook_failing_as_it_is_cancelled_at_its_timeout_logs_no_orphan_error(
    db: Any, caplog: Any
) -> None:
    """At the timeout the hook task is cancelled and given a second; one that ends within it
    by raising (its cleanup failed) leaves an exception nobody retrieves: asyncio logs "Task
    exception was never retrieved" (the done callback is only added when it is still running)."""

    async def hook(job: Job) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    jobs = {"j": JobDef(handler=lambda j, s: 1, on_job_exited=hook, on_job_exited_timeout=0.3)}
    p = await make(db, jobs)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        async with p:
            job = await p.schedule_job("j")
            await wait_status(p, job.id, S.FINISHED)
            stored = await settled(p, job.id)
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
    assert stored.exit_hook == "failed"
    orphans = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert orphans == [], orphans[0].getMessage()


async def settled(p: Any, job_id: str) -> Any:
    """The job once its on_job_exited is recorded (no longer owed), within 5 s."""
    for _ in range(100):
        stored = await p.get_job(job_id)
        if stored.exit_hook != "owed":
            break
        await asyncio.sleep(0.05)
    return stored


async def test_a_cli_kill_of_a_job_without_a_hook_logs_no_recovered_hook(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A CLI kill of a pending job of a name whose definition has no on_job_exited records the
    hook as owed (the CLI cannot know); a worker's next sweep logged `on_job_exited_recovered`
    for it, though there is no hook to call. It records "none", quietly."""

    async def plain(job: Any, signal: Any) -> None:
        return None

    admin = Admin(db)
    processor = await init_job_processor(
        db,
        jobs={"plain": JobDef(handler=plain)},  # no on_job_exited
        heartbeat_interval=0.5,
        worker_timeout=2.0,
        logger=logging.getLogger("t_hookless"),
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    job = await processor.schedule_job("plain", {}, scheduled_for=later)
    assert (await admin.kill([job.id])).changed == [job.id]  # the CLI's path
    caplog.set_level(logging.INFO, logger="t_hookless")
    async with processor:
        deadline = asyncio.get_running_loop().time() + 10
        while (await admin.get_job(job.id)).exit_hook == "owed":
            assert asyncio.get_running_loop().time() < deadline, "the sweep never ran"
            await asyncio.sleep(0.1)
    assert (await admin.get_job(job.id)).exit_hook == "none"
    recovered = [r for r in caplog.records if "on_job_exited_recovered" in r.getMessage()]
    assert recovered == [], "a hook that does not exist was logged as recovered"


class _Interrupt(BaseException):
    """What some libraries raise (gevent.Timeout, pytest's outcomes, a framework's abort)."""


@pytest.mark.parametrize("plain", [False, True])
async def test_a_hook_raising_a_base_exception_is_recorded_failed_once(
    db: Any, plain: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A BaseException that is no Exception escaped the hook runner: the hook stayed owed and
    the worker's own sweep called it again every few seconds."""
    calls: list[str] = []

    async def work(job: Job, signal: Any) -> str:
        return "ok"

    async def hook(job: Job) -> None:
        calls.append(job.id)
        raise _Interrupt("hook gave up")

    def plain_hook(job: Job) -> None:
        calls.append(job.id)
        raise _Interrupt("hook gave up")

    p = await make(db, {"w": JobDef(handler=work, on_job_exited=plain_hook if plain else hook)})
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        async with p:
            job = await p.schedule_job("w")
            await wait_status(p, job.id, S.FINISHED)

            deadline = asyncio.get_running_loop().time() + 10
            while (await p.get_job(job.id)).exit_hook in (None, "owed"):
                assert asyncio.get_running_loop().time() < deadline, "the hook stays owed"
                await asyncio.sleep(0.05)
        gc.collect()
    ended = await p.get_job(job.id)
    assert ended.exit_hook == "failed", (ended.exit_hook, len(calls))
    assert (ended.exit_hook_error or "").startswith("_Interrupt: hook gave up")
    assert calls == [job.id]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
