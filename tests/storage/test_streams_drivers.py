"""Motor's change streams opened lazily, at their first read, not when `watch()` returned (an
outside review's findings, failing before their fix).

`compat.open_stream` ("PyMongo's async API awaits `watch()`, motor returns cursors directly")
returns Motor's stream unopened: nothing is sent to the server until the first `try_next()`.
So (1) a change made between `open_stream` and the first read is missed (what `wait_for`
relies on: "before the first read: none missed"), and (2) a server that refuses change streams
(a standalone MongoDB: error 40573 at `watch()`) is not recognised: the refusal comes out of the
first read inside `_follow`, is taken for a broken stream, and the worker logs
`change_stream_reopened` (a warning) and forces a claim about once a second for ever, instead of
`change_stream_unavailable` once and polling (docs/guide.md "Waking up": "Where `watch()` is
refused (a standalone server, mongomock) it is switched off (`change_stream_unavailable`)").
Both pass with PyMongo's AsyncMongoClient and fail with Motor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pymongo
import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.synchronous.collection import Collection

from job_processor import AbortSignal, Job, JobDef
from job_processor.storage.compat import close_stream, open_stream
from job_processor.storage.local_server import free_port
from tests.helpers import make, wait_for


async def test_open_stream_sees_changes_made_after_it_returns(driver_db: Any) -> None:
    coll = driver_db["probe"]
    stream = await open_stream(coll, [], 500)
    try:
        await coll.insert_one({"x": 1})  # after the stream was opened, before its first read
        change = None
        for _ in range(20):  # nx-27017 delivers an insert within a few ms
            change = await stream.try_next()
            if change is not None:
                break
            await asyncio.sleep(0.05)
        assert change is not None and change["operationType"] == "insert", (
            f"{type(driver_db).__module__}: the insert made after open_stream() was missed"
        )
    finally:
        await close_stream(stream)


def _standalone(*args: Any, **kwargs: Any) -> Any:
    # what a standalone MongoDB answers to the $changeStream aggregate that watch() sends
    raise OperationFailure("The $changeStream stage is only supported on replica sets", 40573)


async def _standalone_async(*args: Any, **kwargs: Any) -> Any:
    _standalone()


async def noop(job: Job, signal: AbortSignal) -> None:
    pass


async def test_a_server_refusing_change_streams_switches_them_off(
    driver_db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(AsyncCollection, "watch", _standalone_async)  # PyMongo async
    monkeypatch.setattr(Collection, "watch", _standalone)  # what Motor's threads call
    logger = logging.getLogger("review.streams")
    # a stream that could wake the worker before its poll (max await < poll interval)
    processor = await make(
        driver_db,
        {"n": JobDef(handler=noop)},
        logger=logger,
        poll_interval=2.0,
        idle_poll_interval=2.0,
        change_stream_max_await=1.0,
    )

    def events() -> list[Any]:
        return [getattr(r, "event", None) for r in caplog.records]

    with caplog.at_level(logging.DEBUG, logger.name):
        async with processor:
            await wait_for(lambda: "change_stream_unavailable" in events(), timeout=10)
    assert events().count("change_stream_unavailable") == 1, events()
    assert "change_stream_reopened" not in events(), events()


async def test_motor_stream_open_is_bounded_by_pymongo_timeout() -> None:
    client: Any = AsyncIOMotorClient(
        f"mongodb://127.0.0.1:{free_port()}/x", serverSelectionTimeoutMS=4000
    )
    coll = client["x"]["jobs"]
    try:
        # control: Motor's own calls honour pymongo.timeout (its threads get the context)
        t0 = time.monotonic()
        with pytest.raises(PyMongoError), pymongo.timeout(0.3):
            await coll.find_one({})
        assert time.monotonic() - t0 < 2.0
        # the stream's open, as ProducerRetry runs it, must honour it too
        t0 = time.monotonic()
        with pytest.raises(PyMongoError), pymongo.timeout(0.3):
            await open_stream(coll, [], 1000)
        took = time.monotonic() - t0
        assert took < 2.0, f"open_stream took {took:.1f}s under pymongo.timeout(0.3)"
    finally:
        client.close()


@pytest.fixture
def blocking_getmores(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Change streams that behave as a replica set's: a `getMore` waits up to the stream's
    maxAwaitTimeMS for a change (nx-27017 answers at once). Returns [getMores in flight]."""
    from pymongo.asynchronous.change_stream import AsyncChangeStream
    from pymongo.synchronous.change_stream import ChangeStream

    from job_processor.storage.compat import ServerProfile

    in_flight = [0]
    sync_next, async_next = ChangeStream.try_next, AsyncChangeStream.try_next

    def max_await(stream: Any) -> float:
        return (getattr(stream, "_max_await_time_ms", None) or 1000) / 1000

    def blocking(self: Any) -> Any:  # Motor runs this on one of its threads
        end = time.monotonic() + max_await(self)
        in_flight[0] += 1
        try:
            while True:
                change = sync_next(self)
                if change is not None or time.monotonic() >= end:
                    return change
                time.sleep(0.02)
        finally:
            in_flight[0] -= 1

    async def awaiting(self: Any) -> Any:
        end = time.monotonic() + max_await(self)
        in_flight[0] += 1
        try:
            while True:
                change = await async_next(self)
                if change is not None or time.monotonic() >= end:
                    return change
                await asyncio.sleep(0.02)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(ChangeStream, "try_next", blocking)
    monkeypatch.setattr(AsyncChangeStream, "try_next", awaiting)
    monkeypatch.setattr(ServerProfile, "stream_waits", property(lambda self: True))
    return in_flight


