"""A handler that blocks the event loop: the heartbeat's timer wakes late, and the worker says so
(`event_loop_blocked`, naming the async handlers running), and says why runs it then loses were
lost. The first tests need no server (a fake clock); the last two run a worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from job_processor import AbortSignal, FakeClock, Job, JobDef, JobStatus, init_job_processor
from job_processor.core import documents as D
from job_processor.core.clock import SystemClock
from job_processor.core.log import EventLog
from job_processor.engine.execution import Run
from job_processor.engine.looplag import HINT, HINT_NO_ASYNC_JOB, LoopLag
from job_processor.engine.recovery import GAVE_UP
from tests.helpers import make, wait_for, wait_status

S = JobStatus


class Recorder:
    """A structlog-like logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in self.lines if event == name]


async def blocking(job: Job, signal: AbortSignal) -> None:
    return None


def threaded(job: Job, signal: AbortSignal) -> None:
    return None


def run_of(name: str, handler: Any) -> Run:
    return Run(
        doc=D.new_job(name, {}, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        definition=JobDef(handler=handler),
    )


def lag_of(clock: FakeClock, runs: list[Run], threshold: float = 1.0) -> tuple[LoopLag, Recorder]:
    recorder = Recorder()
    lag = LoopLag(
        clock, EventLog(recorder), threshold, 30.0, lambda: runs, lambda: "w-1", along(clock)
    )
    return lag, recorder


def along(clock: FakeClock) -> Any:
    """A monotonic clock that moves with the fake one (a real block moves both)."""
    return lambda: clock.now().timestamp()


async def test_a_late_timer_warns_naming_the_async_handlers_running() -> None:
    clock = FakeClock()
    culprit, bystander = run_of("fetch", blocking), run_of("resize", threaded)
    lag, log = lag_of(clock, [bystander, culprit])
    sleeping = asyncio.create_task(lag.sleep(asyncio.Event(), 5))
    await asyncio.sleep(0)
    clock.advance(50)  # the loop was held: the 5 s timer fires 45 s late
    assert await sleeping is False
    [warning] = log.events("event_loop_blocked")
    assert warning == {
        "seconds": 45.0,
        "worker_id": "w-1",
        "hint": HINT,
        "job_id": str(culprit.doc["_id"]),  # a plain def runs on a thread: never a suspect
        "job_name": "fetch",
        "job_ids": [str(culprit.doc["_id"])],
        "job_names": ["fetch"],
    }
    assert "plain def" in HINT and "asyncio.to_thread" in HINT and "SIGSTOP" in HINT


async def test_an_on_time_or_woken_timer_says_nothing() -> None:
    clock = FakeClock()
    lag, log = lag_of(clock, [run_of("fetch", blocking)])
    sleeping = asyncio.create_task(lag.sleep(asyncio.Event(), 5))
    await asyncio.sleep(0)
    clock.advance(5.9)  # under a second late: not reported
    await sleeping
    stop = asyncio.Event()
    sleeping = asyncio.create_task(lag.sleep(stop, 5))
    await asyncio.sleep(0)
    stop.set()  # woken early: no lag
    assert await sleeping is True
    assert log.lines == []
    assert lag.cause() is None


async def test_a_fake_clock_moved_on_or_a_wall_clock_step_is_no_block() -> None:
    clock = FakeClock()
    recorder = Recorder()
    lag = LoopLag(clock, EventLog(recorder), 1.0, 30.0, list, lambda: "w-1")
    assert lag.monotonic is None  # a FakeClock's timer wakes when moved: nothing to measure
    sleeping = asyncio.create_task(lag.sleep(asyncio.Event(), 5))
    await asyncio.sleep(0)
    clock.advance(3600)  # a test's hour, however long the test took: the loop was never held
    assert lag.cause() is None
    await sleeping
    assert recorder.lines == []

    class Stepped(SystemClock):  # NTP steps the wall clock an hour forward during the sleep
        step = dt.timedelta(0)

        def now(self) -> dt.datetime:
            return super().now() + self.step

    wall = Stepped()
    lag = LoopLag(wall, EventLog(recorder), 1.0, 30.0, list, lambda: "w-1")
    assert lag.monotonic is time.monotonic
    sleeping = asyncio.create_task(lag.sleep(asyncio.Event(), 0.05))
    await asyncio.sleep(0)
    wall.step = dt.timedelta(hours=1)
    await sleeping
    assert lag.cause() is None and recorder.lines == []


async def test_without_an_async_handler_running_the_hint_points_elsewhere() -> None:
    clock = FakeClock()
    lag, log = lag_of(clock, [run_of("resize", threaded)])
    lag.measured(3.0, clock.now())
    [warning] = log.events("event_loop_blocked")
    assert warning["hint"] == HINT_NO_ASYNC_JOB
    assert "job_ids" not in warning


async def test_the_warning_is_rate_limited_but_a_longer_block_gets_through() -> None:
    clock = FakeClock()
    lag, log = lag_of(clock, [])
    lag.measured(2.0, clock.now())
    clock.advance(5)
    lag.measured(3.0, clock.now())  # within the minute, under twice 2 s: counted, not logged
    clock.advance(5)
    lag.measured(3.9, clock.now())
    clock.advance(5)
    lag.measured(20.0, clock.now())  # a far longer block: logged at once
    clock.advance(5)
    lag.measured(25.0, clock.now())  # under twice 20 s
    clock.advance(60)
    lag.measured(1.5, clock.now())  # a new minute
    said = [(w["seconds"], w.get("suppressed")) for w in log.events("event_loop_blocked")]
    assert said == [(2.0, None), (20.0, 2), (1.5, 1)]


async def test_cause_names_a_block_long_enough_to_miss_the_heartbeat() -> None:
    clock = FakeClock()
    lag, _ = lag_of(clock, [])
    sleeping = asyncio.create_task(lag.sleep(asyncio.Event(), 5))
    await asyncio.sleep(0)
    clock.advance(45)  # under way: the run's loss may be seen before the heartbeat wakes
    assert lag.cause() == "event loop blocked for 40.0 s: heartbeat missed"
    await sleeping
    clock.advance(10)  # measured 10 s ago: still the explanation
    assert lag.cause() == "event loop blocked for 40.0 s: heartbeat missed"
    clock.advance(30)  # older than worker_timeout: it explains nothing lost now
    assert lag.cause() is None
    lag.measured(5.0, clock.now())  # too short to have missed worker_timeout / 2 of heartbeats
    assert lag.cause() is None


async def test_an_async_handler_blocking_the_loop_is_named(db: Any) -> None:
    """The newcomer's mistake, for real: `time.sleep` inside `async def`. The job still ends
    normally (the block is shorter than worker_timeout); the warning names it."""
    lines = Recorder()

    async def sleepy(job: Job, signal: AbortSignal) -> str:
        time.sleep(1.5)  # noqa: ASYNC251 - the mistake under test
        return "done"

    processor = await make(
        db,
        {"sleepy": JobDef(handler=sleepy)},
        logger=lines,
        heartbeat_interval=0.2,
        worker_timeout=5.0,
        loop_lag_warning=0.5,
    )
    async with processor:
        job = await processor.schedule_job("sleepy")
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.result == "done"
    # the one naming the job (a loaded machine may add a lag of its own)
    [warning] = [w for w in lines.events("event_loop_blocked") if w.get("job_id") == job.id]
    assert warning["job_name"] == "sleepy"
    assert warning["worker_id"] == processor.worker_id
    assert warning["seconds"] >= 0.5
    assert warning["hint"] == HINT
    assert not lines.events("job_lost")


async def test_a_run_lost_to_a_blocked_loop_says_why(db: Any) -> None:
    """Blocked past worker_timeout (a fake clock moved by the handler without yielding): the
    worker gives its run up and re-registers; each line, and the error its own recovery
    stores, says the blocked loop is why."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    lines = Recorder()
    never = asyncio.Event()

    async def stuck(job: Job, signal: AbortSignal) -> None:
        clock.advance(40)  # 40 s pass without the event loop running anything else
        await never.wait()  # cancelled when the worker gives the run up

    processor = await init_job_processor(
        db, jobs={"stuck": JobDef(handler=stuck)}, clock=clock, logger=lines, worker_timeout=30
    )
    processor.heartbeat.lag.monotonic = along(clock)  # the handler's 40 s are real to it
    async with processor:
        first = processor.worker_id
        job = await processor.schedule_job("stuck")
        await wait_for(lambda: lines.events("job_lost") and processor.worker_id != first)
        # its own sweep, once the new registration is trusted (a loaded machine takes longer
        # to write it: a sweep before that does nothing), if its reconciliation has not yet
        await wait_for(processor.worker.trusted)
        await processor.recovery.sweep(clock.now())
        recovered = await processor.get_job(job.id)
    assert (recovered.status, recovered.error) == (S.ERRORED, GAVE_UP["event_loop_blocked"])
    why = lines.events("job_lost")[0]["reason"]
    assert why.startswith("event loop blocked for 3") and why.endswith("s: heartbeat missed")
    [abandoned] = lines.events("job_abandoned")
    assert abandoned["job_id"] == job.id and abandoned["cause"] == why
    [dead] = lines.events("worker_declared_dead")
    assert dead["worker_id"] == first and dead["cause"].startswith("event loop blocked for 3")
    [warning] = lines.events("event_loop_blocked")
    assert warning["job_id"] == job.id and warning["seconds"] >= 30
