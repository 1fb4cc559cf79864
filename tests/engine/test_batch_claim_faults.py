"""The batched claim on its fault paths (an outside review's findings, each failing before its
fix): every job of a batch claim whose reply was lost is put back unstarted (they share one run
id, dropped after the first); a claim that landed with a write-concern error is read back, not
left running to be recovered as a failed attempt; a misnamed job read back by a batch claim is
errored, not run as the other job; a foreign end_id never crashes the claim loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, ExecutionTimeout, WriteConcernError, WriteError

from job_processor import AbortSignal, Job, JobDef, JobStatus
from tests.helpers import make, wait_status

S = JobStatus

WCE = WriteConcernError("waiting for replication timed out", 64, {"errInfo": {"wtimeout": True}})


def is_claim(update: Any) -> bool:
    return "claim_name" in update.get("$unset", {}) and "worker_id" in update.get("$set", {})


def claim_lands_then_raises(
    monkeypatch: pytest.MonkeyPatch,
    coll: Any,
    method: str,
    error: Exception,
    landed: Callable[[Any], bool],
) -> tuple[asyncio.Event, list[Any]]:
    """The first claim through `coll.method` that `landed` (its result) is applied, then
    raises `error` (its reply lost, or its write concern unmet). The event is set then; the
    list gets the ids that claim took."""
    real = getattr(coll, method)
    hit = asyncio.Event()
    took: list[Any] = []

    async def patched(query: Any, update: Any, **kw: Any) -> Any:
        res = await real(query, update, **kw)
        if is_claim(update) and landed(res) and not hit.is_set():
            took.extend(query.get("_id", {}).get("$in", []))
            hit.set()
            raise error
        return res

    monkeypatch.setattr(coll, method, patched)
    return hit, took


def read_back_fails_while(monkeypatch: pytest.MonkeyPatch, coll: Any, down: asyncio.Event) -> Any:
    """While `down` is set, a claim's read-back by run id fails (LostClaim). Returns the real
    `find`, to put back."""
    real_find = coll.find

    def find(query: Any = None, *args: Any, **kw: Any) -> Any:
        if down.is_set() and query and "run_id" in query and "_id" not in query:
            raise AutoReconnect("still down")
        return real_find(query, *args, **kw)

    monkeypatch.setattr(coll, "find", find)
    return real_find


class Counted:
    """A handler counting its runs per job (sleeping `seconds` in each)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.runs: dict[str, int] = {}
        self.seconds = seconds

    async def __call__(self, job: Job, signal: AbortSignal) -> None:
        self.runs[job.id] = self.runs.get(job.id, 0) + 1
        await asyncio.sleep(self.seconds)

    async def each_ran_once(self, p: Any, job_ids: list[str]) -> None:
        for job_id in job_ids:
            job = await p.get_job(job_id)
            assert (job.status, job.failures, self.runs.get(job_id)) == (S.FINISHED, 0, 1), (
                f"job {job_id}: {job.status.value}, failures {job.failures}, ran "
                f"{self.runs.get(job_id, 0)} time(s), error {job.error!r}"
            )


