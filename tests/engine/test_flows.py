"""Dependencies between jobs on a server: a job waits for the jobs it was scheduled after, is
released by their ends (no polling), sees their results, and a dependency that fails skips it,
errors it or counts as ended, as asked. Whole flows in one schedule_jobs call."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from job_processor import (
    AbortSignal,
    DoNotRetry,
    FakeClock,
    InvalidArgumentError,
    Job,
    JobDef,
    JobNotFoundError,
    JobProcessor,
    JobSpec,
    JobStatus,
    init_job_processor,
)
from job_processor.core import documents as D
from job_processor.core import flows as F
from job_processor.engine.flows import MARK_GRACE
from job_processor.ops.admin import Admin
from tests.helpers import CommandNames, Interposed, make, wait_status

S = JobStatus
#: Marks made before this (any): a settle that does not wait for a mark's grace.
FAR = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
#: Past the grace a sweep gives a job scheduled after a dependency (`MARK_GRACE`).
AFTER_MARKS = dt.timedelta(seconds=MARK_GRACE + 1)
hooks: list[tuple[str, str]] = []


async def part(job: Job, signal: AbortSignal) -> int:
    if job.payload.get("fail"):
        raise DoNotRetry(f"part {job.payload['n']} failed")
    if job.payload.get("block"):
        await signal.wait()
        signal.raise_if_aborted()
    return int(job.payload["n"])


async def total(job: Job, signal: AbortSignal) -> dict[str, Any]:
    deps = await job.dependencies()
    return {
        "sum": sum(d.result or 0 for d in deps if d.status == S.FINISHED),
        "statuses": [d.status.value for d in deps],
    }


async def note_exit(job: Job) -> None:
    hooks.append((job.name, job.status.value))


JOBS = {
    "part": JobDef(handler=part),
    "total": JobDef(handler=total, on_job_exited=note_exit),
}


async def test_a_whole_flow_in_one_call_runs_the_parent_after_its_children(db: Any) -> None:
    p = await make(db, JOBS, concurrency=4)
    children = [JobSpec("part", {"n": n}) for n in range(1, 6)]
    jobs = await p.schedule_jobs([*children, JobSpec("total", after=children)])
    parent = jobs[-1]
    assert parent.status == S.WAITING and parent.waiting_on == 5
    assert parent.after == [j.id for j in jobs[:5]]
    assert (await p.get_job(jobs[0].id)).has_dependents
    async with p:
        done = await wait_status(p, parent.id, S.FINISHED)
    assert done.result == {"sum": 15, "statuses": ["finished"] * 5}
    assert done.waiting_on == 0 and set(done.deps.values()) == {"finished"}
    assert done.attempt == 1  # released once
    started = min(c.ended_at for c in await p.get_jobs(parent.after))
    assert done.run_started_at is not None and done.run_started_at >= started


@pytest.mark.parametrize(
    ("policy", "status"), [("skip", S.SKIPPED), ("run", S.FINISHED), ("error", S.ERRORED)]
)
async def test_a_failed_child_skips_runs_or_errors_its_parent(
    db: Any, policy: str, status: S
) -> None:
    hooks.clear()
    p = await make(db, JOBS, concurrency=4)
    ok = await p.schedule_job("part", {"n": 1})
    bad = await p.schedule_job("part", {"n": 2, "fail": True})
    parent = await p.schedule_job("total", after=[ok, bad.id], on_dependency_failure=policy)
    async with p:
        ended = await wait_status(p, parent.id, status)
        if status != S.SKIPPED:
            await wait_for_hook(("total", status.value))
    if policy == "run":  # it waited for both
        assert ended.deps == {ok.id: "finished", bad.id: "errored"}
    else:  # ended by the failure, whether or not the other had ended by then (they run at once)
        assert ended.deps[bad.id] == "errored" and ended.deps[ok.id] in ("finished", "waiting")
    if policy == "run":
        assert ended.result == {"sum": 1, "statuses": ["finished", "errored"]}
    else:
        assert ended.failed_dependency == bad.id
        assert f"dependency {bad.id} errored" in (ended.error or "")
        assert ended.attempt == 0  # never ran
    if status == S.SKIPPED:
        assert ended.skip_reason == "dependency" and hooks == []  # no hook for skipped jobs


async def wait_for_hook(expected: tuple[str, str]) -> None:
    for _ in range(300):
        if expected in hooks:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"hook {expected} never called: {hooks}")


async def test_a_killed_dependency_and_a_killed_waiting_job_carry_on_down_the_flow(
    db: Any,
) -> None:
    p = await make(db, JOBS, concurrency=4)
    blocked = await p.schedule_job("part", {"n": 1, "block": True})
    middle = await p.schedule_job("total", after=[blocked])
    last = await p.schedule_job("total", after=[middle])
    other = await p.schedule_job("part", {"n": 2, "block": True})
    waiting = await p.schedule_job("total", after=[other])
    after_waiting = await p.schedule_job("total", after=[waiting], on_dependency_failure="run")
    async with p:
        await wait_status(p, blocked.id, S.RUNNING)
        await p.kill_job(blocked.id)  # a running dependency, killed
        assert (await wait_status(p, middle.id, S.SKIPPED)).deps == {blocked.id: "killed"}
        assert (await wait_status(p, last.id, S.SKIPPED)).failed_dependency == middle.id
        killed = await p.kill_job(waiting.id)  # a waiting job, killed
        assert killed.status == S.KILLED
        done = await wait_status(p, after_waiting.id, S.FINISHED)  # "run": it counts as ended
        assert done.result == {"sum": 0, "statuses": ["killed"]}
        await p.kill_job(other.id)


async def test_a_dependency_that_already_ended_releases_at_once_and_bad_input_writes_nothing(
    db: Any,
) -> None:
    p = await make(db, JOBS)
    finished = await p.run_job("part", {"n": 7})
    parent = await p.schedule_job("total", after=[finished])
    assert parent.status == S.PENDING  # nothing to wait for
    with pytest.raises(JobNotFoundError, match="after names jobs that do not exist"):
        await p.schedule_job("total", after=["0123456789abcdef01234567"])
    with pytest.raises(InvalidArgumentError, match="after, or scheduled_for / delay, not both"):
        await p.schedule_job("total", after=[finished], delay=5)
    with pytest.raises(InvalidArgumentError, match="on_dependency_failure must be one of"):
        await p.schedule_job("total", after=[finished], on_dependency_failure="ignore")
    keyed = JobSpec("part", {"n": 1}, key="k")
    with pytest.raises(InvalidArgumentError, match=r"item 1: .*item 0 has a dedup key"):
        await p.schedule_jobs([keyed, JobSpec("total", after=[keyed])])
    with pytest.raises(InvalidArgumentError, match=r"item 0: .*only earlier items"):
        await p.schedule_jobs([JobSpec("total", after=[1]), ("part", {"n": 1})])
    assert len(await p.list_jobs(limit=100)) == 2  # the finished job and the released parent


async def test_retry_and_delete_in_a_flow(db: Any) -> None:
    p = await make(db, JOBS, concurrency=4)
    admin = await Admin.open(db, clock=p.clock)
    bad = await p.schedule_job("part", {"n": 2, "fail": True})
    parent = await p.schedule_job("total", after=[bad])
    async with p:
        await wait_status(p, parent.id, S.SKIPPED)
        # retrying the failed child runs it again; its parent stays skipped (it records why)
        await db[f"{p.storage.prefix}jobs"].update_one(
            {"_id": ObjectId(bad.id)}, {"$set": {"payload.fail": False}}
        )
        await p.retry_job(bad.id)
        await wait_status(p, bad.id, S.FINISHED)
    again = await p.get_job(parent.id)
    assert again.status == S.SKIPPED and again.deps == {bad.id: "errored"}
    # a dependency counted by its dependents can be deleted once a worker's sweep has seen
    # them settled (before, a job being scheduled after it may have marked it and not be
    # written yet): they keep its recorded status
    refused = await admin.delete([bad.id])
    assert refused.changed == [] and "seen to have counted" in refused.skipped[bad.id]
    await p.flows.sweep(p.clock.now() + AFTER_MARKS)
    assert (await admin.delete([bad.id])).changed == [bad.id]
    assert (await p.get_job(parent.id)).deps == {bad.id: "errored"}


async def test_a_dependency_whose_end_went_unnoticed_is_settled_by_the_sweep(db: Any) -> None:
    """Its worker died between the child's final write and settling the parent (here: the
    child's end written behind the processor's back): a worker's recovery sweep finds the
    parent waiting, for longer than worker_timeout, on an ended job, and releases it."""
    p = await make(db, JOBS, worker_timeout=2.0, heartbeat_interval=0.5)
    child = await p.schedule_job("part", {"n": 3})
    parent = await p.schedule_job("total", after=[child])
    coll = p.storage.jobs.coll
    await coll.update_one(
        {"_id": ObjectId(child.id)},
        {"$set": {"status": "finished", "output": {"result": 3}}, "$unset": {"claim_name": ""}},
    )
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
    await coll.update_one({"_id": ObjectId(parent.id)}, {"$set": {"created_at": long_ago}})
    assert (await p.get_job(parent.id)).status == S.WAITING
    async with p:
        done = await wait_status(p, parent.id, S.FINISHED, timeout=20)
    assert done.result == {"sum": 3, "statuses": ["finished"]}


async def test_an_outage_while_registering_dependencies_does_not_fail_the_written_jobs(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The jobs are stored when registering their dependencies meets an outage past the
    budget: the call returns them (raising would invite a retry that writes them twice), logs
    `dependencies_not_registered`, and a worker's sweep settles the dependency instead: it was
    marked as having dependents before the insert."""
    from job_processor.core.errors import DatabaseUnreachableError

    logger = logging.getLogger("test.flows.register")
    p = await make(db, JOBS, worker_timeout=2.0, heartbeat_interval=0.5, logger=logger)
    finished = await p.run_job("part", {"n": 4})

    async def unreachable(deps: list[ObjectId], waiting: Any = None) -> int:
        raise DatabaseUnreachableError("cannot reach MongoDB (test)")

    p.flows.register = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="test.flows.register"):
        parent = await p.schedule_job("total", after=[finished])
        (batch_parent,) = await p.schedule_jobs([JobSpec("total", after=[finished])])
    assert parent.status == batch_parent.status == S.WAITING  # not released: not registered
    marked = await p.storage.jobs.coll.find_one({"_id": ObjectId(finished.id)})
    assert marked is not None and marked.get("has_dependents")  # marked before the insert
    said = [r for r in caplog.records if r.__dict__.get("event") == "dependencies_not_registered"]
    assert len(said) == 2
    coll = p.storage.jobs.coll
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)  # past the sweep's grace
    await coll.update_many(
        {"_id": {"$in": [ObjectId(parent.id), ObjectId(batch_parent.id)]}},
        {"$set": {"created_at": long_ago}},
    )
    await coll.update_one({"_id": ObjectId(finished.id)}, {"$set": {"ended_at": long_ago}})
    async with p:
        for job in (parent, batch_parent):
            done = await wait_status(p, job.id, S.FINISHED, timeout=20)
            assert done.result == {"sum": 4, "statuses": ["finished"]}


