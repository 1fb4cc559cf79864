"""A real database outage: the test's own nx-27017 is stopped and restarted on the same data
while a resumable job checkpoints. Shorter than worker_timeout, it must not be visible to the
handler beyond a slow `checkpoint()`: no error, no attempt lost, no recovery."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from job_processor import (
    AbortSignal,
    DatabaseUnreachableError,
    Job,
    JobDef,
    JobStatus,
    init_job_processor,
)
from job_processor.storage.local_server import LocalServer, start_local_server
from tests.helpers import wait_status

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("JOB_PROCESSOR_TEST_MONGODB_URL")),
    reason="stops and restarts its own nx-27017 server; a real MongoDB is not restarted here",
)


@pytest.fixture
def own_server() -> Iterator[LocalServer]:
    data = Path(tempfile.mkdtemp(prefix="jp-outage-"))
    server = start_local_server(data)
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


async def test_checkpoints_and_final_writes_ride_out_a_short_outage(
    own_server: LocalServer,
) -> None:
    progress: list[int] = []
    errors: list[BaseException] = []
    outage_started = asyncio.Event()

    async def index(job: Job, signal: AbortSignal) -> int:
        step = (job.state or {}).get("step", 0)
        while step < 30:
            step += 1
            try:
                await job.checkpoint({"step": step})
            except BaseException as exc:
                errors.append(exc)
                raise
            progress.append(step)
            if step == 5:
                outage_started.set()
            await asyncio.sleep(0.05)
        return step

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        own_server.url, tz_aware=True, serverSelectionTimeoutMS=20000
    )
    processor = await init_job_processor(
        client["outage"],
        jobs={"index": JobDef(handler=index, resumable=True)},
        poll_interval=0.2,
        heartbeat_interval=1.0,
        worker_timeout=8.0,
    )
    try:
        async with processor:
            job = await processor.schedule_job("index")
            await asyncio.wait_for(outage_started.wait(), 10)
            own_server.stop()  # MongoDB goes away for about two seconds
            stopped_at = len(progress)
            await asyncio.sleep(2)
            assert len(progress) <= stopped_at + 1  # the handler was waiting in checkpoint()
            restarted = start_local_server(own_server.data_dir, port=own_server.port)
            try:
                done = await wait_status(processor, job.id, JobStatus.FINISHED, timeout=30)
            finally:
                await processor.stop()
                restarted.stop()
    finally:
        await client.close()
    assert errors == []
    assert done.result == 30
    assert done.attempt == 1  # same run: nothing was recovered or retried
    assert done.failures == 0
    assert progress == list(range(1, 31))


def test_producers_ride_out_a_restarted_server_without_losing_or_doubling_a_job(
    own_server: LocalServer,
) -> None:
    """The server is stopped and restarted twice (about 2.5 s down each time) while request
    threads schedule jobs, one at a time and in batches, through the synchronous client: every
    call returns, and the database holds each returned job once, nothing else."""
    import threading
    import time

    from pymongo import MongoClient

    from job_processor.sync import JobClient

    async def never(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("not run here")

    mongo: MongoClient[Any] = MongoClient(own_server.url, tz_aware=True)
    client = JobClient(mongo["outage"], {"send": JobDef(handler=never)}, producer_retry_seconds=15)
    returned: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def request_thread(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                if i % 5 == 4:
                    jobs = client.schedule_jobs(
                        [("send", {"t": n, "i": i, "k": k}) for k in range(20)]
                    )
                    returned.extend(j.id for j in jobs)
                else:
                    returned.append(client.schedule_job("send", {"t": n, "i": i}).id)
            except BaseException as exc:
                errors.append(exc)
                return
            i += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=request_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    server = own_server
    try:
        for _ in range(2):
            time.sleep(1.0)
            server.stop()
            time.sleep(2.5)
            server = start_local_server(own_server.data_dir, port=own_server.port)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        stored = [str(d["_id"]) for d in mongo["outage"]["job_processor_jobs"].find({}, {"_id": 1})]
        mongo.close()
        if server is not own_server:
            server.stop()
    assert errors == []
    assert len(returned) > 50
    assert len(set(returned)) == len(returned)  # no job returned twice
    assert sorted(stored) == sorted(returned)  # none lost, none written twice


def test_a_job_clients_first_call_rides_out_a_server_restarted_during_its_setup(
    own_server: LocalServer,
) -> None:
    """producers.md: every JobClient method rides out a short outage. Its first call checks
    that MongoDB answers, then creates the indexes: a server restarted between the two (a
    failover, a deploy) made that call raise the driver's AutoReconnect at once, a request's
    500. The setup is made again while producer_retry_seconds lasts."""
    from pymongo import MongoClient, monitoring

    from job_processor.sync import JobClient

    async def never(job: Job, signal: AbortSignal) -> None:
        raise AssertionError("not run here")

    servers = [own_server]

    class RestartAtFirstIndex(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "createIndexes" and len(servers) == 1:
                own_server.stop()  # its connections die with it
                servers.append(start_local_server(own_server.data_dir, port=own_server.port))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    mongo: MongoClient[Any] = MongoClient(
        own_server.url, tz_aware=True, event_listeners=[RestartAtFirstIndex()]
    )
    try:
        client = JobClient(mongo["first"], {"send": JobDef(handler=never)})
        job = client.schedule_job("send", {"n": 1})
        assert len(servers) == 2, "the server was restarted during the setup"
        assert client.get_job(job.id).status == JobStatus.PENDING
    finally:
        mongo.close()
        servers[-1].stop()


async def test_a_final_write_refused_with_a_retryable_label_is_ridden_out(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server error labelled `RetryableWriteError` (what PyMongo raises after its own retry,
    e.g. ExceededTimeLimit or a mongos's HostUnreachable during a failover) is an outage for
    the final write too: written again, the run that succeeded is `finished` (it used to be
    taken for an unrecordable outcome: errored for good)."""
    from pymongo.errors import OperationFailure

    from tests.helpers import make

    async def work(job: Job, signal: AbortSignal) -> str:
        return "ok"

    processor = await make(db, {"w": JobDef(handler=work, max_attempts=3)})
    coll = processor.storage.jobs.coll
    real = coll.update_one
    refused: list[int] = []

    async def blip(query: Any, update: Any, **kw: Any) -> Any:
        if "end_id" in update.get("$set", {}) and not refused:
            refused.append(1)
            raise OperationFailure(
                "operation exceeded time limit",
                code=262,
                details={"errorLabels": ["RetryableWriteError"]},
            )
        return await real(query, update, **kw)

    monkeypatch.setattr(coll, "update_one", blip)
    async with processor:
        job = await processor.schedule_job("w")
        done = await wait_status(processor, job.id, JobStatus.FINISHED, JobStatus.ERRORED)
    assert refused == [1]
    assert done.status == JobStatus.FINISHED and done.failures == 0 and done.result == "ok"


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_a_schedule_that_raised_unreachable_is_not_written_later(
    own_server: LocalServer, driver: str
) -> None:
    """With Motor each attempt ran on one of its threads, which asyncio's timeout cannot stop:
    the insert abandoned in server selection was written once the server was back, so the job
    the caller was told was not scheduled ran (an outside review's finding, failing before
    its fix). The attempts are bounded by the driver's own timeout too."""
    from motor.motor_asyncio import AsyncIOMotorClient

    kind: Any = AsyncMongoClient if driver == "pymongo" else AsyncIOMotorClient
    client = kind(own_server.url, tz_aware=True)
    restarted = None
    try:
        producer = await init_job_processor(  # a producer only: nothing claims
            client["app"], jobs={"n": JobDef(handler=never_runs)}, producer_retry_seconds=1.0
        )
        own_server.stop()
        with pytest.raises(DatabaseUnreachableError):
            await producer.schedule_job("n", {"order": 42})
        restarted = start_local_server(own_server.data_dir, port=own_server.port)
        await asyncio.sleep(3)  # an abandoned insert would land within ~0.5 s of the restart
        assert await client["app"]["job_processor_jobs"].count_documents({"name": "n"}) == 0
    finally:
        closed = client.close()
        if hasattr(closed, "__await__"):
            await closed
        if restarted is not None:
            restarted.stop()