async def test_waits_on_streams_leave_the_processors_other_commands_prompt(
    driver_db: Any, blocking_getmores: list[int]
) -> None:
    """With Motor each waiting getMore (up to 1 s on a replica set, simulated here) holds one
    of Motor's executor threads (cpu_count() * 5: 10 on 2 cores): 10 `wait_for` on streams,
    plus the worker's own stream, took them all, and every other command of the process
    (reads, claims, final writes) queued behind a getMore. With Motor a quarter of its
    threads wait on streams; the other waits poll."""

    async def quick(job: Job, signal: AbortSignal) -> int:
        return 1

    p = await make(driver_db, {"quick": JobDef(handler=quick), "later": JobDef(handler=quick)})
    async with p:
        held = [await p.schedule_job("later", {}, delay=3600) for _ in range(10)]
        waits = [asyncio.create_task(p.wait_for(j.id)) for j in held]
        try:  # the waits that follow a stream are in their getMore
            await wait_for(lambda: blocking_getmores[0] >= p._waiters_on_streams > 0)
            reads = []
            for _ in range(5):
                began = time.monotonic()
                await p.get_job(held[0].id)
                reads.append(time.monotonic() - began)
            began = time.monotonic()
            job = await p.schedule_job("quick", {})
            assert await p.result(job.id, timeout=30) == 1
            ran_in = time.monotonic() - began
            assert max(reads) < 0.5, f"one read took {max(reads):.2f}s"
            assert ran_in < 1.0, f"a quick job was seen ended after {ran_in:.2f}s"
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