async def test_the_job_page_links_a_flow_and_the_sync_client_schedules_one(
    db: Any, mongo_url: str
) -> None:
    from pymongo import MongoClient

    from job_processor.sync import JobClient

    p = await make(db, JOBS)
    mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)

    def sync_app() -> tuple[Any, Any]:  # a thread of a sync app, not this event loop
        client = JobClient(mongo[db.name], JOBS)
        child = client.schedule_job("part", {"n": 4})
        parent = client.schedule_job("total", after=[child.id], on_dependency_failure="run")
        assert parent.status == S.WAITING and client.get_jobs([child.id])[0].id == child.id
        return parent, child

    try:
        parent, child = await asyncio.to_thread(sync_app)
    finally:
        mongo.close()
    parent_page, child_page = await job_pages(p, parent.id, child.id)
    assert f'href="/jobs/{child.id}"' in parent_page and "waiting for 1" in parent_page
    assert f'href="/jobs/{parent.id}"' in child_page and "Jobs scheduled after it" in child_page


async def test_the_job_page_of_a_big_flow_shows_a_bounded_list_and_the_true_count(
    db: Any,
) -> None:
    """A fan-out of 2,000 said "Jobs scheduled after it 100"; a fan-in after 1,000 listed all
    of them (1,000 reads, 190 KB). Each side shows at most 100, and says how many there are."""
    p = await make(db, JOBS)
    parts = await p.schedule_jobs([JobSpec("part", {"n": n}) for n in range(150)])
    fan_in = await p.schedule_job("total", after=parts)
    root = parts[0]
    await p.schedule_jobs([JobSpec("part", {"n": n}, after=[root]) for n in range(130)])
    fan_in_page, root_page = await job_pages(p, fan_in.id, root.id)
    assert "the first 100 of 150 shown" in fan_in_page
    assert sum(f'href="/jobs/{j.id}"' in fan_in_page for j in parts) == 100
    assert "deleted (" not in fan_in_page  # the 50 not shown are not reported deleted
    assert 'Jobs scheduled after it <span class="count">131</span>' in root_page
    assert "the newest 100 of 131 shown" in root_page