async def test_a_schedule_that_raised_during_a_hung_server_names_the_job_it_may_have_written(
    own_server: LocalServer,
) -> None:
    """A server that hangs (SIGSTOP: a frozen VM, a partition whose packets arrive later)
    rather than goes away may run the insert it had received once it resumes, after the call
    raised DatabaseUnreachableError: the error names the id that job would have, so the caller
    can tell (producers.md, "Short outages")."""
    import signal as signals

    from job_processor import JobNotFoundError

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_server.url, tz_aware=True)
    try:
        producer = await init_job_processor(  # a producer only: nothing claims
            client["app"], jobs={"n": JobDef(handler=never_runs)}, producer_retry_seconds=1.0
        )
        os.killpg(own_server.process.pid, signals.SIGSTOP)
        try:
            with pytest.raises(DatabaseUnreachableError, match="may still be applied") as err:
                await producer.schedule_job("n", {"order": 42})
        finally:
            os.killpg(own_server.process.pid, signals.SIGCONT)
        assert err.value.job_id is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3  # a buffered insert lands within ms of the resume
        while loop.time() < deadline:
            try:
                found = await producer.get_job(err.value.job_id)
                break
            except JobNotFoundError:
                await asyncio.sleep(0.1)
        else:
            found = None
        ids = [str(d["_id"]) for d in await client["app"]["job_processor_jobs"].find().to_list()]
        assert ids == ([] if found is None else [err.value.job_id]), ids  # that job, or none
    finally:
        await client.close()


