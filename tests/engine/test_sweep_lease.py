"""A sweep during which its worker's lease runs out (a freeze, an outage in the middle of the
sweep: SIGSTOP then SIGCONT) recovers nothing more under the registration it is giving up."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core import documents as D
from tests.engine.test_recovery import plant_dead_worker_job
from tests.helpers import make

S = JobStatus


async def sweep_with(p: Any, store: Any, method: str, stand_in: Any) -> None:
    """One sweep of `p` (its hooks run to their end) with `store.method` replaced by
    `stand_in` (which calls the real one), put back after."""
    real = getattr(store, method)
    setattr(store, method, stand_in)
    try:
        await p.recovery.sweep(p.clock.now())
        await p.hooks.drain()
    finally:
        setattr(store, method, real)


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


async def test_a_sweep_whose_worker_gives_its_runs_up_midway_recovers_nothing_more(
    db: Any,
) -> None:
    """guide.md: a worker whose lease ran out sends no more writes and registers afresh; the
    sweep says it never runs while its worker may have been declared dead (it would record
    itself, under an id it is giving up, as the owner of what it recovers). A sweep that
    began trusted went on after its worker gave its runs up during one of its reads: it
    recovered a dead worker's job, and took over a dead worker's hook, under the id "" (the
    heartbeat empties it until it registers afresh), so every other worker's next sweep
    took that hook over again (its owner is no live worker) and called it a second time."""
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(str(job.id))

    p = await make(db, {"send": JobDef(handler=noop, on_job_exited=hook)})
    running = await plant_dead_worker_job(p, "send")
    past = p.clock.now() - dt.timedelta(seconds=60)
    ended_id = await plant_owed_hook(p, past)
    await p.heartbeat.register()
    me = p.worker.worker_id
    jobs = p.storage.jobs
    read = jobs.needing_attention

    async def gives_up_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = await read(*args, **kwargs)
        p.worker.worker_id = ""  # the heartbeat gave the runs up during the read
        return found

    await sweep_with(p, jobs, "needing_attention", gives_up_meanwhile)
    stored = await jobs.get(ObjectId(running))
    assert stored is not None and stored["status"] == "running"  # left to the next sweep
    hooked = await jobs.get(ended_id)
    assert hooked is not None and hooked["exit_hook_owner"] == "dead-worker", hooked
    assert calls == []
    p.worker.worker_id = me  # registered (again): the next sweep recovers both, under it
    try:
        await p.recovery.sweep(p.clock.now())
        await p.hooks.drain()
    finally:
        await p.heartbeat.unregister()
    stored = await jobs.get(ObjectId(running))
    assert stored is not None and stored["status"] == "errored"
    assert stored["exit_hook_owner"] == me and stored["exit_hook"] == "done"
    hooked = await jobs.get(ended_id)
    assert hooked is not None and (hooked["exit_hook"], hooked["exit_hook_owner"]) == ("done", me)
    assert sorted(calls) == sorted([running, str(ended_id)])


async def test_a_sweep_whose_worker_registers_afresh_midway_takes_no_hook_under_its_old_id(
    db: Any,
) -> None:
    """The test above, with the worker registered afresh while the sweep takes its hooks (an
    outage during the take of one, over once the heartbeat has given its runs up and
    registered again): trusted again, under a new id, the sweep took the next dead worker's
    hook under the id it read when it began taking them, whose document the heartbeat had
    removed, so every other worker's next sweep took that hook over again and called it a
    second time."""
    calls: list[str] = []

    async def hook(job: Job) -> None:
        calls.append(str(job.id))

    p = await make(db, {"send": JobDef(handler=noop, on_job_exited=hook)})
    past = p.clock.now() - dt.timedelta(seconds=60)
    owed = [await plant_owed_hook(p, past) for _ in range(2)]
    await p.heartbeat.register()
    old = p.worker.worker_id
    jobs = p.storage.jobs
    take = jobs.take_hook

    async def registers_afresh_meanwhile(*args: Any, **kwargs: Any) -> Any:
        taken = await take(*args, **kwargs)
        if p.worker.worker_id == old:  # as the heartbeat does: gives it up, registers again
            p.worker.worker_id = ""
            await p.storage.workers.unregister(old)
            await p.heartbeat.register()
        return taken

    await sweep_with(p, jobs, "take_hook", registers_afresh_meanwhile)
    new = p.worker.worker_id
    assert new not in ("", old) and p.heartbeat.trusted()
    stored = [await jobs.get(job_id) for job_id in owed]
    # the first, taken under the old id before it was given up: as any hook a dead worker
    # took (called here; another worker's sweep may call it again, guide.md)
    owners = {d["_id"]: d["exit_hook_owner"] for d in stored if d is not None}
    assert sorted(owners.values()) == sorted([old, "dead-worker"]), owners
    left = next(job_id for job_id, owner in owners.items() if owner == "dead-worker")
    try:
        await p.recovery.sweep(p.clock.now())  # under the new registration
        await p.hooks.drain()
    finally:
        await p.heartbeat.unregister()
    second = await jobs.get(left)
    assert second is not None and (second["exit_hook"], second["exit_hook_owner"]) == ("done", new)
    assert calls.count(str(left)) == 1, calls


async def plant_owed_hook(p: Any, past: dt.datetime) -> Any:
    """A job a dead worker finished at `past`, its exit hook owed (as it left it, mid-hook)."""
    ended = D.new_job("send", {}, now=past)
    ended |= {"status": "finished", "ended_at": past, "end_id": D.new_id()}
    ended |= D.hook_owed_fields(S.FINISHED, True, ended["end_id"], "dead-worker", past)
    ended.pop("claim_name")
    await p.storage.jobs.coll.insert_one(ended)
    return ended["_id"]