# ---- review findings: a dependent added while its dependency runs, admin kills, the sweep ------


async def test_a_dependent_added_while_its_dependency_runs_is_released_by_that_end(
    db: Any,
) -> None:
    """Scheduled from another process after the dependency was claimed: the dependency's final
    write learns it (it does not apply over `has_dependents` it was not told of, then is made
    again) and releases the dependent at once, not at a sweep (none runs in this test: its
    worker_timeout is 60 s); the finished dependency's expiry waits until the sweep has seen
    its dependents settled."""
    go = asyncio.Event()

    async def slow(job: Job, signal: AbortSignal) -> int:
        await go.wait()
        return 5

    defs = JOBS | {"slow": JobDef(handler=slow)}
    worker = await make(db, defs, worker_timeout=60.0)
    producer = await make(db, defs)  # another process: shares only the database
    async with worker:
        dep = await worker.schedule_job("slow")
        await wait_status(worker, dep.id, S.RUNNING)
        parent = await producer.schedule_job("total", after=[dep])
        assert parent.status == S.WAITING
        go.set()
        done = await wait_status(worker, parent.id, S.FINISHED, timeout=10)
        assert done.result == {"sum": 5, "statuses": ["finished"]}
        held = await worker.storage.jobs.coll.find_one({"_id": ObjectId(dep.id)})
        assert held is not None and "expires_at" not in held and held["expires_after_settle"]
        soon = dt.datetime.now(dt.UTC)
        await worker.flows.sweep(soon)  # it ended a moment ago: left to its own process
        assert "dependents_settled" not in (await worker.storage.jobs.get(ObjectId(dep.id)) or {})
        await worker.flows.sweep(soon + AFTER_MARKS)
        settled = await worker.storage.jobs.coll.find_one({"_id": ObjectId(dep.id)})
        assert settled is not None and settled["dependents_settled"]  # (1 on nx-27017)
        assert settled["expires_at"] == held["expires_after_settle"]


async def test_a_kill_from_the_admin_carries_on_to_the_waiting_jobs_at_once(db: Any) -> None:
    p = await make(db, JOBS)
    dep = await p.schedule_job("part", {"n": 1}, delay=3600)
    parent = await p.schedule_job("total", after=[dep])  # on_dependency_failure="skip"
    await Admin(db).kill(dep.id, actor="ops")  # no worker runs: nothing but the kill settles it
    skipped = await p.get_job(parent.id)
    assert skipped.status == S.SKIPPED and skipped.failed_dependency == dep.id
    (page,) = await job_pages(p, parent.id)
    assert "not called (a skipped job never ran)" in page and "has not ended" not in page


async def test_the_sweep_settles_from_the_dependencies_side_whatever_else_waits(db: Any) -> None:
    """An ended dependency whose dependents were never counted (its process died in between)
    is found among ended jobs with dependents, however many other jobs wait; once seen settled
    it leaves the sweep's query."""
    p = await make(db, JOBS)
    far = await p.schedule_job("part", {"n": 0}, delay=3600)
    await p.schedule_jobs([JobSpec("total", {}, after=[far]) for _ in range(520)])
    child = await p.schedule_job("part", {"n": 3})
    parent = await p.schedule_job("total", after=[child])
    coll = p.storage.jobs.coll
    await coll.update_one(  # its end written behind the processor's back: nothing settled it
        {"_id": ObjectId(child.id)},
        {"$set": {"status": "finished", "output": {"result": 3}}, "$unset": {"claim_name": ""}},
    )
    assert await p.flows.sweep(dt.datetime.now(dt.UTC) + AFTER_MARKS) == 1
    assert (await p.get_job(parent.id)).status == S.PENDING
    assert await p.storage.jobs.flow_attention() == ([], [])
    assert (await p.get_job(far.id)).status == S.PENDING  # the 520 still wait on it


async def test_waiting_jobs_are_counted_in_status_metrics_and_the_overview(db: Any) -> None:
    from job_processor.ops import metrics
    from tests.ops.test_metrics import samples

    p = await make(db, JOBS)
    dep = await p.schedule_job("part", {"n": 1}, delay=3600)
    await p.schedule_job("total", after=[dep])
    status = await Admin(db).status()
    assert status.queue["waiting"] == 1 and status.queue["pending"] == 1
    got = samples((await metrics.render(metrics.enable(p))).decode())
    assert got[("job_processor_jobs", (("name", "total"), ("status", "waiting")))] == 1
    overview = await Admin(db).overview()
    assert overview.queue["total"].waiting == 1


async def test_a_job_killed_while_waiting_waits_again_when_retried(db: Any) -> None:
    """Retried, it waits for the dependencies it had not counted (it does not run before them);
    one that ended meanwhile is counted at the retry."""
    p = await make(db, JOBS)
    later = await p.schedule_job("part", {"n": 2}, delay=3600)
    soon = await p.schedule_job("part", {"n": 1})
    parent = await p.schedule_job("total", after=[soon, later])
    assert (await p.kill_job(parent.id)).status == S.KILLED
    async with p:
        await wait_status(p, soon.id, S.FINISHED)  # ends while the parent is killed
        retried = await p.retry_job(parent.id)
        assert retried.status == S.WAITING
        assert retried.deps == {soon.id: "finished", later.id: "waiting"}
        await Admin(db).run_now(later.id)
        done = await wait_status(p, parent.id, S.FINISHED)
    assert done.result == {"sum": 3, "statuses": ["finished", "finished"]}


async def test_a_duplicate_of_a_waiting_job_waits_for_the_same_dependencies(db: Any) -> None:
    p = await make(db, JOBS)
    done = await p.schedule_job("part", {"n": 1})
    later = await p.schedule_job("part", {"n": 2}, delay=3600)
    parent = await p.schedule_job("total", after=[done, later])
    async with p:
        await wait_status(p, done.id, S.FINISHED)
        copy = (await Admin(db).duplicate(parent.id, actor="ops")).jobs[0]
        assert copy.status == S.WAITING and copy.after == [done.id, later.id]
        assert copy.deps == {done.id: "finished", later.id: "waiting"}  # counted at once
        await Admin(db).run_now(later.id)
        finished = await wait_status(p, copy.id, S.FINISHED)
    assert finished.result == {"sum": 3, "statuses": ["finished", "finished"]}


# ---- second review: retries, expiries ---------------------------------------------------------