async def test_every_job_of_a_lost_batch_claim_is_requeued_unstarted(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = Counted(0.3)
    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    coll = p.storage.jobs.coll
    outage, lost_ids = claim_lands_then_raises(
        monkeypatch, coll, "update_many", AutoReconnect("reset"), lambda r: r.modified_count >= 2
    )
    real_find = read_back_fails_while(monkeypatch, coll, outage)
    jobs = [(await p.schedule_job("w")).id for _ in range(4)]
    async with p:
        await asyncio.wait_for(outage.wait(), 10)
        # the read-back rides out worker_timeout, then LostClaim: the run id is unstarted
        await asyncio.sleep(p.worker.settings.worker_timeout + 0.5)
        monkeypatch.setattr(coll, "find", real_find)
        for job_id in jobs:
            await wait_status(p, job_id, S.FINISHED, S.ERRORED, timeout=20)
    assert len(lost_ids) >= 2
    await work.each_ran_once(p, jobs)


#: What MongoDB answers when a command's maxTimeMS (the driver bound Motor's claims carry,
#: `storage.transient.driver_bound`) runs out midway: as a command error, or as the write error
#: of a multi-update, the documents it updated before staying updated.
TIMED_OUT = [
    ExecutionTimeout("operation exceeded time limit", 50, {"ok": 0, "code": 50}),
    WriteError("operation exceeded time limit", 50, {"code": 50}),
]


@pytest.mark.parametrize(
    "error", [WCE, *TIMED_OUT], ids=["write concern", "time limit", "time limit write error"]
)
async def test_a_batch_claim_that_landed_in_part_and_raised_is_read_back_not_an_attempt(
    db: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A batch claim's update_many that raised after it had claimed some jobs (a write concern
    error; its maxTimeMS running out: it raised, logged 'claim_failed', and those jobs stayed
    'running' on a live worker that never ran them, nothing recovering a live worker's jobs):
    they are read back by run id and run, no attempt used."""
    work = Counted(0.3)
    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    hit, took = claim_lands_then_raises(
        monkeypatch, p.storage.jobs.coll, "update_many", error, lambda r: r.modified_count > 0
    )
    jobs = [(await p.schedule_job("w")).id for _ in range(4)]
    async with p:
        await asyncio.wait_for(hit.wait(), 10)
        for job_id in jobs:
            await wait_status(p, job_id, S.FINISHED, S.ERRORED, timeout=20)
    assert took
    await work.each_ran_once(p, jobs)


@pytest.mark.parametrize("error", [WCE, TIMED_OUT[0]], ids=["write concern", "time limit"])
async def test_a_single_claim_that_landed_and_raised_is_read_back_not_an_attempt(
    db: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    work = Counted()
    p = await make(db, {"w": JobDef(handler=work)})
    hit, _ = claim_lands_then_raises(
        monkeypatch, p.storage.jobs.coll, "find_one_and_update", error, lambda r: r is not None
    )
    job = await p.schedule_job("w")
    async with p:
        await asyncio.wait_for(hit.wait(), 10)
        await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    await work.each_ran_once(p, [job.id])


async def test_a_misnamed_job_read_back_by_a_batch_claim_is_errored_not_run(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    async def a(job: Job, signal: AbortSignal) -> None:
        ran.append(f"a:{job.id}")
        await asyncio.sleep(0.5)

    async def b(job: Job, signal: AbortSignal) -> None:
        ran.append(f"b:{job.id}")

    jobs = {"a": JobDef(handler=a), "b": JobDef(handler=b, tag="main")}
    p = await make(db, jobs, worker_tags=["other"], concurrency=4)
    coll = p.storage.jobs.coll
    good = [await p.schedule_job("a") for _ in range(2)]
    due = int(time.time() * 1000)
    bad = [
        (await coll.insert_one({"name": "b", "claim_name": "a", "due_ms": due})).inserted_id
        for _ in range(3)
    ]
    real_many = coll.update_many
    raced: list[Any] = []

    async def another_worker_takes_one_first(query: Any, update: Any, **kw: Any) -> Any:
        if is_claim(update) and not raced:
            # another worker's one-job claim lands between this batch's find and update_many
            other = await p.storage.jobs.claim_next(["a"], "w-other", p.clock.now())
            raced.append(other and other["_id"])
        return await real_many(query, update, **kw)

    monkeypatch.setattr(coll, "update_many", another_worker_takes_one_first)
    async with p:
        for job in good:
            await wait_status(p, job.id, S.FINISHED)
        await asyncio.sleep(1.0)
    assert raced, "no batch claim was made"
    for job_id in bad:
        if job_id in raced:
            continue  # the other worker's
        doc = await p.get_job(str(job_id))
        assert f"b:{job_id}" not in ran, f"misnamed job {job_id} ran as 'b' ({doc.status.value})"
        assert doc.status == S.ERRORED


async def test_a_foreign_end_id_in_a_batch_never_crashes_the_claim_loop(db: Any) -> None:
    async def work(job: Job, signal: AbortSignal) -> None:
        await asyncio.sleep(0.2)

    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    ours = [await p.schedule_job("w") for _ in range(3)]
    due = int(time.time() * 1000)
    coll = p.storage.jobs.coll
    foreign = await coll.insert_one({"name": "w", "claim_name": "w", "due_ms": due, "end_id": 7})
    later = [await p.schedule_job("w") for _ in range(4)]
    async with p:
        for job in ours + later:
            await wait_status(p, job.id, S.FINISHED, timeout=10)
        assert not p.failed.is_set()  # every loop still up
    assert (await p.get_job(str(foreign.inserted_id))).status in (S.FINISHED, S.ERRORED)


async def test_a_batch_claim_whose_reply_was_lost_is_read_back_and_run(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply lost, the read-back answering: the jobs claimed run once each (this path
    raised UnboundLocalError in the claim loop)."""
    work = Counted()
    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    hit, _ = claim_lands_then_raises(
        monkeypatch,
        p.storage.jobs.coll,
        "update_many",
        AutoReconnect("connection reset"),
        lambda r: r.modified_count >= 2,
    )
    jobs = [(await p.schedule_job("w")).id for _ in range(4)]
    async with p:
        for job_id in jobs:
            await wait_status(p, job_id, S.FINISHED, timeout=15)
        assert not p.failed.is_set()
    assert hit.is_set()
    await work.each_ran_once(p, jobs)


async def test_a_lost_claim_that_never_landed_is_forgotten_once_reconciled(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"w": JobDef(handler=noop)})
    coll = p.storage.jobs.coll
    real_fam = coll.find_one_and_update
    outage = asyncio.Event()

    async def never_lands(query: Any, update: Any, **kw: Any) -> Any:
        if is_claim(update) and not outage.is_set():
            outage.set()
            raise AutoReconnect("connection reset")  # before it reached the server
        return await real_fam(query, update, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", never_lands)
    real_find = read_back_fails_while(monkeypatch, coll, outage)  # LostClaim
    job = await p.schedule_job("w")
    async with p:
        await asyncio.wait_for(outage.wait(), 10)
        await asyncio.sleep(p.worker.settings.worker_timeout + 0.5)  # the read-back gives up
        monkeypatch.setattr(coll, "find", real_find)  # MongoDB is back
        await wait_status(p, job.id, JobStatus.FINISHED, timeout=10)
        await asyncio.sleep(3 * p.worker.settings.worker_timeout)  # reconciliations, sweeps
        left = set(p.worker.unstarted)
        listed: list[int] = []
        real_running_on = p.storage.jobs.running_on

        async def counting(worker_id: str) -> Any:
            listed.append(1)
            return await real_running_on(worker_id)

        monkeypatch.setattr(p.storage.jobs, "running_on", counting)
        await asyncio.sleep(2.0)  # idle
    assert left == set(), f"run ids of claims that never landed kept for ever: {left}"
    assert len(listed) <= 1, f"an idle worker listed its running jobs {len(listed)} times in 2 s"