async def test_waits_on_streams_of_several_processors_leave_motors_threads_free(
    driver_db: Any, blocking_getmores: list[int]
) -> None:
    """Motor's executor is one per process, but the quarter of it that `wait_for` may hold on
    streams was counted per processor: five processors of one process each held a quarter,
    and together took every thread. Counted for the process now. (PyMongo's async client
    waits on the event loop, holding no thread: each processor keeps its 10.)"""
    from job_processor.engine.waits import PROCESS_STREAM_WAITS
    from job_processor.storage.compat import stream_waiters

    motor = type(driver_db).__module__.split(".")[0] == "motor"

    async def never(job: Job, signal: AbortSignal) -> None:
        return None

    quarter = stream_waiters(driver_db, 10)
    expected = quarter if motor else 5 * 10
    processors = [await make(driver_db, {"later": JobDef(handler=never)}) for _ in range(5)]
    waits = []
    try:
        for p in processors:
            held = [await p.schedule_job("later", {}, delay=3600) for _ in range(10)]
            waits += [asyncio.create_task(p.wait_for(j.id)) for j in held]
        await wait_for(lambda: blocking_getmores[0] >= expected)  # those on streams wait
        assert sum(p._waiters_on_streams for p in processors) == expected
        began = time.monotonic()
        await processors[0].get_job(held[0].id)
        assert time.monotonic() - began < 0.5
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert PROCESS_STREAM_WAITS[0] == 0  # all given back