async def test_a_job_errored_by_a_failed_dependency_runs_when_retried(db: Any) -> None:
    """Even while another of its dependencies has not ended (the operator's decision)."""
    p = await make(db, JOBS)
    bad = await p.schedule_job("part", {"n": 1, "fail": True})
    later = await p.schedule_job("part", {"n": 2}, delay=3600)
    parent = await p.schedule_job("total", after=[bad, later], on_dependency_failure="error")
    async with p:
        await wait_status(p, parent.id, S.ERRORED)
        await wait_for_hook(("total", "errored"))
        retried = await p.retry_job(parent.id)
        assert retried.status in (S.PENDING, S.RUNNING, S.FINISHED)
        done = await wait_status(p, parent.id, S.FINISHED)
    assert done.result == {"sum": 0, "statuses": ["errored", "pending"]}


async def test_every_end_in_a_flow_gets_its_retention(db: Any) -> None:
    """A job skipped by a failed dependency gets its name's expiry from a sweep; a dependency
    retried after its dependents were settled gets its new expiry too; and marking settled
    never drops an expiry written directly (a kill's)."""
    keep = dt.timedelta(hours=1)
    p = await make(db, JOBS, keep_finished=keep, keep_failed=keep)
    coll = p.storage.jobs.coll
    bad = await p.schedule_job("part", {"n": 1, "fail": True})
    child = await p.schedule_job("total", after=[bad])  # skipped when `bad` fails
    pending = await p.schedule_job("part", {"n": 2}, delay=3600)
    waiter = await p.schedule_job("total", after=[pending])
    async with p:
        await wait_status(p, child.id, S.SKIPPED)
        await p.kill_job(pending.id)  # its expiry written by the kill's hook record
        await wait_status(p, waiter.id, S.SKIPPED)
        later = dt.datetime.now(dt.UTC) + AFTER_MARKS
        await p.flows.sweep(later)
        for job in (child, waiter):
            doc = await coll.find_one({"_id": ObjectId(job.id)})
            assert doc is not None and doc.get("expires_at") and "expiry_pending" not in doc
        assert (await p.storage.jobs.get(ObjectId(bad.id)) or {}).get("expires_at")
        killed = await p.storage.jobs.get(ObjectId(pending.id)) or {}
        assert killed.get("dependents_settled") and killed.get("expires_at"), killed
        await p.retry_job(bad.id)  # it fails again: its dependents were settled long ago
        await wait_status(p, bad.id, S.ERRORED)
        await p.flows.sweep(dt.datetime.now(dt.UTC) + AFTER_MARKS)
        again = await p.storage.jobs.get(ObjectId(bad.id)) or {}
        assert again.get("expires_at") and "expires_after_settle" not in again


async def test_a_hooked_dependency_keeps_its_expiry_back_until_its_dependents_counted_it(
    db: Any,
) -> None:
    """The expiry of a job with an on_job_exited hook is written by the hook's record: for a
    job with dependents not yet seen settled, it is held back too (a crash between its final
    write and settling them must not let it expire first)."""
    hooks.clear()
    p = await make(db, JOBS, keep_finished=dt.timedelta(hours=1))
    part_job = await p.schedule_job("part", {"n": 4})
    first = await p.schedule_job("total", after=[part_job])
    second = await p.schedule_job("part", {"n": 5}, after=[first])
    async with p:
        await wait_status(p, second.id, S.FINISHED)
        await wait_for_hook(("total", "finished"))
        for _ in range(100):  # the hook's record is written after the hook returns
            held = await p.storage.jobs.get(ObjectId(first.id)) or {}
            if held.get("exit_hook") == "done":
                break
            await asyncio.sleep(0.05)
    assert held.get("expires_after_settle") and not held.get("expires_at"), held
    await p.flows.sweep(dt.datetime.now(dt.UTC) + AFTER_MARKS)
    settled = await p.storage.jobs.get(ObjectId(first.id)) or {}
    assert settled.get("expires_at") and "expires_after_settle" not in settled


async def test_a_parent_counted_but_not_released_is_released_by_the_sweep(db: Any) -> None:
    """The process that ended the child counted it for the parent, then died (or lost MongoDB)
    before the release, the second update: the sweep releases the parent before the child
    leaves its query. One left so by an older version, its child already seen settled, is
    released by the slow pass over waiting jobs."""
    p = await make(db, JOBS)
    coll = p.storage.jobs.coll
    now = dt.datetime.now(dt.UTC)
    parents = []
    for _ in range(2):
        child = await p.schedule_job("part", {"n": 3})
        parent = await p.schedule_job("total", after=[child])
        parents.append(parent)
        await coll.update_one(  # the child's final write, and the count, with no release
            {"_id": ObjectId(child.id)},
            {"$set": {"status": "finished", "ended_at": now}, "$unset": {"claim_name": ""}},
        )
        for query, update in F.dependency_ended(ObjectId(child.id), "finished", now):
            await coll.update_many(query, update)
        assert (await p.get_job(parent.id)).status == S.WAITING
    await p.storage.jobs.mark_settled([ObjectId(parents[1].after[0])], FAR)  # an older sweep's
    later = now + AFTER_MARKS
    assert await p.flows.sweep(later) == 2  # the first sweep also makes the slow pass
    assert [(await p.get_job(x.id)).status for x in parents] == [S.PENDING, S.PENDING]
    assert await p.storage.jobs.flow_attention() == ([], [])


async def test_the_slow_pass_leaves_a_dependency_that_just_ended_to_its_own_process(
    db: Any,
) -> None:
    """The slow pass over waiting jobs settles dependencies that ended unnoticed or were
    deleted; one that ended a moment ago is being settled by the process that ended it (no
    `dependents_settled_late` warning for a healthy flow), and is settled once the grace is past."""
    p = await make(db, JOBS)
    coll = p.storage.jobs.coll
    now = dt.datetime.now(dt.UTC)
    child = await p.schedule_job("part", {"n": 3})
    parent = await p.schedule_job("total", after=[child])
    await coll.update_one(  # the child's final write, its dependents not counted yet
        {"_id": ObjectId(child.id)},
        {"$set": {"status": "finished", "ended_at": now}, "$unset": {"claim_name": ""}},
    )
    await p.storage.jobs.mark_settled([ObjectId(child.id)], FAR)  # out of the sweep's query
    assert await p.flows.sweep(now + dt.timedelta(seconds=1)) == 0  # the first makes the pass
    assert (await p.get_job(parent.id)).status == S.WAITING
    p.flows._sweeps = 0  # the next sweep makes the slow pass again, the grace past
    assert await p.flows.sweep(now + dt.timedelta(seconds=10)) == 1
    assert (await p.get_job(parent.id)).status == S.PENDING