async def never_runs(job: Job, signal: AbortSignal) -> None:
    raise AssertionError("nothing claims here")


async def _stop_during_an_outage(
    own_server: LocalServer,
    monkeypatch: pytest.MonkeyPatch,
    in_the_outage: Callable[[Job], Awaitable[None]],
) -> tuple[dict[str, float], list[bool]]:
    """A handler runs; MongoDB goes away for longer than the lease; the handler then does
    `in_the_outage(job)` and a graceful stop begins. The times it marked (down, abandoned,
    stopped) and, for each final write that went out, whether the runs had been given up."""
    from job_processor.engine.worker import Worker
    from job_processor.storage.jobs import JobStore

    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    finals: list[bool] = []  # a final write went out, after the runs were given up
    original_abandon = Worker.abandon_all
    original_end_runs = JobStore.end_runs

    def abandon_all(self: Worker, why: str) -> None:
        marks.setdefault("abandoned", loop.time())
        original_abandon(self, why)

    async def end_runs(self: JobStore, *a: Any, **kw: Any) -> Any:
        finals.append("abandoned" in marks)
        return await original_end_runs(self, *a, **kw)

    monkeypatch.setattr(Worker, "abandon_all", abandon_all)
    monkeypatch.setattr(JobStore, "end_runs", end_runs)
    started, go = asyncio.Event(), asyncio.Event()

    async def handler(job: Job, signal: AbortSignal) -> str:
        started.set()
        await go.wait()
        await in_the_outage(job)
        return "done"

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        own_server.url, tz_aware=True, serverSelectionTimeoutMS=2000
    )
    processor = await init_job_processor(
        client["outage"],
        jobs={"h": JobDef(handler=handler)},
        poll_interval=0.2,
        heartbeat_interval=1.0,
        worker_timeout=OUTAGE_LEASE,
        shutdown_grace=0.2,
    )
    try:
        await processor.start()
        await processor.schedule_job("h")
        await asyncio.wait_for(started.wait(), 10)
        own_server.stop()  # for longer than the lease
        marks["down"] = loop.time()
        go.set()
        await processor.stop()
        marks["stopped"] = loop.time()
    finally:
        await client.close()
    return marks, finals


#: The worker_timeout of `_stop_during_an_outage`.
OUTAGE_LEASE = 4.0


