"""A run's final write and the worker's lease: retried while the worker owns the run (a lease
renewed meanwhile lets it go on), and no try sent once the run is given up at the lease's
end (guide.md: "nothing more is sent for that run"). Outside reviews' findings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from job_processor import JobDef, JobStatus, init_job_processor
from job_processor.engine.worker import Worker
from job_processor.storage.jobs import JobStore
from job_processor.storage.workers import WorkerStore
from tests.helpers import final_write_updates, wait_for, wait_status


async def running_with_lease_below(processor: Any, hold: asyncio.Event, seconds: float) -> Any:
    """Schedule an "h" job; once it runs, `hold` the heartbeats until the worker's lease has
    less than `seconds` left."""
    job = await processor.schedule_job("h")
    await wait_status(processor, job.id, JobStatus.RUNNING, timeout=10)
    hold.set()
    await wait_for(lambda: processor.heartbeat.lease_left() <= seconds, timeout=10)
    return job


async def test_a_final_write_started_late_in_the_lease_rides_out_a_blip_once_the_lease_is_renewed(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A healthy worker whose heartbeat was slow (lease_left about 1 s) ends a run; its
    heartbeat then lands and the lease is renewed: a 1.5 s failover (well within
    worker_timeout) must not lose the outcome."""
    loop = asyncio.get_running_loop()
    hold, beats_ok, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()
    original_beat = WorkerStore.beat

    async def beat(self: Any, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            await beats_ok.wait()  # a slow heartbeat: answered once the test lets it
        return await original_beat(self, *args, **kwargs)

    monkeypatch.setattr(WorkerStore, "beat", beat)
    window: list[float] = []

    async def failover(coll: Any, *a: Any, **k: Any) -> Any:
        if not window:
            window.append(loop.time() + 1.5)  # writes fail for 1.5 s from the first
            beats_ok.set()  # and the slow heartbeat lands: the lease is renewed
        if loop.time() < window[0]:
            raise AutoReconnect("not primary (an election)")
        return await coll.update_one(*a, **k)

    final_write_updates(monkeypatch, failover)

    async def handler(job: Any, signal: Any) -> str:
        await finish.wait()
        return "done"

    processor = await init_job_processor(
        db,
        jobs={"h": JobDef(handler=handler)},
        poll_interval=0.2,
        heartbeat_interval=0.5,
        worker_timeout=4.0,
    )
    async with processor:
        job = await running_with_lease_below(processor, hold, 1.2)
        finish.set()
        deadline = loop.time() + 8
        while (after := await processor.get_job(job.id)).status == JobStatus.RUNNING:
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert processor.heartbeat.trusted(), "the worker gave its lease up"
    assert window, "the failover was not injected"
    assert after.status == JobStatus.FINISHED, f"outcome lost: {after.status} {after.error}"


async def test_no_final_write_is_sent_after_the_lease_ended_and_the_run_was_given_up(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A final write is retried; a dependent is scheduled meanwhile, so the write that lands
    matches nothing and is made again knowing it, after a read that fails past the lease's
    end: that re-write was sent after the lease watch gave the run up, and landed."""
    loop = asyncio.get_running_loop()
    hold, release, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()
    original_beat = WorkerStore.beat

    async def beat(self: Any, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            await release.wait()  # MongoDB does not answer this worker's heartbeat
        return await original_beat(self, *args, **kwargs)

    monkeypatch.setattr(WorkerStore, "beat", beat)
    abandoned_at: list[float] = []
    original_abandon = Worker.abandon_all

    def abandon_all(self: Worker, why: str) -> None:
        if self.runs:
            abandoned_at.append(loop.time())
        original_abandon(self, why)

    monkeypatch.setattr(Worker, "abandon_all", abandon_all)
    t: dict[str, float] = {}
    sent: list[float] = []
    original_get = JobStore.get

    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "read_until" in t and loop.time() < t["read_until"]:
            raise AutoReconnect("no answer")
        return await original_get(self, *args, **kwargs)

    async def flaky(coll: Any, *a: Any, **k: Any) -> Any:
        if "t0" not in t:
            t["t0"] = loop.time()
            t["lease_end"] = loop.time() + processor.heartbeat.lease_left()
        if loop.time() < t["t0"] + 1.5:
            raise AutoReconnect("no answer")
        sent.append(loop.time())
        if len(sent) == 1:  # the read that follows fails until past the lease
            t["read_until"] = t["lease_end"] + 0.3
        return await coll.update_one(*a, **k)

    final_write_updates(monkeypatch, flaky)
    monkeypatch.setattr(JobStore, "get", get)

    async def handler(job: Any, signal: Any) -> str:
        await finish.wait()
        return "done"

    processor = await init_job_processor(
        db,
        jobs={"h": JobDef(handler=handler), "then": JobDef(handler=handler)},
        poll_interval=0.2,
        heartbeat_interval=0.5,
        worker_timeout=3.0,
    )
    try:
        async with processor:
            job = await running_with_lease_below(processor, hold, 2.0)
            finish.set()
            deadline = loop.time() + 10
            while "t0" not in t:  # the final write is being retried
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            await processor.schedule_job("then", after=[job.id])  # a dependent since the claim
            while len(sent) < 2 and loop.time() < deadline:
                await asyncio.sleep(0.05)
            release.set()
            while loop.time() < deadline:
                after = await processor.get_job(job.id)
                if after.status != JobStatus.RUNNING:
                    break
                await asyncio.sleep(0.1)
    finally:
        release.set()
    assert abandoned_at, "the lease did not end"
    late = [s - abandoned_at[0] for s in sent if s > abandoned_at[0]]
    assert not late, f"a final write was sent {late}s after the run was given up ({after.status})"


async def test_a_run_given_up_as_its_tries_own_timeout_fires_is_given_up_without_raising() -> None:
    """The lease ends (run.give_up() -> WriteStop.set()) in the loop turn in which the try's
    own timeout fired (its Timeout expiring, the task not yet resumed): set() raised
    RuntimeError, and abandon_all stopped half-way (later runs never given up)."""
    from job_processor.storage.transient import GivenUp, WriteStop, ride_out

    loop = asyncio.get_running_loop()
    stop = WriteStop()
    fired = asyncio.Event()
    errors: list[BaseException] = []

    async def hang() -> None:
        (bound,) = stop._attempts

        def lease_ends() -> None:
            try:
                stop.set()
            except BaseException as exc:
                errors.append(exc)
            fired.set()

        when = bound.when()
        assert when is not None
        loop.call_at(when, lease_ends)  # due with the try's own timeout
        await asyncio.sleep(10)

    with pytest.raises(GivenUp):
        await ride_out(hang, 0.01, stops=(stop,))
    assert fired.is_set()
    assert errors == []
