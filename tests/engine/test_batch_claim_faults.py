"""The batched claim on its fault paths (an outside review's findings, each failing before its
fix): every job of a batch claim whose reply was lost is put back unstarted (they share one run
id, dropped after the first); a claim that landed with a write-concern error is read back, not
left running to be recovered as a failed attempt; a misnamed job read back by a batch claim is
errored, not run as the other job; a foreign end_id never crashes the claim loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, WriteConcernError

from job_processor import AbortSignal, Job, JobDef, JobStatus
from tests.helpers import make, wait_status

S = JobStatus

WCE = WriteConcernError("waiting for replication timed out", 64, {"errInfo": {"wtimeout": True}})


async def test_every_job_of_a_lost_batch_claim_is_requeued_unstarted(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: dict[str, int] = {}

    async def work(job: Job, signal: AbortSignal) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        await asyncio.sleep(0.3)

    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    coll = p.storage.jobs.coll
    real_many, real_find = coll.update_many, coll.find
    outage = asyncio.Event()
    lost_ids: list[Any] = []

    async def batch_lands_reply_lost(query: Any, update: Any, **kw: Any) -> Any:
        res = await real_many(query, update, **kw)
        is_claim = "claim_name" in update.get("$unset", {}) and "worker_id" in update.get(
            "$set", {}
        )
        if is_claim and res.modified_count >= 2 and not outage.is_set():
            lost_ids.extend(query["_id"]["$in"])
            outage.set()
            raise AutoReconnect("connection reset")
        return res

    def find_during_outage(query: Any = None, *args: Any, **kw: Any) -> Any:
        if outage.is_set() and query and "run_id" in query and "_id" not in query:
            raise AutoReconnect("still down")  # the read-back fails: LostClaim
        return real_find(query, *args, **kw)

    monkeypatch.setattr(coll, "update_many", batch_lands_reply_lost)
    monkeypatch.setattr(coll, "find", find_during_outage)
    jobs = [await p.schedule_job("w") for _ in range(4)]
    async with p:
        await asyncio.wait_for(outage.wait(), 10)
        # the read-back rides out worker_timeout, then LostClaim: the run id is unstarted
        await asyncio.sleep(p.worker.settings.worker_timeout + 0.5)
        monkeypatch.setattr(coll, "find", real_find)
        for j in jobs:
            await wait_status(p, j.id, S.FINISHED, S.ERRORED, timeout=20)
        done = [await p.get_job(j.id) for j in jobs]
    assert len(lost_ids) >= 2
    for job in done:
        assert (job.status, job.failures, runs.get(job.id)) == (S.FINISHED, 0, 1), (
            f"job {job.id} {'of the lost batch' if job.id in map(str, lost_ids) else ''}: "
            f"{job.status.value}, failures {job.failures}, ran {runs.get(job.id, 0)} time(s), "
            f"error {job.error!r}"
        )


def is_claim(update: Any) -> bool:
    return "claim_name" in update.get("$unset", {}) and "worker_id" in update.get("$set", {})


async def test_a_batch_claim_landed_with_a_write_concern_error_is_not_an_attempt(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: dict[str, int] = {}

    async def work(job: Job, signal: AbortSignal) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        await asyncio.sleep(0.3)

    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    coll = p.storage.jobs.coll
    real_many = coll.update_many
    hit = asyncio.Event()

    async def lands_then_write_concern_error(query: Any, update: Any, **kw: Any) -> Any:
        res = await real_many(query, update, **kw)
        if is_claim(update) and res.modified_count and not hit.is_set():
            hit.set()
            raise WCE
        return res

    monkeypatch.setattr(coll, "update_many", lands_then_write_concern_error)
    jobs = [await p.schedule_job("w") for _ in range(4)]
    async with p:
        await asyncio.wait_for(hit.wait(), 10)
        for j in jobs:
            await wait_status(p, j.id, S.FINISHED, S.ERRORED, timeout=20)
    for j in jobs:
        job = await p.get_job(j.id)
        assert (job.status, job.failures, runs.get(j.id)) == (S.FINISHED, 0, 1), (
            f"{job.status.value}, failures {job.failures}, ran {runs.get(j.id, 0)} time(s), "
            f"error {job.error!r}"
        )


async def test_a_single_claim_landed_with_a_write_concern_error_is_not_an_attempt(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        runs.append(job.attempt)

    p = await make(db, {"w": JobDef(handler=work)})
    coll = p.storage.jobs.coll
    real_fam = coll.find_one_and_update
    hit = asyncio.Event()

    async def lands_then_write_concern_error(query: Any, update: Any, **kw: Any) -> Any:
        res = await real_fam(query, update, **kw)
        if is_claim(update) and res is not None and not hit.is_set():
            hit.set()
            raise WCE
        return res

    monkeypatch.setattr(coll, "find_one_and_update", lands_then_write_concern_error)
    job = await p.schedule_job("w")
    async with p:
        await asyncio.wait_for(hit.wait(), 10)
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    assert (done.status, done.failures, runs) == (S.FINISHED, 0, [1]), (
        f"{done.status.value}, failures {done.failures}, runs {runs}, error {done.error!r}"
    )


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
        is_claim = "claim_name" in update.get("$unset", {}) and "worker_id" in update.get(
            "$set", {}
        )
        if is_claim and not raced:
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
    runs: dict[str, int] = {}

    async def work(job: Job, signal: AbortSignal) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1

    p = await make(db, {"w": JobDef(handler=work)}, concurrency=4)
    coll = p.storage.jobs.coll
    real_many = coll.update_many
    hit = asyncio.Event()

    async def lands_reply_lost(query: Any, update: Any, **kw: Any) -> Any:
        res = await real_many(query, update, **kw)
        if is_claim(update) and res.modified_count >= 2 and not hit.is_set():
            hit.set()
            raise AutoReconnect("connection reset")
        return res

    monkeypatch.setattr(coll, "update_many", lands_reply_lost)
    jobs = [await p.schedule_job("w") for _ in range(4)]
    async with p:
        for j in jobs:
            await wait_status(p, j.id, S.FINISHED, timeout=15)
        assert not p.failed.is_set()
    assert hit.is_set() and runs == {j.id: 1 for j in jobs}


async def test_a_lost_claim_that_never_landed_is_forgotten_once_reconciled(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"w": JobDef(handler=noop)})
    coll = p.storage.jobs.coll
    real_fam, real_find = coll.find_one_and_update, coll.find
    outage = asyncio.Event()

    async def never_lands(query: Any, update: Any, **kw: Any) -> Any:
        if is_claim(update) and not outage.is_set():
            outage.set()
            raise AutoReconnect("connection reset")  # before it reached the server
        return await real_fam(query, update, **kw)

    def find_during_outage(query: Any = None, *args: Any, **kw: Any) -> Any:
        if outage.is_set() and query and "run_id" in query and "_id" not in query:
            raise AutoReconnect("still down")  # the read-back fails: LostClaim
        return real_find(query, *args, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", never_lands)
    monkeypatch.setattr(coll, "find", find_during_outage)
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
