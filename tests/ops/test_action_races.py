"""A check then a write, racing a producer or a starting worker: each write restates its check
in its own filter (a compare-and-set), so no interleaving gives what no serial order gives.

- an operator's delete, a purge and the count retention of a finished job while a job is being
  scheduled after it: the dependency is kept (the dependent runs), never read as deleted;
- `names forget` while a worker that defines the name starts: its fresh registration stays.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobNotFoundError, JobStatus
from job_processor.ops.admin import Admin
from job_processor.testing import run_until_idle
from tests.helpers import make

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def ok(job: Job, signal: AbortSignal) -> str:
    return "done"


async def test_delete_racing_a_schedule_after_skips_the_dependent(db: Any) -> None:
    processor = await make(
        db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=FakeClock(NOW)
    )
    x = await processor.schedule_job("a", {})
    await run_until_idle(processor)
    assert (await processor.get_job(x.id)).status == S.FINISHED

    admin = await Admin.open(db, clock=processor.clock)
    jobs = admin.storage.jobs
    original_check = jobs.has_waiting_dependents
    scheduled: list[Job] = []

    # the producer's mark and insert land between the admin's check and its delete
    inner_register = processor.flows.register
    held: list[Any] = []

    async def register_later(after: list[Any], waiting: Any = None) -> int:
        held.append((after, waiting))  # the producer's registration runs after the delete
        return 0

    async def check_then_schedule(oid: Any) -> bool:
        answer = await original_check(oid)  # nothing waits on it yet: False
        processor.flows.register = register_later  # type: ignore[method-assign]
        scheduled.append(await processor.schedule_job("b", {}, after=[x.id]))
        return answer

    jobs.has_waiting_dependents = check_then_schedule  # type: ignore[method-assign]
    result = await admin.delete([x.id], actor="ops")
    processor.flows.register = inner_register  # type: ignore[method-assign]
    for after, waiting in held:  # the producer's registration, now
        await inner_register(after, waiting)

    dependent = await processor.get_job(scheduled[0].id)
    # the dependency FINISHED: its dependent must run, not be skipped as if it had failed.
    # (Either the delete is refused, as a purge refuses it, or the dependent is released.)
    assert dependent.status != S.SKIPPED, (result.changed, result.skipped, dependent.skip_reason)
    assert result.changed == [] and "not yet seen to have counted its end" in result.skipped[x.id]
    await run_until_idle(processor)
    assert (await processor.get_job(dependent.id)).status == S.FINISHED


async def test_purge_or_expiry_between_the_existence_check_and_the_mark(db: Any) -> None:
    """schedule_job(after=[x]) checks that x exists and marks it as having dependents: a purge
    between the two (and, the same window, x's expiry) used to delete x, schedule_job still
    succeeded and the job was skipped as if x had failed. Whichever step comes second, a purge
    made just before it either keeps x (the job runs) or makes schedule_job raise."""
    clock = FakeClock(NOW)
    processor = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=clock)
    x = await processor.schedule_job("a", {})
    await run_until_idle(processor)
    clock.advance(2 * 86400)
    admin = await Admin.open(db, clock=clock)
    flows = processor.flows
    mark, check = flows.mark, flows.check_exist
    steps: list[str] = []

    async def purge_if_second(step: str) -> None:
        steps.append(step)
        if len(steps) == 2:
            await admin.purge(status="finished", older_than="1d", actor="cron")

    async def marking(after: list[Any]) -> None:
        await purge_if_second("mark")
        await mark(after)

    async def checking(ids: list[Any], name: str) -> None:
        await purge_if_second("check")
        await check(ids, name)

    flows.mark, flows.check_exist = marking, checking  # type: ignore[method-assign]
    d = await processor.schedule_job("b", {}, after=[x.id])  # succeeds: x was kept
    flows.mark, flows.check_exist = mark, check  # type: ignore[method-assign]
    assert steps == ["mark", "check"]
    assert (await processor.get_job(x.id)).status == S.FINISHED
    stored = await processor.storage.jobs.coll.find_one({"_id": ObjectId(x.id)})
    # its expiry is held back until its dependents are seen settled, as a final write does
    assert "expires_at" not in stored and stored["expires_after_settle"]
    await run_until_idle(processor)
    assert (await processor.get_job(d.id)).status == S.FINISHED
    await processor.flows.sweep(clock.now())  # within a minute of the mark: x stays held
    stored = await processor.storage.jobs.coll.find_one({"_id": ObjectId(x.id)})
    assert "expires_at" not in stored
    clock.advance(61)  # a sweep a minute after the mark sees them settled: x expires again
    await processor.flows.sweep(clock.now())
    stored = await processor.storage.jobs.coll.find_one({"_id": ObjectId(x.id)})
    assert stored.get("expires_at") and stored.get("dependents_settled")


async def test_trim_between_its_read_and_its_delete(db: Any) -> None:
    clock = FakeClock(NOW)
    processor = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=clock)
    x = await processor.schedule_job("a", {})
    await run_until_idle(processor)
    jobs = processor.storage.jobs
    read = jobs.trim_cursor
    register = processor.flows.register
    held: list[Any] = []
    made: list[Job] = []

    async def register_later(after: list[Any], waiting: Any = None) -> int:
        held.append((after, waiting))  # the producer's registration comes after the delete
        return 0

    def cursor_then_schedule(query: Any, keep: int, batch: int) -> Any:
        cursor = read(query, keep, batch)

        async def docs() -> Any:
            async for d in cursor:
                yield d
            processor.flows.register = register_later  # type: ignore[method-assign]
            made.append(await processor.schedule_job("b", {}, after=[x.id]))

        return docs()

    jobs.trim_cursor = cursor_then_schedule  # type: ignore[method-assign]
    deleted, _ = await jobs.trim("a", [S.FINISHED], keep=0, batch=100)
    jobs.trim_cursor = read  # type: ignore[method-assign]
    processor.flows.register = register  # type: ignore[method-assign]
    for after, waiting in held:
        await register(after, waiting)

    d = await processor.get_job(made[0].id)
    assert d.status != S.SKIPPED, (deleted, d.skip_reason)
    assert deleted == 0 and (await processor.get_job(x.id)).status == S.FINISHED


async def test_forget_racing_a_worker_start_unregisters_a_served_name(db: Any) -> None:
    clock = FakeClock(NOW)
    old = await make(db, {"mail": JobDef(handler=ok)}, clock=clock)
    await old.heartbeat.register()  # an earlier worker registered "mail", then stopped
    await old.heartbeat.unregister()

    new = await make(db, {"mail": JobDef(handler=ok)}, clock=clock)
    admin = await Admin.open(db, clock=clock)
    workers_all = admin.storage.workers.all

    async def all_then_a_worker_starts() -> list[dict[str, Any]]:
        docs = await workers_all()  # no live worker serves "mail" yet
        await new.heartbeat.register()  # a worker defining "mail" starts right now
        return docs

    admin.storage.workers.all = all_then_a_worker_starts  # type: ignore[method-assign]
    result = await admin.forget("mail", actor="ops")
    admin.storage.workers.all = workers_all  # type: ignore[method-assign]

    live = [w for w in await admin.list_workers() if w.alive and "mail" in w.names]
    assert live, "the new worker is live and serves mail"
    registered = {d.name for d in await admin.list_definitions()}
    # the docs: forget is refused while a live worker serves the name; here it served it
    # when the delete ran, and the registration it had just written is gone for good
    assert "mail" in registered, (result.changed, result.skipped)
    assert result.changed == [] and "registered again meanwhile" in result.skipped["mail"]


async def test_then_another_apps_worker_errors_the_served_names_backlog(db: Any) -> None:
    clock = FakeClock(NOW)
    old = await make(db, {"mail": JobDef(handler=ok)}, clock=clock)
    await old.heartbeat.register()
    await old.heartbeat.unregister()
    new = await make(db, {"mail": JobDef(handler=ok)}, clock=clock)
    admin = await Admin.open(db, clock=clock)
    workers_all = admin.storage.workers.all

    async def all_then_a_worker_starts() -> list[dict[str, Any]]:
        docs = await workers_all()
        await new.heartbeat.register()
        return docs

    admin.storage.workers.all = all_then_a_worker_starts  # type: ignore[method-assign]
    await admin.forget("mail", actor="ops")
    admin.storage.workers.all = workers_all  # type: ignore[method-assign]

    job = await new.schedule_job("mail", {})  # a backlog the live "mail" worker has not reached
    clock.advance(2 * 3600)
    await new.storage.workers.beat(new.worker.worker_id, clock.now())  # its heartbeats go on
    assert [w for w in await admin.list_workers() if w.alive and "mail" in w.names]
    other = await make(db, {"report": JobDef(handler=ok)}, clock=clock)  # another app's worker
    await other.heartbeat.register()
    await other.recovery.error_unknown_names(clock.now())
    # a live worker serves "mail" (it is registered as serving it), yet its job is errored as
    # being of a name no worker defines
    assert (await new.get_job(job.id)).status == JobStatus.PENDING


async def test_a_sweep_between_the_check_and_the_insert_lets_a_delete_take_the_dependency(
    db: Any,
) -> None:
    clock = FakeClock(NOW)
    p = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=clock)
    x = await p.schedule_job("a", {})
    await run_until_idle(p)
    clock.advance(60)  # x ended a minute ago (past the sweep's 5 s grace)
    admin = await Admin.open(db, clock=clock)
    check = p.flows.check_exist
    seen: dict[str, Any] = {}

    async def check_then_sweep_and_delete(ids: list[Any], name: str) -> None:
        await check(ids, name)  # x exists (and was marked just before)
        await p.flows.sweep(clock.now())  # any worker's routine sweep, at this moment
        seen["delete"] = await admin.delete([x.id], actor="ops")

    p.flows.check_exist = check_then_sweep_and_delete  # type: ignore[method-assign]
    y = await p.schedule_job("b", {}, after=[x.id])
    p.flows.check_exist = check  # type: ignore[method-assign]
    # docs/flows.md: "none of them, nor the expiry, removes it between that check and the
    # job's write"
    assert seen["delete"].changed == [], "the operator's delete took the marked dependency"
    assert (await p.get_job(y.id)).status != S.SKIPPED


async def test_a_sweep_inside_the_two_step_mark_leaves_a_job_that_never_expires(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(NOW)
    p = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=clock)
    x = await p.schedule_job("a", {})
    await run_until_idle(p)
    clock.advance(60)
    coll = p.storage.jobs.coll
    before = await coll.find_one({"_id": ObjectId(x.id)})
    assert before.get("expires_at") is not None  # keep_finished applies to it
    real = coll.update_many
    busy = False

    async def sweep_after_the_first_step(query: Any, update: Any, *a: Any, **k: Any) -> Any:
        nonlocal busy
        res = await real(query, update, *a, **k)
        if not busy and update.get("$set") == {"has_dependents": True}:
            busy = True
            await p.flows.sweep(clock.now())  # a worker's sweep between the mark's two updates
            busy = False
        return res

    monkeypatch.setattr(coll, "update_many", sweep_after_the_first_step)
    with pytest.raises(JobNotFoundError):  # one of the ids is a typo: nothing is written
        await p.schedule_job("b", {}, after=[x.id, str(ObjectId())])
    monkeypatch.setattr(coll, "update_many", real)
    for minutes in (1, 2, 3):  # later sweeps: the expiry is never given back
        clock.advance(60 * minutes)
        await p.flows.sweep(clock.now())
    after = await coll.find_one({"_id": ObjectId(x.id)})
    assert after.get("expires_at") is not None, f"x kept for ever: {after}"


async def test_delete_racing_a_duplicate_of_a_dependent_skips_the_copy(db: Any) -> None:
    clock = FakeClock(NOW)
    p = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)}, clock=clock)
    x = await p.schedule_job("a", {})
    y = await p.schedule_job("b", {}, after=[x.id])
    await run_until_idle(p)
    assert (await p.get_job(y.id)).status == S.FINISHED
    clock.advance(60)
    await p.flows.sweep(clock.now())  # x's dependents are seen settled: x may be deleted
    deleter = await Admin.open(db, clock=clock)
    other = await Admin.open(db, clock=clock)  # another operator, duplicating y
    check = deleter.storage.jobs.has_waiting_dependents
    count = other.storage.jobs.count_ended_dependencies
    held: list[Any] = []
    made: list[Any] = []

    async def count_later(doc: Any, now: Any) -> Any:
        held.append((doc, now))  # the copy's registration runs after the delete
        return doc

    async def check_then_duplicate(oid: Any) -> bool:
        answer = await check(oid)  # nothing waits on x: False
        other.storage.jobs.count_ended_dependencies = count_later  # type: ignore[method-assign]
        made.append(await other.duplicate(y.id, actor="ops2"))
        return answer

    deleter.storage.jobs.has_waiting_dependents = check_then_duplicate  # type: ignore[method-assign]
    deleted = await deleter.delete([x.id], actor="ops")
    other.storage.jobs.count_ended_dependencies = count  # type: ignore[method-assign]
    for doc, now in held:
        await count(doc, now)
    copy_id = made[0].jobs[-1].id
    copy = await p.get_job(copy_id)
    # x FINISHED: the copy must run (the delete refused), not be skipped as if x had failed
    assert copy.status != S.SKIPPED, (deleted.changed, copy.skip_reason, copy.deps)


async def test_a_hook_record_after_the_mark_does_not_hold_the_expiry(db: Any) -> None:
    started, go = asyncio.Event(), asyncio.Event()

    async def hook(job: Job) -> None:
        started.set()
        await go.wait()

    workers = await make(db, {"a": JobDef(handler=ok, on_job_exited=hook), "b": JobDef(handler=ok)})
    producer = await make(db, {"a": JobDef(handler=ok), "b": JobDef(handler=ok)})
    coll = producer.storage.jobs.coll
    seen: dict[str, Any] = {}
    async with workers:
        x = await workers.schedule_job("a", {})
        await asyncio.wait_for(started.wait(), 10)  # x finished; its hook runs
        check = producer.flows.check_exist

        async def check_then_hook_ends(ids: list[Any], name: str) -> None:
            await check(ids, name)  # x marked, and checked
            go.set()  # the hook returns, and its record is written
            done = {"_id": ObjectId(x.id), "exit_hook": "done"}
            for _ in range(200):
                if await coll.find_one(done):
                    break
                await asyncio.sleep(0.05)
            seen["x"] = await coll.find_one({"_id": ObjectId(x.id)})

        producer.flows.check_exist = check_then_hook_ends  # type: ignore[method-assign]
        await producer.schedule_job("b", {}, after=[x.id])
        producer.flows.check_exist = check  # type: ignore[method-assign]
    doc = seen["x"]
    assert doc.get("exit_hook") == "done" and doc.get("has_dependents")
    # docs/flows.md: the mark holds the expiry back "the same way" until the sweep sees the
    # dependents settled, also "when the expiry is written by the job's on_job_exited record"
    assert "expires_at" not in doc, {k: doc.get(k) for k in ("expires_at", "expires_after_settle")}


async def test_retry_many_never_retries_a_job_that_changed_since_it_was_listed(db: Any) -> None:
    """A bulk retry of the killed jobs: another operator retries one of them between the
    listing and its turn, and it runs and errors. It is no longer the killed job the filter
    listed: skipped, saying so, not run a second time."""

    async def fails(job: Job, signal: AbortSignal) -> None:
        raise RuntimeError("boom")

    processor = await make(db, {"a": JobDef(handler=fails)}, clock=FakeClock(NOW))
    x = await processor.schedule_job("a", {}, delay=3600)
    admin = await Admin.open(db, clock=processor.clock)
    assert (await admin.kill([x.id], actor="ops")).changed == [x.id]
    original = admin.storage.jobs.retry
    raced = False

    async def retry_after_another_operator(oid: Any, *args: Any, **kw: Any) -> Any:
        nonlocal raced
        if not raced:  # between the listing (killed, never run) and this retry's write
            raced = True
            await processor.retry_job(str(oid))  # another operator
            await run_until_idle(processor)  # it runs, and errors
            assert (await processor.get_job(str(oid))).status == S.ERRORED
        return await original(oid, *args, **kw)

    admin.storage.jobs.retry = retry_after_another_operator  # type: ignore[method-assign]
    result = await admin.retry_many(name="a", status="killed", actor="ops")
    assert raced
    job = await processor.get_job(x.id)
    assert (result.changed, job.status, job.attempt) == ([], S.ERRORED, 1), result
    assert result.skipped[x.id].startswith("changed since it was listed (now errored, attempt 1)")