async def test_motor_stream_waits_are_counted_for_the_process_whatever_its_size(
    driver_db: Any, blocking_getmores: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 40 threads or more (8 cores), a quarter reached STREAM_WAITERS and nothing was
    counted for the process: five processors held 50 waits on Motor's 40 threads. Counted by
    the driver's kind now; PyMongo's waits are not (no thread held), each processor keeps 10."""
    import concurrent.futures

    import motor.frameworks.asyncio as motor_asyncio

    from job_processor.engine.waits import PROCESS_STREAM_WAITS

    motor = type(driver_db).__module__.split(".")[0] == "motor"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=40)  # cpu_count() * 5 on 8 cores
    monkeypatch.setattr(motor_asyncio, "_EXECUTOR", pool)

    async def never(job: Job, signal: AbortSignal) -> None:
        return None

    processors = [await make(driver_db, {"later": JobDef(handler=never)}) for _ in range(5)]
    waits: list[asyncio.Task[Any]] = []
    try:
        for p in processors:
            held = [await p.schedule_job("later", {}, delay=3600) for _ in range(10)]
            waits += [asyncio.create_task(p.wait_for(j.id)) for j in held]
        expected = 40 // 4 if motor else 50
        await wait_for(lambda: blocking_getmores[0] >= expected)  # those on streams wait
        on_streams = sum(p._waiters_on_streams for p in processors)
        assert on_streams == expected, on_streams
        assert PROCESS_STREAM_WAITS[0] == (on_streams if motor else 0)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert PROCESS_STREAM_WAITS[0] == 0


async def test_a_wait_whose_stream_broke_gives_its_stream_place_back(
    driver_db: Any, blocking_getmores: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait whose stream read failed closed its stream and polled, but kept its place among
    the waits on streams until it ended (for ever without a timeout): two such waits made
    every later wait of a Motor process poll."""
    from pymongo.asynchronous.change_stream import AsyncChangeStream
    from pymongo.errors import AutoReconnect
    from pymongo.synchronous.change_stream import ChangeStream

    from job_processor.engine.waits import PROCESS_STREAM_WAITS

    broke = [0]

    def failing(self: Any) -> Any:
        broke[0] += 1
        raise AutoReconnect("connection reset")

    async def failing_async(self: Any) -> Any:
        return failing(self)

    monkeypatch.setattr(ChangeStream, "try_next", failing)
    monkeypatch.setattr(AsyncChangeStream, "try_next", failing_async)

    async def never(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(driver_db, {"later": JobDef(handler=never)})
    held = await p.schedule_job("later", {}, delay=3600)
    waiting = asyncio.create_task(p.wait_for(held.id))  # no timeout: waits for ever
    try:
        await wait_for(lambda: broke[0] >= 1)  # its stream broke: it polls from now on
        await wait_for(lambda: p._waiters_on_streams == 0, timeout=3)
        assert PROCESS_STREAM_WAITS[0] == 0
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    assert p._waiters_on_streams == 0  # given back once, not twice


async def test_a_wait_cancelled_while_it_opens_its_stream_ends_cancelled(
    driver_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyMongo's async watch() swallows a cancellation that arrives while it opens the stream
    and returns the stream: the cancelled wait_for went on, polling for ever (an
    asyncio.wait_for around it, or a web request's cancellation, never ended it)."""
    from job_processor.engine.waits import PROCESS_STREAM_WAITS
    from job_processor.storage.compat import ServerProfile

    monkeypatch.setattr(ServerProfile, "stream_waits", property(lambda self: True))

    async def never(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(driver_db, {"later": JobDef(handler=never)})
    held = await p.schedule_job("later", {}, delay=3600)
    waiting = asyncio.create_task(p.wait_for(held.id))
    await asyncio.sleep(0)  # it is opening its stream
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=10)
    assert done, "the cancelled wait_for is still waiting"
    assert waiting.cancelled()
    assert p._waiters_on_streams == 0 and PROCESS_STREAM_WAITS[0] == 0


async def test_a_wait_whose_stream_read_swallows_its_cancellation_ends_cancelled(
    db: Any, blocking_getmores: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver that swallows a cancellation in a stream read (PyMongo's async API does, in a
    read cut short) left the cancelled wait_for going on: without a timeout, for ever (a
    full suite under load hung 120 s on such a wait)."""
    from pymongo.asynchronous.change_stream import AsyncChangeStream

    reading = asyncio.Event()

    async def swallowing(self: Any) -> Any:
        reading.set()
        # swallowed: the task stays cancelling, no error reaches the wait
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.5)
        return None

    monkeypatch.setattr(AsyncChangeStream, "try_next", swallowing)

    async def never(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"later": JobDef(handler=never)})
    held = await p.schedule_job("later", {}, delay=3600)
    waiting = asyncio.create_task(p.wait_for(held.id))  # no timeout
    await asyncio.wait_for(reading.wait(), 10)
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=10)
    assert done, "the cancelled wait went on"
    assert waiting.cancelled()
    assert p._waiters_on_streams == 0


async def _never_ends(job: Job, signal: AbortSignal) -> None:
    return None


@pytest.mark.parametrize("streams", [False, True])
async def test_wait_for_after_a_task_group_whose_sibling_failed_late(
    db: Any, streams: bool
) -> None:
    """On Python 3.11 a TaskGroup whose child fails while the parent waits in __aexit__
    leaves the parent's cancelling() at 1 with no cancellation pending: every other await
    goes on, and wait_for raised CancelledError at once, even for a job already ended."""
    from job_processor import JobStatus

    p = await make(db, {"later": JobDef(handler=_never_ends)}, change_streams=streams)
    job = await p.schedule_job("later", {}, delay=3600)
    await p.kill_job(job.id)  # ended: the wait only has to read it

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("sibling")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fails())
    await asyncio.sleep(0)  # ordinary awaits go on: nothing cancels this task
    done = await p.wait_for(job.id, timeout=5)
    assert done.status == JobStatus.KILLED


@pytest.mark.parametrize("streams", [False, True])
async def test_wait_for_in_a_cancellation_cleanup(db: Any, streams: bool) -> None:
    """A caller cancelled while waiting kills its job and waits for it to end, then
    re-raises: kill_job worked, the cleanup's wait_for raised CancelledError at once."""
    from job_processor import JobStatus

    p = await make(db, {"later": JobDef(handler=_never_ends)}, change_streams=streams)
    job = await p.schedule_job("later", {}, delay=3600)
    entered = asyncio.Event()
    seen: list[Any] = []

    async def caller() -> None:
        try:
            entered.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await p.kill_job(job.id)
            try:
                seen.append((await p.wait_for(job.id, timeout=5)).status)
            except BaseException as exc:
                seen.append(type(exc).__name__)
            raise

    task = asyncio.create_task(caller())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done and task.cancelled()
    assert seen == [JobStatus.KILLED]