async def test_a_sweep_leaves_a_job_being_scheduled_to_its_own_registration(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A job scheduled after a dependency that ended long ago is inserted waiting, marks it
    (which puts it back in the sweep's query), then reads its status and settles itself. A
    sweep (or the slow pass) that read it in between settled it too, harmlessly but warning
    `dependents_settled_late` for a healthy flow (seen in a chaos run: jobs scheduled
    after old parts). A waiting job younger than the grace is left to its registration (a
    process that died before it is the slow pass's, once the grace is past)."""
    p = await make(db, JOBS, logger=logging.getLogger("tests.young_dependent"))
    caplog.set_level(logging.WARNING, logger="tests.young_dependent")
    coll = p.storage.jobs.coll
    now = dt.datetime.now(dt.UTC)
    child = await p.schedule_job("part", {"n": 3})
    dep = ObjectId(child.id)
    await p.schedule_job("total", after=[child])
    await coll.update_one(  # it ended a minute ago; its dependents counted it, a sweep saw it
        {"_id": dep},
        {
            "$set": {"status": "finished", "ended_at": now - dt.timedelta(minutes=1)},
            "$unset": {"claim_name": ""},
        },
    )
    await p.storage.jobs.settle_dependents(dep, "finished", now)
    await p.storage.jobs.mark_settled([dep], FAR)
    # a job scheduled after it now: inserted, its dependency marked, its status not read yet
    doc = D.new_job("total", {}, now=now) | F.waiting_fields([dep], "skip")
    await p.storage.jobs.insert(doc)
    await p.storage.jobs.mark_dependents([dep], now)

    assert await p.flows.sweep(now + dt.timedelta(seconds=1)) == 0  # the first: the slow pass too
    assert (await p.get_job(str(doc["_id"]))).status == S.WAITING
    assert "dependents_settled_late" not in caplog.text
    unsettled, _ = await p.storage.jobs.flow_attention()
    assert dep in [d["_id"] for d in unsettled]  # not marked settled: still in the query
    assert await p.flows.register([dep]) == 1  # its registration goes on: 1 had ended
    assert (await p.get_job(str(doc["_id"]))).status == S.PENDING
    later = now + dt.timedelta(seconds=10)  # had it died before: the slow pass, past the grace
    doc2 = D.new_job("total", {}, now=now) | F.waiting_fields([dep], "skip")
    await p.storage.jobs.insert(doc2)
    p.flows._sweeps = 0
    assert await p.flows.sweep(later) == 1
    assert (await p.get_job(str(doc2["_id"]))).status == S.PENDING


async def job_pages(p: Any, *job_ids: str) -> list[str]:
    """The dashboard's page of each job, as a browser gets it."""
    import httpx2 as httpx

    from job_processor.dashboard import create_dashboard

    app = create_dashboard(p, auth=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        return [(await c.get(f"/jobs/{job_id}")).text for job_id in job_ids]


async def test_a_sweep_over_ended_dependencies_is_one_query_and_three_commands(
    mongo_url: str, db: Any
) -> None:
    """flows.md: the sweep finds the ended jobs with dependents no sweep has seen settled (one
    query), reads the waiting jobs that name them, releases those that counted everything
    (one update) and marks them settled, giving back the expiry they held (one update per
    case: here all were marked by the jobs scheduled after them and hold one): three commands
    after its query, for 30 dependencies as for one, whatever else waits (520 jobs wait on a
    job not ended)."""
    commands = CommandNames()
    names = commands.names
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[commands]
    )
    try:
        p = await make(client[db.name], JOBS)
        far = await p.schedule_job("part", {"n": 0}, delay=3600)
        await p.schedule_jobs([JobSpec("total", {}, after=[far]) for _ in range(520)])
        kids = await p.schedule_jobs([JobSpec("part", {"n": n}) for n in range(30)])
        waiting = await p.schedule_jobs([JobSpec("total", {}, after=[k, far]) for k in kids])
        async with p:
            for kid in kids:
                await wait_status(p, kid.id, S.FINISHED)
        assert (await p.get_job(waiting[0].id)).waiting_on == 1  # counted, still waiting
        p.flows._sweeps = 1  # not a slow pass's turn
        names.clear()
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)  # past their grace
        assert await p.flows.sweep(later) == 0
        assert names == ["find", "find", "update", "update"]
        assert await p.storage.jobs.flow_attention() == ([], [])  # seen settled: left out
    finally:
        await client.close()


async def test_deleting_a_dependency_is_refused_until_its_dependents_counted_it(db: Any) -> None:
    """flows.md, admin paths: "delete a child: refused while jobs waiting on it have not counted
    its end; after that, allowed" (here its end went unnoticed until a sweep settled it)."""
    p = await make(db, JOBS)
    admin = await Admin.open(db, clock=p.clock)
    child = await p.schedule_job("part", {"n": 3})
    parent = await p.schedule_job(
        "total", after=[child, await p.schedule_job("part", {"n": 4}, delay=3600)]
    )
    await p.storage.jobs.coll.update_one(  # its end written behind the processor's back
        {"_id": ObjectId(child.id)},
        {"$set": {"status": "finished", "output": {"result": 3}}, "$unset": {"claim_name": ""}},
    )
    refused = await admin.delete([child.id])
    assert refused.changed == []
    assert refused.skipped[child.id].startswith("jobs scheduled after it are not yet seen")
    assert (await p.get_job(child.id)).status == S.FINISHED  # still there
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    p.flows._sweeps = 1  # not a slow pass's turn
    await p.flows.sweep(later)
    assert (await p.get_job(parent.id)).deps[child.id] == "finished"  # counted now
    assert (await admin.delete([child.id])).changed == [child.id]
    assert (await p.get_job(parent.id)).deps[child.id] == "finished"  # its recorded status


@pytest.mark.parametrize("scheduled", ["before_the_claim", "while_claimed"])
async def test_a_cron_task_claimed_too_late_releases_its_dependents_at_once(
    db: Any, monkeypatch: pytest.MonkeyPatch, scheduled: str
) -> None:
    """A cron task a worker claims after its check-in margin ends `skipped` ("missed") without
    running; the jobs waiting on it are released right after that write, as after any end,
    not at a later sweep (worker_timeout 60 s here: the next sweep is 30 s away). One scheduled
    by another process between that claim and that write marks the task first: the write does
    not apply over the mark, is made again knowing it, and holds the task's expiry back."""
    ran: list[str] = []

    async def total(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)

    async def tick(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("a late cron task never runs")

    jobs = {"total": JobDef(handler=total)}
    crons = {"tick": {"cron_string": "0 0 1 1 *", "handler": tick, "checkin_margin": 1}}
    p = await init_job_processor(
        db, jobs=jobs, crons=crons, poll_interval=0.2, heartbeat_interval=0.5,
        worker_timeout=60.0, keep_finished=dt.timedelta(hours=1),
    )  # fmt: skip
    producer = await init_job_processor(db, jobs=jobs)  # another process, not started
    slot = p.clock.now() - dt.timedelta(minutes=10)
    task = D.cron_task(
        "tick", slot=slot, now=slot, margin=dt.timedelta(minutes=1), tag=None,
        exclusive=False, max_attempts=1, resumable=False,
    )  # fmt: skip
    task["attempt"] = 1  # claimed once before, never started: only a claim can skip it
    await p.storage.jobs.insert(task)
    waiting: list[Job] = []

    async def schedule() -> None:
        after = [task["_id"]]
        waiting.append(
            await producer.schedule_job("total", after=after, on_dependency_failure="run")
        )

    if scheduled == "before_the_claim":
        await schedule()
    else:
        end_run = p.storage.jobs.end_run

        async def scheduled_meanwhile(claimed: dict[str, Any], *args: Any, **kw: Any) -> Any:
            if claimed["_id"] == task["_id"] and not waiting:  # claimed (running), not ended
                await schedule()
            return await end_run(claimed, *args, **kw)

        monkeypatch.setattr(p.storage.jobs, "end_run", scheduled_meanwhile)
    async with p:
        await wait_status(p, str(task["_id"]), S.SKIPPED, timeout=10)
        assert waiting and waiting[0].status == S.WAITING
        if scheduled == "while_claimed":
            skipped = await p.storage.jobs.get(task["_id"]) or {}
            assert skipped.get("expires_after_settle") and "expires_at" not in skipped, skipped
        done = await wait_status(p, waiting[0].id, S.FINISHED, timeout=10)
    assert ran == [done.id]


async def test_an_outage_reading_back_released_jobs_does_not_fail_the_written_jobs(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Registered, and released at once (their dependency had ended), the jobs are read back
    to return them as they are now; an outage past the budget on that read returns them as
    written (`released_jobs_not_read`): the call does not fail, which would invite a retry
    that writes them twice."""
    from job_processor.core.errors import DatabaseUnreachableError

    logger = logging.getLogger("test.flows.reread")
    p = await make(db, JOBS, logger=logger)
    finished = await p.run_job("part", {"n": 4})

    async def unreachable(ids: list[ObjectId]) -> list[Any]:
        raise DatabaseUnreachableError("cannot reach MongoDB (test)")

    p.storage.jobs.get_many = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="test.flows.reread"):
        parent = await p.schedule_job("total", after=[finished])
        (batch_parent,) = await p.schedule_jobs([JobSpec("total", after=[finished])])
    said = [r for r in caplog.records if r.__dict__.get("event") == "released_jobs_not_read"]
    assert len(said) == 2
    assert parent.status == batch_parent.status == S.WAITING  # as written
    for job in (parent, batch_parent):  # released all the same
        stored = await p.storage.jobs.coll.find_one({"_id": ObjectId(job.id)})
        assert stored is not None and stored["status"] == "pending"


async def test_a_purge_never_deletes_a_dependency_a_waiting_job_has_not_counted(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished long ago; B is scheduled after it while registering meets an outage (the
    call returns B; a sweep settles A later). A purge of finished jobs before that sweep
    leaves A (as `delete` refuses it): B then runs, it is not skipped for a dependency
    "deleted" (the purge used to take A)."""
    from job_processor.core.errors import DatabaseUnreachableError

    p = await make(db, JOBS)
    ended = await p.run_job("part", {"n": 4})

    async def unreachable(deps: list[ObjectId], waiting: Any = None) -> int:
        raise DatabaseUnreachableError("cannot reach MongoDB (test)")

    monkeypatch.setattr(p.flows, "register", unreachable)
    waiting = await p.schedule_job("total", after=[ended])
    monkeypatch.undo()
    assert waiting.status == S.WAITING
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    admin = await Admin.open(db, clock=FakeClock(later), actor="ops")
    purged = await admin.purge(status="finished", older_than="7d")
    assert purged.count == 0
    coll = p.storage.jobs.coll
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)  # past the sweep's grace
    await coll.update_one({"_id": ObjectId(waiting.id)}, {"$set": {"created_at": long_ago}})
    await coll.update_one({"_id": ObjectId(ended.id)}, {"$set": {"ended_at": long_ago}})
    async with p:
        done = await wait_status(p, waiting.id, S.FINISHED, S.SKIPPED, timeout=20)
    assert done.status == S.FINISHED
    purged = await admin.purge(status="finished", older_than="7d")  # now counted: taken
    assert purged.count >= 1


@pytest.mark.parametrize("bad", [0, False, ""])
async def test_a_batch_item_whose_after_is_not_a_list_is_refused_even_when_falsy(
    db: Any, bad: Any
) -> None:
    """`JobSpec("total", after=0)` (item 0 without its brackets) was written with no
    dependency at all, and ran at once: `after=1` and schedule_job(after=0) were refused."""
    p = await make(db, JOBS)
    with pytest.raises(InvalidArgumentError, match="after must be a list"):
        await p.schedule_jobs([JobSpec("part", {"n": 1}), JobSpec("total", after=1)])
    with pytest.raises(InvalidArgumentError, match="after must be a list"):
        await p.schedule_job("total", after=bad)
    with pytest.raises(InvalidArgumentError, match=r"item 1: .*after must be a list"):
        await p.schedule_jobs([JobSpec("part", {"n": 1}), JobSpec("total", after=bad)])
    assert await p.list_jobs() == []  # nothing written


async def test_a_skipped_job_marked_by_a_job_being_scheduled_keeps_its_expiry_back(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flows.md, retention: a job scheduled after one that has already ended marks it, and
    "the mark holds its expiry back ... nor the expiry removes it between that check and the
    job's write". A job skipped by a failed dependency gets its expiry from the next sweep,
    which wrote `expires_at` straight over such a fresh mark."""
    keep = dt.timedelta(seconds=1)
    p = await make(db, JOBS, keep_finished=keep, keep_failed=keep)
    coll = p.storage.jobs.coll
    bad = await p.schedule_job("part", {"n": 1, "fail": True})
    skipped = await p.schedule_job("total", after=[bad])
    async with p:
        await wait_status(p, skipped.id, S.SKIPPED)
    check_exist = p.flows.check_exist

    async def a_sweep_meanwhile(ids: list[ObjectId], name: str) -> None:
        await check_exist(ids, name)  # it exists: checked, the job not written yet
        await p.flows.sweep(dt.datetime.now(dt.UTC))  # a worker's sweep, within MARK_GRACE
        doc = await coll.find_one({"_id": ObjectId(skipped.id)}) or {}
        assert "expires_at" not in doc, f"expiry written over a fresh mark: {doc['expires_at']}"
        assert "expires_after_settle" in doc, doc  # held back, given back once counted

    monkeypatch.setattr(p.flows, "check_exist", a_sweep_meanwhile)
    late = await p.schedule_job("total", after=[skipped], on_dependency_failure="run")
    assert late.deps[skipped.id] == "skipped"


async def test_a_missed_cron_task_with_a_dependent_keeps_its_expiry_back(db: Any) -> None:
    """flows.md, retention: "a job with dependents is kept until they have all counted it".
    A cron task skipped "missed" by the one update over many jobs got `expires_at` straight;
    removed before a sweep counted it, its dependent waited for the slow pass and read it as
    deleted."""

    async def tick(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"tick": {"cron_string": "0 0 1 1 *", "handler": tick, "checkin_margin": 1}}
    p = await init_job_processor(db, jobs=JOBS, crons=crons, keep_finished=dt.timedelta(seconds=1))
    now = p.clock.now()
    slot = now - dt.timedelta(minutes=10)
    task = D.cron_task(
        "tick",
        slot=slot,
        now=slot,
        margin=dt.timedelta(minutes=1),
        tag=None,
        exclusive=False,
        max_attempts=1,
        resumable=False,
    )
    await p.storage.jobs.insert(task)
    waiting = await p.schedule_job("total", after=[task["_id"]], on_dependency_failure="run")
    assert waiting.status == S.WAITING
    expiry = now + dt.timedelta(seconds=1)
    assert await p.storage.jobs.expire_missed_by_name(now, {"tick": expiry}) == {"tick": 1}
    doc = await p.storage.jobs.coll.find_one({"_id": task["_id"]})
    assert doc is not None and doc["status"] == "skipped"
    assert "expires_at" not in doc and doc.get("expires_after_settle") is not None, doc
    p.flows._sweeps = 1  # the sweep that follows (not the slow pass, every 5 minutes)
    await p.flows.sweep(dt.datetime.now(dt.UTC) + AFTER_MARKS)
    after = await p.get_job(waiting.id)
    assert after.deps[str(task["_id"])] == "skipped" and after.status == S.PENDING, after.deps
    settled = await p.storage.jobs.coll.find_one({"_id": task["_id"]})
    assert settled is not None and settled.get("expires_at") is not None  # given back


async def test_a_job_skipped_by_a_failure_counts_no_other_end_and_says_so(
    db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """flows.md: a job skipped by a failed dependency counts no other end: the other entry of
    its `deps` stays "waiting" after that job has finished, and `jobs show` says "not
    counted" there (it said "not ended", of a job that had); get_jobs(job.after) reads it."""
    from job_processor.cli.jobs import show_job

    p = await make(db, JOBS, concurrency=4)
    later = await p.schedule_job("part", {"n": 1}, delay=1)
    bad = await p.schedule_job("part", {"n": 2, "fail": True})
    parent = await p.schedule_job("total", after=[later, bad])
    async with p:
        await wait_status(p, parent.id, S.SKIPPED)
        await wait_status(p, later.id, S.FINISHED)
    ended = await p.get_job(parent.id)
    assert ended.deps == {later.id: "waiting", bad.id: "errored"}
    assert [j.status for j in await p.get_jobs(ended.after)] == [S.FINISHED, S.ERRORED]
    show_job(ended)
    shown = capsys.readouterr().out
    assert f"{later.id} (not counted)" in shown and "not ended" not in shown


async def test_many_long_runs_elsewhere_do_not_starve_the_flows_sweep(db: Any) -> None:
    """1,000 jobs running longer than worker_timeout on a live worker filled the recovery
    sweep's one query every sweep, and only the running jobs and owed hooks were read again:
    an ended dependency whose dependents had all counted it was never seen settled, its
    expiry held for ever."""
    keep = dt.timedelta(hours=1)
    p = await make(db, JOBS, keep_finished=keep, keep_failed=keep)
    coll = p.storage.jobs.coll
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    await db[f"{p.storage.prefix}workers"].insert_one(
        {"_id": "busy-worker", "last_seen": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)}
    )
    await coll.insert_many(
        [
            {
                "name": "part",
                "status": "running",
                "worker_id": "busy-worker",
                "run_id": f"run-{i}",
                "run_started_at": long_ago,
                "payload": {"n": i},
                "attempt": 1,
            }
            for i in range(1000)
        ]
    )
    child, parent = await p.schedule_jobs([JobSpec("part", {"n": 1}), JobSpec("total", after=[0])])
    async with p:
        await wait_status(p, parent.id, S.FINISHED)
        # the child's end and its mark as if long ago: past GRACE and MARK_GRACE
        await coll.update_one(
            {"_id": ObjectId(child.id)},
            {"$set": {"ended_at": long_ago, "marked_ms": D.epoch_ms(long_ago)}},
        )
        deadline = asyncio.get_running_loop().time() + 10  # sweeps run every second here
        while True:
            doc = await coll.find_one({"_id": ObjectId(child.id)})
            assert doc is not None
            if doc.get("dependents_settled"):
                break
            assert asyncio.get_running_loop().time() < deadline, doc.get("expires_after_settle")
            await asyncio.sleep(0.2)
    assert doc.get("expires_at") and "expires_after_settle" not in doc


async def nightly(job: Job, signal: AbortSignal) -> None:
    return None


NIGHTLY = {"nightly": {"cron_string": "0 3 * * *", "handler": nightly}}


async def prune_with(new: JobProcessor, meanwhile: Any) -> None:
    """`new.prune_crons()` (it removes "nightly"), `meanwhile()` run just before its delete of
    the pending tasks: what another process may do at that moment."""
    store = new.storage.jobs
    real = store.coll
    store.coll = Interposed(real, "delete_many", meanwhile)
    try:
        assert await new.prune_crons() == ["nightly"]
    finally:
        store.coll = real


async def test_pruning_a_cron_settles_the_jobs_waiting_on_its_pending_task(db: Any) -> None:
    """prune_crons (and `crons remove`) deleted a removed cron's pending tasks, leaving a job
    scheduled after one of them waiting on a job that no longer exists until the slow pass
    (every 20 sweeps, 200 waiting jobs a pass) found it "deleted"."""
    old = await make(db, JOBS, crons=NIGHTLY)
    task = await old.trigger_cron("nightly")  # pending: no worker has run it yet
    parent = await old.schedule_job("total", after=[task])
    assert parent.status == S.WAITING
    new = await make(db, JOBS)  # the deploy that no longer defines "nightly"
    assert await new.prune_crons() == ["nightly"]
    assert await new.get_jobs([task.id]) == []  # the task is gone
    now = await new.get_job(parent.id)
    assert (now.status, now.deps) == (S.SKIPPED, {task.id: "deleted"})


async def test_a_cron_task_claimed_as_its_cron_is_pruned_does_not_fail_its_dependents(
    db: Any,
) -> None:
    """A task a worker claimed between the read of the pending tasks and their delete is not
    deleted and runs: its dependents were skipped for a dependency "deleted"."""
    old = await make(db, JOBS, crons=NIGHTLY)
    task = await old.trigger_cron("nightly")  # pending
    parent = await old.schedule_job("total", after=[task])
    new = await make(db, JOBS)  # the deploy that no longer defines "nightly"

    async def claimed() -> None:  # by a worker of the old deploy
        running = {"status": "running", "worker_id": "old-worker", "run_id": "run-claimed"}
        await new.storage.jobs.coll.update_one(
            {"_id": ObjectId(task.id), "status": "pending"},
            {"$set": running | {"run_started_at": dt.datetime.now(dt.UTC)}},
        )

    await prune_with(new, claimed)
    assert (await new.get_job(task.id)).status == S.RUNNING  # claimed: not deleted, it runs
    now = await new.get_job(parent.id)
    assert (now.status, now.deps) == (S.WAITING, {task.id: "waiting"}), now.deps


async def test_a_job_scheduled_after_a_cron_task_as_it_is_pruned_sees_it_deleted(
    db: Any,
) -> None:
    """Only the tasks already marked were settled: a job scheduled after one between that read
    and the delete was left waiting on a job that no longer exists until the slow pass."""
    old = await make(db, JOBS, crons=NIGHTLY)
    task = await old.trigger_cron("nightly")  # pending, no dependents yet
    new = await make(db, JOBS)  # the deploy that no longer defines "nightly"
    late: list[Any] = []

    async def scheduled() -> None:  # reads it pending
        late.append(await old.schedule_job("total", after=[task]))

    await prune_with(new, scheduled)
    assert late and late[0].status == S.WAITING
    now = await new.get_job(late[0].id)
    assert (now.status, now.deps) == (S.SKIPPED, {task.id: "deleted"}), now.deps


async def test_a_job_after_a_cron_task_created_as_its_cron_is_pruned_sees_it_deleted(
    db: Any,
) -> None:
    """A replica still firing the cron inserted a task after the prune's read, a job was
    scheduled after it, and the prune's delete removed it too: only the tasks read were
    settled, so that job waited on a task that no longer exists until the slow pass."""
    old = await make(db, JOBS, crons=NIGHTLY)
    await old.trigger_cron("nightly")  # pending: the prune reads this one
    new = await make(db, JOBS)  # the deploy that no longer defines "nightly"
    late: list[Any] = []

    async def fired() -> None:  # by the old replica, meanwhile
        task = await old.trigger_cron("nightly")
        late.append((task, await old.schedule_job("total", after=[task])))

    await prune_with(new, fired)
    task, parent = late[0]
    assert await new.get_jobs([task.id]) == []  # deleted by the prune
    now = await new.get_job(parent.id)
    assert (now.status, now.deps) == (S.SKIPPED, {task.id: "deleted"}), (now.status, now.deps)


async def test_a_duplicate_of_a_waiting_job_counts_a_finished_dependency_retention_took(
    db: Any,
) -> None:
    """flows.md: "a finished dependency never reads as deleted to a job waiting on it" and a
    duplicate of a waiting job "waits for the same dependencies (those that have ended count
    at once)". Once the original's finished children are seen settled, count retention may
    delete one: the copy was skipped for a dependency "deleted" that had finished."""
    jobs = {"part": JobDef(handler=part, keep_finished=1), "total": JobDef(handler=total)}
    p = await make(db, jobs, concurrency=4)
    admin = await Admin.open(db, clock=p.clock)
    a, b = JobSpec("part", {"n": 1}), JobSpec("part", {"n": 2})
    blocker = JobSpec("part", {"n": 3, "block": True})
    flow = await p.schedule_jobs([a, b, blocker, JobSpec("total", after=[a, b, blocker])])
    parent = flow[-1]
    async with p:
        await wait_status(p, flow[0].id, S.FINISHED)
        await wait_status(p, flow[1].id, S.FINISHED)
        await wait_status(p, flow[2].id, S.RUNNING)
        later = p.clock.now() + dt.timedelta(minutes=10)
        await p.flows.sweep(later)  # the parent counted a and b: seen settled
        assert await p.trimmer.run(later) == 1  # keep_finished=1 takes the older child, a
        original = await p.get_job(parent.id)
        assert original.status == S.WAITING and original.deps[flow[0].id] == "finished"
        copy = (await admin.duplicate(parent.id)).jobs[-1]
        assert copy.status == S.WAITING, (copy.status, copy.deps)
        assert copy.deps[flow[0].id] == "finished" and copy.waiting_on == 1
        await p.kill_job(flow[2].id)  # the blocker: both are skipped by it now
        await wait_status(p, copy.id, S.SKIPPED)
    assert (await p.get_job(copy.id)).failed_dependency == flow[2].id


async def test_a_duplicate_whose_dependencies_all_finished_is_released_at_once(db: Any) -> None:
    """Every dependency counted by the original (finished): the copy waits on nothing and
    runs, though retention deleted one of them."""
    jobs = {"part": JobDef(handler=part, keep_finished=1), "total": JobDef(handler=total)}
    p = await make(db, jobs, concurrency=4)
    admin = await Admin.open(db, clock=p.clock)
    a, b = JobSpec("part", {"n": 1}), JobSpec("part", {"n": 2})
    flow = await p.schedule_jobs([a, b, JobSpec("total", after=[a, b])])
    await admin.pause("total")
    async with p:
        await wait_status(p, flow[2].id, S.PENDING)  # released, held by the pause
        copy_id = (await admin.duplicate(flow[2].id)).jobs[-1].id
        await admin.resume("total")
        await wait_status(p, copy_id, S.FINISHED)
    assert (await p.get_job(copy_id)).result == {"sum": 3, "statuses": ["finished", "finished"]}
