"""The processor's lifecycle when calls overlap (an outside review's findings, each failing
before its fix): two stops at once release the runtime once, a stop during start() means nothing
starts, two starts at once run one set of loops, a stop awaited from a handler completes, a
start that fails midway leaves no worker document, and one SIGTERM stops every processor served
in the process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, DatabaseUnreachableError, Job, JobDef, JobStatus
from job_processor.engine.signals import _LISTENERS
from tests.helpers import make, wait_for, wait_status


async def quick(job: Job, signal: AbortSignal) -> str:
    return "x"


async def slow(job: Job, signal: AbortSignal) -> str:
    await asyncio.sleep(6)
    return "y"


JOBS = {"quick": JobDef(handler=quick), "slow": JobDef(handler=slow)}


async def test_two_concurrent_stops_release_the_runtime_once(db: Any) -> None:
    p = await make(db, JOBS)
    await p.start()
    await asyncio.gather(p.stop(), p.stop())
    assert p._users == 0  # was -1


async def test_a_run_job_after_two_stops_and_a_restart_keeps_the_heartbeat(db: Any) -> None:
    p = await make(db, JOBS)
    peer = await make(db, JOBS, worker_tags=["elsewhere"])  # sweeps; runs none of these
    await peer.start()
    try:
        await p.start()
        await asyncio.gather(p.stop(), p.stop())
        await p.start()
        long = await p.schedule_job("slow")
        await wait_status(p, long.id, JobStatus.RUNNING)
        assert (await p.run_job("quick")).status == JobStatus.FINISHED
        done = await wait_status(
            p, long.id, JobStatus.FINISHED, JobStatus.ERRORED, JobStatus.PENDING, timeout=20
        )
        assert done.status == JobStatus.FINISHED, (
            done.error
        )  # errored: "worker stopped heartbeating"
        assert done.attempt == 1
    finally:
        await p.stop()
        await peer.stop()


async def test_no_run_starts_once_stop_was_called_during_start(db: Any) -> None:
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> None:
        ran.append(job.id)

    p = await make(db, {"work": JobDef(handler=work)})
    await p.schedule_job("work")
    await _slow_start(p)
    starting = asyncio.create_task(p.start())
    await asyncio.sleep(0.1)  # start() is registered and sweeping
    try:
        await p.stop()
        await starting
        await asyncio.sleep(1.0)
        assert ran == []
        assert not p.started
        assert [w["_id"] for w in await p.storage.workers.all()] == []
    finally:
        await p.stop()


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


async def test_stop_after_two_concurrent_starts_stops_the_heartbeat(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    await asyncio.gather(p.start(), p.start())
    await p.stop()
    await asyncio.sleep(1.5)  # three heartbeat intervals
    try:
        status = await p.get_status()
        assert [w.id for w in status.workers if w.alive] == []
        assert [w["_id"] for w in await p.storage.workers.all()] == []
    finally:
        p.heartbeat.stop_event.set()  # the leak's own cleanup
        p.ownership.stop_event.set()
        p._sweeps_stop.set()
        if p._side_loops is not None:
            await asyncio.wait({p._side_loops}, timeout=5)


async def test_stop_called_from_a_handler_stops_the_processor(db: Any) -> None:
    box: dict[str, Any] = {}

    async def shut_down(job: Job, signal: AbortSignal) -> str:
        await box["p"].stop()
        return "stopping"

    p = box["p"] = await make(db, {"shut-down": JobDef(handler=shut_down)})
    await p.start()
    await p.schedule_job("shut-down")
    try:
        # shutdown_grace is 1 s; `started` turns False before the worker document is deleted,
        # so wait for the whole stop the handler began
        await wait_for(lambda: not p.started and p._stopping is None, timeout=5)
        assert [w["_id"] for w in await p.storage.workers.all()] == []
    finally:
        await p.stop()


async def test_a_start_that_fails_midway_leaves_no_worker_document(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    register = p.registry.register
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise AutoReconnect("connection closed")
        return await register(*args, **kwargs)

    p.registry.register = flaky  # type: ignore[method-assign]
    with pytest.raises(DatabaseUnreachableError) as raised:
        await p.start()
    assert isinstance(raised.value.__cause__, AutoReconnect)
    assert not p.started
    assert [w.id for w in (await p.get_status()).workers] == []
    assert [w["_id"] for w in await p.storage.workers.all()] == []


async def test_one_sigterm_stops_both_served_processors(db: Any) -> None:
    a = await make(db, {"noop": JobDef(handler=noop)}, collection_prefix="tenant_a_")
    b = await make(db, {"noop": JobDef(handler=noop)}, collection_prefix="tenant_b_")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    serving = [asyncio.create_task(a.serve(stop_a)), asyncio.create_task(b.serve(stop_b))]
    loop = asyncio.get_running_loop()
    # both inside serve(), their handlers installed: else the signal would end this process
    await wait_for(lambda: len(_LISTENERS.get(loop, {}).get(signal.SIGTERM, [])) == 2)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        done, _ = await asyncio.wait(serving, timeout=5)
        assert stop_a.is_set() and stop_b.is_set(), (stop_a.is_set(), stop_b.is_set())
        assert len(done) == 2
    finally:  # the test's own cleanup: never a second signal (SIG_DFL by now would kill pytest)
        stop_a.set()
        stop_b.set()
        await asyncio.wait(serving, timeout=10)


async def test_a_start_its_caller_gave_up_on_leaves_nothing_started(db: Any) -> None:
    """guide: "If it fails (MongoDB unreachable), nothing is left behind and it can be called
    again". A caller that gives up (wait_for's timeout, a cancelled serve()) got an error: the
    processor must not start behind its back with nobody left to stop it (before 79cff51 the
    cancellation reached the start, which released the runtime)."""
    p = await make(db, {"noop": JobDef(handler=noop)})
    await _slow_start(p)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.start(), 0.2)
        await asyncio.sleep(1.5)
        workers = [w["_id"] for w in await p.storage.workers.all()]
        assert not p.started, "the start went on after its caller was told it timed out"
        assert workers == []
    finally:
        await p.stop()


async def runs_a_job(p: Any) -> None:
    """The processor is started for real: a job scheduled now is run to its end."""
    job = await p.schedule_job("noop")
    done = await wait_status(p, job.id, JobStatus.FINISHED, timeout=5)
    assert done.status == JobStatus.FINISHED


async def test_start_called_during_a_stop_leaves_the_processor_started(db: Any) -> None:
    """start() returns as "started" (it says: start claiming and running jobs in the
    background); one called while a stop is under way returns at once, and the stop then
    ends the processor: nothing runs, silently."""
    p = await make(db, {"slow": JobDef(handler=slow), "noop": JobDef(handler=noop)}, concurrency=4)
    await p.start()
    try:
        long = await p.schedule_job("slow")
        await wait_status(p, long.id, JobStatus.RUNNING)
        stopping = asyncio.create_task(p.stop())
        await asyncio.sleep(0.2)  # the stop waits for the run (shutdown_grace 1 s)
        await p.start()
        await stopping
        assert p.started, "start() returned, then the processor was stopped"
        await runs_a_job(p)
    finally:
        await p.stop()


async def test_a_start_joined_after_its_first_caller_gave_up_starts(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    await _slow_start(p)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.start(), 0.2)  # the first caller gives up
        await p.start()  # a second caller, while that start is still under way
        assert p.started, "start() returned normally, yet nothing was started"
        await runs_a_job(p)
    finally:
        await p.stop()


async def _slow_start(p: Any) -> None:
    first_sweep = p.recovery.sweep

    async def slow_sweep(*args: Any, **kwargs: Any) -> Any:  # a slow MongoDB at start
        await asyncio.sleep(0.6)
        return await first_sweep(*args, **kwargs)

    p.recovery.sweep = slow_sweep


async def test_start_called_after_a_stop_that_waits_for_a_start_starts(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    await _slow_start(p)
    try:
        first = asyncio.create_task(p.start())
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(p.stop())  # waits for the start under way
        await asyncio.sleep(0.1)
        await p.start()  # called after stop(): the last word
        await stopping
        await asyncio.sleep(0.1)
        assert p.started, "start() (called after stop()) returned normally, nothing started"
        await runs_a_job(p)
        await first
    finally:
        await p.stop()


async def test_start_after_stop_after_an_abandoned_start_starts(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    await _slow_start(p)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.start(), 0.2)  # the first caller gives up
        stopping = asyncio.create_task(p.stop())  # then a stop, waiting for that start
        await asyncio.sleep(0.05)
        await p.start()  # then a start again
        await stopping
        await asyncio.sleep(0.1)
        assert p.started, "start() (called after stop()) returned normally, nothing started"
    finally:
        await p.stop()


async def test_stop_called_last_wins_over_a_start_queued_behind_a_stop(db: Any) -> None:
    """start(), stop(), start(), stop(), in that order: the processor ends stopped."""
    p = await make(db, {"noop": JobDef(handler=noop)})
    await _slow_start(p)
    try:
        first = asyncio.create_task(p.start())
        await asyncio.sleep(0.1)
        stop1 = asyncio.create_task(p.stop())  # waits for the start under way
        await asyncio.sleep(0.05)
        start2 = asyncio.create_task(p.start())  # waits for that stop, then starts again
        await asyncio.sleep(0.05)
        await p.stop()  # called last: the last word
        await asyncio.gather(first, stop1, start2)
        await asyncio.sleep(1.0)
        assert not p.started, "stop() was called last, yet the processor is started"
        assert p._side_loops is None, "a heartbeat is beating after the last stop()"
    finally:
        await p.stop()


async def test_concurrent_start_stop_start_stop_ends_stopped(db: Any) -> None:
    p = await make(db, {"noop": JobDef(handler=noop)})
    try:
        await asyncio.gather(p.start(), p.stop(), p.start(), p.stop())
        await asyncio.sleep(1.0)
        assert not p.started, "gather(start, stop, start, stop) left the processor started"
        assert p._side_loops is None, "a heartbeat is beating after the last stop()"
    finally:
        await p.stop()


async def test_a_cancelled_serve_stops_the_processor_it_started(db: Any) -> None:
    """serve() is start(), a wait, then stop(): cancelled by its caller (a TaskGroup whose
    sibling failed, wait_for), it left the processor started, claiming and running jobs."""
    ran: list[str] = []

    async def work(job: Job, signal: AbortSignal) -> str:
        ran.append(job.id)
        return "ok"

    p = await make(db, {"w": JobDef(handler=work)})
    serving = asyncio.create_task(p.serve())
    try:
        await wait_for(lambda: p.started)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not p.started, "serve() was cancelled but its processor is still started"
        job = await p.schedule_job("w")
        await asyncio.sleep(1.0)  # five poll intervals: a started worker would have run it
        assert ran == [] and (await p.get_job(job.id)).status == JobStatus.PENDING
    finally:
        await p.stop()


async def test_a_serve_cancelled_as_its_start_completes_stops_the_processor(db: Any) -> None:
    """The cancellation landing in serve()'s start(), in the loop turn the start completes,
    left the processor started with nobody to stop it."""
    p = await make(db, {"noop": JobDef(handler=quick)})
    serving: asyncio.Task[None] | None = None
    start = p._start

    async def start_then_cancelled() -> None:
        await start()
        assert serving is not None
        serving.cancel()  # its caller gives up just as the start ends (a TaskGroup sibling)

    p._start = start_then_cancelled  # type: ignore[method-assign]
    serving = asyncio.create_task(p.serve())
    try:
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not p.started, "serve() was cancelled but its processor is still started"
    finally:
        await p.stop()


async def test_a_serve_cancelled_during_its_graceful_stop_waits_for_that_stop(db: Any) -> None:
    """Cancelled once its stop had begun (a SIGTERM, then the caller's wait_for timeout),
    serve() raised at once, the stop still going on behind it."""
    began = asyncio.Event()

    async def stubborn(job: Job, signal: AbortSignal) -> str:
        began.set()
        for _ in range(60):  # ignores the abort signal for 3 s
            await asyncio.sleep(0.05)
        return "late"

    p = await make(db, {"stubborn": JobDef(handler=stubborn)}, shutdown_grace=6.0)
    stop = asyncio.Event()
    serving = asyncio.create_task(p.serve(stop))
    try:
        await wait_for(lambda: p.started)
        job = await p.schedule_job("stubborn")
        await asyncio.wait_for(began.wait(), 15)
        stop.set()  # what SIGTERM does
        await wait_for(lambda: p._stopping is not None)
        serving.cancel()  # then its caller gives up
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not p.started and p._stopping is None, "serve() returned mid-stop"
        assert (await p.get_job(job.id)).status == JobStatus.FINISHED
    finally:
        await p.stop()


async def test_a_stop_called_elsewhere_ends_serve(db: Any) -> None:
    """serve() is start(), a wait, then stop(): a stop() called by other code meanwhile (a
    handler, an admin endpoint; the last call has its way) stopped the processor, but serve()
    went on waiting for a signal for ever, `job-processor run` a process that claimed nothing,
    heartbeated no more and never exited. It now returns once that stop is over; so it does
    when the stop() comes while its start() is still under way (nothing is started)."""
    ran: list[str] = []

    async def shut_down(job: Job, signal: AbortSignal) -> str:
        ran.append(job.id)
        asyncio.create_task(box["p"].stop())  # noqa: RUF006 (the stop holds itself)
        return "stopping"

    box: dict[str, Any] = {}
    p = box["p"] = await make(db, {"shut-down": JobDef(handler=shut_down)})
    serving = asyncio.create_task(p.serve())
    try:
        await wait_for(lambda: p.started)
        await p.schedule_job("shut-down")
        done, _ = await asyncio.wait({serving}, timeout=10)
        assert done, "serve() still waits after its processor was stopped"
        await serving  # returned, no error
        assert len(ran) == 1 and not p.started
        assert [w["_id"] for w in await p.storage.workers.all()] == []

        # a stop() while serve()'s start() is under way: nothing starts, serve() returns
        start = p._start

        async def start_then_stopped() -> None:
            box["stop"] = asyncio.ensure_future(p.stop())  # runs while this start is under way
            await start()

        p._start = start_then_stopped  # type: ignore[method-assign]
        serving = asyncio.create_task(p.serve())
        done, _ = await asyncio.wait({serving}, timeout=10)
        assert done, "serve() still waits after a stop() during its start()"
        await serving
        assert not p.started
    finally:
        serving.cancel()
        await asyncio.wait({serving})
        await p.stop()