async def test_a_stop_during_an_outage_writes_nothing_for_a_run_it_gave_up(
    own_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB goes away while a handler checkpoints; a graceful stop cancels the handler
    inside that checkpoint; the outage outlasts the worker's lease. guide.md: a worker whose
    last heartbeat is worker_timeout old gives its runs up and writes nothing for them (a run
    in its shutdown grace is cut short the same way); operations.md: with MongoDB unreachable
    a stop waits only for what is left of the lease."""

    async def step(job: Job) -> None:
        await job.checkpoint({"step": 1})  # rides the outage out; the stop cancels it here

    marks, finals = await _stop_during_an_outage(own_server, monkeypatch, step)
    assert "abandoned" in marks, "the lease did not end during the stop"
    assert True not in finals, "a final write went out for a run given up"
    # the lease ends within worker_timeout of the outage; the stop's own steps take a second
    # each after it (was: the cancelled save waited out, then a final write riding out another
    # worker_timeout)
    assert marks["stopped"] - marks["down"] < 2 * OUTAGE_LEASE


async def test_a_stop_during_an_outage_ends_with_the_lease_when_a_notes_write_was_unsure(
    own_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but what is in flight is a log line's write of its own (not a checkpoint):
    it rides the outage out past its budget, so its outcome is unknown, and the final write's
    turn asks whether it landed (`RunNotes._resolve`). The run is given up at the end of the
    lease meanwhile: the stop ends with the lease, as it does for a cancelled checkpoint (it
    waited out the question, a whole worker_timeout more)."""
    from job_processor.storage.jobs import JobStore

    loop = asyncio.get_running_loop()
    asked: list[float] = []
    original_landed = JobStore.notes_landed

    async def notes_landed(self: JobStore, *a: Any, **kw: Any) -> Any:
        asked.append(loop.time())
        return await original_landed(self, *a, **kw)

    monkeypatch.setattr(JobStore, "notes_landed", notes_landed)

    async def chatty(job: Job) -> None:
        job.log("a line written in the outage")  # its own write rides the outage out
        await asyncio.Event().wait()  # until the stop cancels it

    marks, finals = await _stop_during_an_outage(own_server, monkeypatch, chatty)
    assert "abandoned" in marks, "the lease did not end during the stop"
    assert asked, "the notes write was not unsure (the scenario did not happen)"
    assert True not in finals, "a final write went out for a run given up"
    assert marks["stopped"] - marks["down"] < 2 * OUTAGE_LEASE, (
        f"the stop took {marks['stopped'] - marks['down']:.1f}s after the outage began, "
        f"{marks['stopped'] - marks['abandoned']:.1f}s after the run was given up"
    )


async def test_a_final_write_under_way_when_the_lease_ends_does_not_land_after_the_give_up(
    own_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """guide.md: a worker whose last heartbeat is worker_timeout old gives its runs up and
    writes nothing more for them; the recovery's outcome stands. A handler returns during an
    outage; its final write is being ridden out when the lease ends; MongoDB comes back after
    that: the write was retried for a whole worker_timeout from its own start and landed
    (`job_finished` after `job_abandoned` and `worker_declared_dead`); its try under way, in
    server selection, is now cut short when the run is given up (an outside review's finding,
    failing before its fix)."""
    from job_processor.engine.worker import Worker

    loop = asyncio.get_running_loop()
    abandoned = asyncio.Event()
    original_abandon = Worker.abandon_all

    def abandon_all(self: Worker, why: str) -> None:
        if self.runs:
            loop.call_soon(abandoned.set)
        original_abandon(self, why)

    monkeypatch.setattr(Worker, "abandon_all", abandon_all)
    started, down = asyncio.Event(), asyncio.Event()

    async def handler(job: Job, signal: AbortSignal) -> str:
        started.set()
        await down.wait()
        await asyncio.sleep(3)  # returns during the outage: the final write starts then
        return "done"

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        own_server.url, tz_aware=True, serverSelectionTimeoutMS=2000
    )
    restarted = None
    try:
        processor = await init_job_processor(
            client["outage"],
            jobs={"h": JobDef(handler=handler)},
            poll_interval=0.2,
            heartbeat_interval=1.5,
            worker_timeout=6.0,
        )
        async with processor:
            job = await processor.schedule_job("h")
            await asyncio.wait_for(started.wait(), 10)
            own_server.stop()
            down.set()
            await asyncio.wait_for(abandoned.wait(), 15)  # the lease ended: runs given up
            restarted = start_local_server(own_server.data_dir, port=own_server.port)
            ended = await wait_status(
                processor, job.id, JobStatus.FINISHED, JobStatus.ERRORED, timeout=30
            )
    finally:
        await client.close()
        if restarted is not None:
            restarted.stop()
    assert ended.status == JobStatus.ERRORED, "the run given up still wrote its outcome"


async def test_a_schedule_after_a_dependency_that_raised_unreachable_names_its_job(
    own_server: LocalServer,
) -> None:
    """The marks and checks of its dependencies ran before the insert's own handler: the error
    of a schedule_job(after=...) carried no job_id (the docs say to look it up)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_server.url, tz_aware=True)
    try:
        producer = await init_job_processor(
            client["app"], jobs={"n": JobDef(handler=never_runs)}, producer_retry_seconds=1.0
        )
        first = await producer.schedule_job("n", {"order": 1})
        own_server.stop()
        with pytest.raises(DatabaseUnreachableError) as err:
            await producer.schedule_job("n", {"order": 2}, after=[first.id])
        assert err.value.job_id is not None, str(err.value)
    finally:
        await client.close()


@pytest.mark.parametrize(("driver", "outage"), [("pymongo", "down"), ("motor", "hung")])
async def test_a_stop_during_an_outage_does_not_wait_out_a_sweep_under_way(
    own_server: LocalServer, monkeypatch: pytest.MonkeyPatch, driver: str, outage: str
) -> None:
    """operations.md: with MongoDB unreachable, the steps of a stop wait only for what is left
    of the worker's lease. A recovery sweep under way when MongoDB went away (stopped, or hung:
    SIGSTOP, a frozen VM) was waited for until the driver gave its read up
    (serverSelectionTimeoutMS, 15 s here; connectTimeoutMS for a hung server)."""
    import signal as signals
    import time

    from motor.motor_asyncio import AsyncIOMotorClient

    from job_processor.engine.recovery import Recovery

    gone = asyncio.Event()
    sweeping = asyncio.Event()  # a sweep began during the outage
    original_sweep = Recovery.sweep

    async def sweep(self: Recovery, *a: Any, **kw: Any) -> Any:
        if gone.is_set():
            sweeping.set()
        return await original_sweep(self, *a, **kw)

    monkeypatch.setattr(Recovery, "sweep", sweep)
    kind: Any = AsyncMongoClient if driver == "pymongo" else AsyncIOMotorClient
    client = kind(own_server.url, tz_aware=True, serverSelectionTimeoutMS=15_000)
    lease = 3.0
    processor = await init_job_processor(
        client["outage"],
        jobs={"n": JobDef(handler=never_runs)},
        poll_interval=0.2,
        heartbeat_interval=1.0,
        worker_timeout=lease,
        shutdown_grace=0.2,
    )
    paused = False
    try:
        await processor.start()
        if outage == "hung":
            os.killpg(own_server.process.pid, signals.SIGSTOP)
            paused = True
        else:
            own_server.stop()
        gone.set()
        await asyncio.wait_for(sweeping.wait(), 2 * lease)  # sweeps run every lease / 2
        await asyncio.sleep(0.2)  # its first read is sent
        began = time.monotonic()
        await asyncio.wait_for(processor.stop(), 60)
        took = time.monotonic() - began
    finally:
        restarted = None
        if paused:
            os.killpg(own_server.process.pid, signals.SIGCONT)
        elif gone.is_set():  # PyMongo's close() waits out server selection for endSessions
            restarted = start_local_server(own_server.data_dir, port=own_server.port)
        closed = client.close()
        if hasattr(closed, "__await__"):
            await closed
        if restarted is not None:
            restarted.stop()
    # what is left of the lease (at most `lease`), then a second at most per step
    assert took < 2 * lease, f"stop() took {took:.1f}s with worker_timeout={lease:g}"


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_a_claim_cut_by_a_stop_in_an_outage_does_not_land_once_mongodb_is_back(
    own_server: LocalServer, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """runtime's stop: a claim still in flight when the lease ends (MongoDB unreachable) is
    cut. With Motor the claim ran on one of its threads, which the cut does not stop: once
    MongoDB was back (within the driver's serverSelectionTimeoutMS, 30 s by default) it
    landed, the job `running` on the stopped worker, which other workers then recover as a
    crashed run (an attempt used, errored when it had one) though it never ran; with PyMongo's
    async client it stayed pending. Failing with Motor before its fix."""
    from motor.motor_asyncio import AsyncIOMotorClient

    kind: Any = AsyncMongoClient if driver == "pymongo" else AsyncIOMotorClient
    client = kind(own_server.url, tz_aware=True)
    jobs = {"n": JobDef(handler=never_runs)}
    worker = await init_job_processor(
        client["app"],
        jobs=jobs,
        poll_interval=60.0,  # idle until woken below
        heartbeat_interval=1.0,
        worker_timeout=3.0,
        change_streams=False,
    )
    coll = worker.storage.jobs.coll
    real = coll.find_one_and_update
    armed, sent = False, asyncio.Event()

    async def claim(*a: Any, **kw: Any) -> Any:
        if not armed:  # found nothing, while the job is scheduled
            return None
        sent.set()
        return await real(*a, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", claim)
    restarted = None
    try:
        producer = await init_job_processor(client["app"], jobs=jobs, producer_retry_seconds=0.5)
        await worker.start()
        job = await producer.schedule_job("n")
        own_server.stop()
        with pytest.raises(DatabaseUnreachableError):  # the client has seen the server go:
            await producer.get_job(job.id)  # the claim waits to select one (not a closed socket)
        armed = True
        worker.worker.wake.set()  # its next claim, in the outage
        await asyncio.wait_for(sent.wait(), 10)
        await asyncio.wait_for(worker.stop(), 30)  # cuts the claim at the lease's end
        restarted = start_local_server(own_server.data_dir, port=own_server.port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3  # a claim left to a thread lands within ~1 s of the restart
        while loop.time() < deadline:
            found = await producer.get_job(job.id)
            assert found.status == JobStatus.PENDING, (
                f"the cut claim landed after the stop: {found.status} on {found.worker_id}"
            )
            await asyncio.sleep(0.2)
    finally:
        closed = client.close()
        if hasattr(closed, "__await__"):
            await closed
        if restarted is not None:
            restarted.stop()
