"""job_processor.sync.JobClient, as a Django or Flask app uses it: PyMongo's synchronous client,
request threads, async workers in processes of their own."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pydantic import BaseModel
from pymongo import MongoClient
from pymongo.database import Database

from job_processor import (
    DatabaseUnreachableError,
    InvalidArgumentError,
    InvalidDatabaseError,
    InvalidDefinitionError,
    InvalidPayloadError,
    JobDef,
    JobFailedError,
    JobProcessorError,
    JobSpec,
    JobStatus,
    UnknownJobError,
)
from job_processor.sync import JobClient

from .conftest import url_with_db
from .e2e.app import JOBS as APP_JOBS

ROOT = Path(__file__).resolve().parents[1]
S = JobStatus


@pytest.fixture
def worker(mongo_url: str, sync_db: Database[Any], tmp_path: Path) -> Iterator[Callable[[], None]]:
    """Start the e2e app's async worker (`job-processor run tests.e2e.app:make`) on sync_db."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        env = os.environ | {
            "MONGODB_URL": url_with_db(mongo_url, sync_db.name),
            "INSTANCE_ID": "runner-2",
            "JOB_PROCESSOR_WORKER_TAGS": "secondary",
            "E2E_CONCURRENCY": "4",
        }
        with (tmp_path / f"worker-{len(procs)}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Order(BaseModel):
    order_id: int


async def never(job: Any, signal: Any) -> None:
    raise AssertionError("a JobClient never runs handlers")


CHECKED = {
    "ship": JobDef(handler=never, payload_model=Order),
    "solo": JobDef(handler=never, concurrency="exclusive"),
}


def test_with_jobs_it_checks_like_the_async_api_before_writing(sync_db: Database[Any]) -> None:
    client = JobClient(sync_db, CHECKED)
    with pytest.raises(UnknownJobError, match=r"'shp' \(did you mean 'ship'\?\).*JobClient"):
        client.schedule_job("shp", {"order_id": 1})
    with pytest.raises(InvalidPayloadError, match="field 'order_id'"):
        client.schedule_job("ship", {"order_id": "one"})
    with pytest.raises(InvalidPayloadError, match=r"item 1: job 'ship': payload does not"):
        client.schedule_jobs([("ship", {"order_id": 1}), ("ship", {})])
    with pytest.raises(TypeError, match=r"^schedule_job\(\) .* 'prio' \(did you mean 'priority'"):
        client.schedule_job("ship", {"order_id": 1}, prio=1)
    assert client.list_jobs() == []  # nothing was written
    first = client.schedule_job("ship", {"order_id": 1}, key="o-1", delay=30)
    again = client.schedule_jobs(
        [JobSpec("ship", {"order_id": 1}, key="o-1"), ("ship", {"order_id": 2}), ("solo", {})]
    )
    assert again[0].id == first.id and again[1].status == S.PENDING
    assert client.schedule_job("solo").status == S.SKIPPED  # exclusive, one already active
    assert (first.scheduled_for - first.created_at).total_seconds() == pytest.approx(30, abs=0.01)
    assert client.kill_job(first.id).status == S.KILLED
    assert client.retry_job(first.id).status == S.PENDING  # no hook to wait for
    assert client.get_job(first.id).payload == {"order_id": 1}
    assert {j.id for j in client.list_jobs("ship", "pending")} == {first.id, again[1].id}
    stored = sync_db["job_processor_jobs"].find_one({"_id": ObjectId(first.id)})
    assert stored is not None and stored["dedup_key"]  # the async API's documents
    event = client.emit("order.shipped", {"order_id": 1}, key="ship-1")
    assert client.emit("order.shipped", {"order_id": 1}, key="ship-1").id == event.id
    assert sync_db["job_processor_events"].count_documents({}) == 1
    with pytest.raises(InvalidDatabaseError, match="synchronous MongoClient"):
        JobClient(sync_db.client)  # type: ignore[arg-type]


def test_its_events_are_kept_for_the_keep_events_it_is_given(sync_db: Database[Any]) -> None:
    """An event's expiry is written by the process that emits it. A JobClient had no
    keep_events: every event a sync app emitted was kept 30 days, whatever the workers were
    given (a soak with keep_events=5 minutes on its workers saw the events collection grow
    all along: its producer was a JobClient)."""
    import datetime as dt

    from job_processor import InvalidDefinitionError

    events = sync_db["job_processor_events"]
    short = JobClient(sync_db, keep_events=dt.timedelta(hours=2)).emit("order.shipped", {})
    stored = events.find_one({"_id": ObjectId(short.id)})
    assert stored is not None
    assert stored["expires_at"] - stored["emitted_at"] == dt.timedelta(hours=2)
    default = JobClient(sync_db).emit("order.shipped", {})  # as before: 30 days
    stored = events.find_one({"_id": ObjectId(default.id)})
    assert stored is not None
    assert stored["expires_at"] - stored["emitted_at"] == dt.timedelta(days=30)
    kept = JobClient(sync_db, keep_events=True).emit("order.shipped", {})
    stored = events.find_one({"_id": ObjectId(kept.id)})
    assert stored is not None and stored.get("expires_at") is None
    with pytest.raises(InvalidDefinitionError, match="keep_events"):
        JobClient(sync_db, keep_events=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidDefinitionError, match=r"collection_prefix 'a\.b'"):
        JobClient(sync_db, prefix="a.b")  # when made, as every option: not at the first call


def test_without_jobs_it_follows_the_registry_and_leaves_payloads_to_workers(
    sync_db: Database[Any], caplog: pytest.LogCaptureFixture
) -> None:
    sync_db["job_processor_definitions"].insert_one(
        {"_id": "solo", "kind": "job", "concurrency": "exclusive", "max_attempts": 3}
    )
    client = JobClient(sync_db)
    solo = client.schedule_job("solo")
    assert solo.max_attempts == 3
    assert client.schedule_job("solo").status == S.SKIPPED  # exclusive, from the registry
    with caplog.at_level(logging.WARNING, logger="job_processor.sync"):
        unknown = client.schedule_job("sollo", {"anything": True})  # written as is
    assert unknown.status == S.PENDING
    [warned] = [r for r in caplog.records if r.__dict__.get("event") == "job_name_not_registered"]
    assert "(did you mean 'solo'?)" in warned.__dict__["fields"]["hint"]
    with pytest.raises(InvalidArgumentError, match=r"job 'a\|b': a job name may not contain"):
        client.schedule_job("a|b", key="c")  # no worker can define it ('a' keyed 'b|c')


def test_threads_produce_and_wait_on_jobs_async_workers_run(
    sync_db: Database[Any], worker: Callable[[], None]
) -> None:
    client = JobClient(sync_db, APP_JOBS)  # one per process, shared by the request threads
    worker()
    worker()
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def request_thread(n: int) -> None:
        try:
            job = client.schedule_job("anywhere", {"n": n})
            results[n] = client.result(job.id, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request_thread, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(16))
    assert all(r["pid"] != os.getpid() for r in results.values())  # run by the worker processes
    assert sync_db["job_processor_jobs"].count_documents({"name": "anywhere"}) == 16

    refused = client.schedule_job("refused", {"what": "the upload"})
    with pytest.raises(JobFailedError) as caught:
        client.result(refused.id, timeout=30)
    assert caught.value.status == "errored" and "refused the upload" in str(caught.value.error)
    blocked = client.schedule_job("long-plain")
    with pytest.raises(TimeoutError, match=rf"job {blocked.id} \(long-plain\) is still"):
        client.wait_for(blocked.id, timeout=1)
    deadline = time.monotonic() + 20
    while client.get_job(blocked.id).status != S.RUNNING:
        assert time.monotonic() < deadline, "the worker never started it"
        time.sleep(0.05)
    client.kill_job(blocked.id)  # the worker process aborts it
    assert client.wait_for(blocked.id, timeout=30).status == S.KILLED


def test_a_retry_whose_hook_no_worker_runs_is_refused_without_holding_the_thread(
    sync_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JobClient calls no hook: the kill's owed hook waits for a worker. A retry meanwhile
    waits HOOK_WAIT seconds (10; shortened here), then is refused saying why."""
    from job_processor.engine import jobs_api

    async def hook(job: Any) -> None: ...

    monkeypatch.setattr(jobs_api, "HOOK_WAIT", 0.5)
    client = JobClient(sync_db, {"mail": JobDef(handler=never, on_job_exited=hook)})
    job = client.schedule_job("mail")
    assert client.kill_job(job.id).status == S.KILLED  # its hook is owed to a worker
    began = time.monotonic()
    with pytest.raises(JobProcessorError, match="on_job_exited for the killed exit has not run"):
        client.retry_job(job.id)
    assert time.monotonic() - began < 5
    assert client.get_job(job.id).status == S.KILLED


FORKED_APP = """
import multiprocessing, sys
from pymongo import MongoClient
from job_processor import JobDef
from job_processor.sync import JobClient

async def never(job, signal): ...

# at import time, as a module of a gunicorn --preload app: made before the fork
mongo = MongoClient(sys.argv[1], tz_aware=True, connect=False)
jobs = JobClient(mongo.get_default_database(), {"send": JobDef(handler=never)})

def request(n):
    return jobs.schedule_job("send", {"n": n}).id

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(3) as pool:
        print(len(set(pool.map(request, range(6)))))
"""


def test_a_client_made_before_a_fork_connects_in_each_child_only(
    scratch_url: str, tmp_path: Path
) -> None:
    """A JobClient made at import time (gunicorn --preload forks after it) connected there: the
    parent's MongoClient, even one made with connect=False, was opened before the fork, and
    PyMongo warned in every child ("MongoClient opened before fork", a deadlock risk)."""
    script = tmp_path / "forked_app.py"
    script.write_text(FORKED_APP)
    done = subprocess.run(
        [sys.executable, str(script), scratch_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"
    assert "fork" not in done.stderr, done.stderr
    mongo: MongoClient[Any] = MongoClient(scratch_url)
    try:
        assert mongo.get_default_database()["job_processor_jobs"].count_documents({}) == 6
    finally:
        mongo.close()


def test_a_client_reaches_mongodb_on_its_first_call_not_when_made() -> None:
    """Importing an app that makes its JobClient (manage.py collectstatic in a Docker build,
    with no database) neither waits nor fails: the first call does, saying what to check."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed: nothing listens there
    mongo: MongoClient[Any] = MongoClient(f"mongodb://127.0.0.1:{port}/app", connect=False)
    try:
        client = JobClient(mongo.get_default_database(), CHECKED, connect_timeout=0.5)  # no wait
        with pytest.raises(DatabaseUnreachableError, match=f"127.0.0.1:{port}.*MONGODB_URL"):
            client.schedule_job("ship", {"order_id": 1})
        # request threads arriving together share one attempt: each used to wait for the one
        # before it to time out (the 8th of a gthread worker's requests waited 8 x 10 s)
        errors: list[BaseException] = []

        def request() -> None:
            try:
                client.schedule_job("ship", {"order_id": 1})
            except BaseException as exc:
                errors.append(exc)

        attempts: list[float] = []
        make = client._init

        def counted() -> Any:
            attempts.append(time.monotonic())
            return make()

        client._init = counted  # type: ignore[assignment]
        threads = [threading.Thread(target=request) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(errors) == 8
        assert all(isinstance(e, DatabaseUnreachableError) for e in errors)
        # one attempt, or two when a thread came after the first had failed: never eight
        assert 1 <= len(attempts) < 8, attempts
    finally:
        mongo.close()


def test_a_closed_mongo_client_is_said_as_such_at_the_first_call_too(mongo_url: str) -> None:
    """A MongoClient the app closed (a shutdown hook, a test's teardown) is a programming
    error, raised as the driver says it on every call: the first call called it an outage,
    "cannot reach MongoDB ... within 10s ... check MONGODB_URL and that the server is
    running", at once, with the server up."""
    from pymongo.errors import InvalidOperation

    mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
    client = JobClient(mongo["app"], CHECKED)
    mongo.close()
    for _ in range(2):  # the first call (which checks MongoDB answers), then another
        with pytest.raises(InvalidOperation, match="after close"):
            client.schedule_job("ship", {"order_id": 1})


async def test_in_an_async_function_it_refuses_to_wait_and_warns_on_other_calls(
    sync_db: Database[Any],
) -> None:
    """Called from an `async def` view, JobClient.result blocked the event loop: a worker in
    that loop could not run the job, and the wait ended in a TimeoutError blaming busy
    workers (or never, without a timeout)."""
    client = JobClient(sync_db, CHECKED)
    with pytest.warns(RuntimeWarning, match=r"schedule_job blocks the asyncio event loop") as w:
        job = client.schedule_job("ship", {"order_id": 1})
    assert w[0].filename == __file__  # points at the call
    for wait in (client.result, client.wait_for):
        with pytest.raises(JobProcessorError, match=r"await processor\.\w+\(.*asyncio.to_thread"):
            wait(job.id, 1)
    with pytest.warns(RuntimeWarning, match=r"emit blocks .* its sync subscribers' deliveries"):
        client.emit("order.shipped", {"order_id": 1})  # (it waits for those, up to sync_timeout)
    await asyncio.to_thread(client.kill_job, job.id)  # as the errors say: no warning
    assert (await asyncio.to_thread(client.wait_for, job.id, 5)).status == S.KILLED


def test_sent_to_another_process_it_says_to_make_one_there(sync_db: Database[Any]) -> None:
    """multiprocessing pickles a Pool's arguments: a JobClient passed to one failed with
    "cannot pickle '_thread.lock' object", naming neither the client nor the fix."""
    import pickle

    with pytest.raises(TypeError, match=r"JobClient cannot be sent to another process.*each"):
        pickle.dumps(JobClient(sync_db, CHECKED))


def test_a_copy_is_the_same_client(sync_db: Database[Any]) -> None:
    """Django deep-copies what `setUpTestData` sets on a test case: a copy within the process is
    the client itself (its MongoClient and registry are shared, as every thread shares them)."""
    import copy

    client = JobClient(sync_db, CHECKED)
    assert copy.copy(client) is client and copy.deepcopy({"c": client})["c"] is client


class Interrupted(BaseException):
    """What interrupts one thread or greenlet only (gevent.Timeout is a BaseException)."""


def shared_attempt(
    monkeypatch: pytest.MonkeyPatch, client: JobClient, failure: BaseException, waiters: int
) -> tuple[list[BaseException | None], list[int]]:
    """`waiters` threads call while a first thread's attempt is under way; that attempt ends with
    `failure`, any later one succeeds. Returns each thread's error (the first thread's first)
    and how many attempts were made."""
    import concurrent.futures

    from job_processor import sync

    arrived = threading.Semaphore(0)

    class Counted(concurrent.futures.Future[Any]):  # a thread waiting for the attempt
        def result(self, timeout: float | None = None) -> Any:
            arrived.release()
            return super().result(timeout)

        def exception(self, timeout: float | None = None) -> BaseException | None:
            arrived.release()
            return super().exception(timeout)

    monkeypatch.setattr(sync, "Future", Counted)
    entered, release = threading.Event(), threading.Event()
    attempts: list[int] = []

    async def init() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            entered.set()
            release.wait(30)
            raise failure
        return type("Made", (), {})()

    client._init = init  # type: ignore[method-assign,assignment]
    errors: list[BaseException | None] = [None] * (waiters + 1)

    def request(i: int) -> None:
        try:
            client._processor("get_job")
        except BaseException as exc:
            errors[i] = exc

    first = threading.Thread(target=request, args=(0,))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=request, args=(i + 1,)) for i in range(waiters)]
    for t in others:
        t.start()
    for _ in others:
        assert arrived.acquire(timeout=30)
    release.set()
    for t in [first, *others]:
        t.join(30)
    return errors, [len(attempts)]


def test_threads_sharing_a_failed_attempt_each_raise_their_own_error(
    sync_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One exception raised in several threads at once: each raise adds the raising thread's
    frames to it, so a request's traceback (what Flask logs, Django's debug page shows) held the
    frames, and kept alive the locals, of the other requests."""
    import traceback

    client = JobClient(sync_db, CHECKED)
    errors, attempts = shared_attempt(
        monkeypatch, client, DatabaseUnreachableError("MongoDB is down"), waiters=3
    )
    assert attempts == [1]
    assert all(isinstance(e, DatabaseUnreachableError) for e in errors)
    assert len({id(e) for e in errors}) == 4
    for error in errors:
        assert error is not None
        frames = [f.name for f in traceback.extract_tb(error.__traceback__)]
        assert frames.count("request") == 1, frames


def test_a_thread_interrupted_during_the_attempt_leaves_the_others_to_try_again(
    sync_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What interrupts the thread making the attempt (a KeyboardInterrupt in the main thread, a
    gevent.Timeout in a greenlet) is that thread's: the threads waiting for the attempt make
    another one instead of being interrupted too."""
    client = JobClient(sync_db, CHECKED)
    errors, attempts = shared_attempt(monkeypatch, client, Interrupted(), waiters=2)
    assert isinstance(errors[0], Interrupted)
    assert errors[1:] == [None, None]
    assert attempts == [2]


def test_a_scheduled_for_outside_the_utc_range_is_an_invalid_argument(sync_db: Any) -> None:
    import datetime as dt

    when = dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    for client in (JobClient(sync_db, APP_JOBS), JobClient(sync_db)):
        with pytest.raises(InvalidArgumentError, match="scheduled_for"):  # a bare OverflowError
            client.schedule_job("anywhere", {}, scheduled_for=when)


def test_list_jobs_refuses_a_name_that_is_not_a_string(sync_db: Database[Any]) -> None:
    """`name` went into the query as given: a dict (a JSON body's `{"$ne": ...}`) was read as
    query operators and listed every other name's jobs, an int listed nothing, a list raised
    the driver's OperationFailure. Checked, as `limit` and `status` are."""
    client = JobClient(sync_db, {"x": JobDef(handler=never), "payroll": JobDef(handler=never)})
    client.schedule_job("x")
    client.schedule_job("payroll")
    assert [j.name for j in client.list_jobs(name="x")] == ["x"]
    for bad in ({"$ne": "x"}, {"$regex": "^p"}, 3, ["x"]):
        with pytest.raises(InvalidArgumentError, match="name must be a job name"):
            client.list_jobs(name=bad)  # type: ignore[arg-type]


def test_a_client_reading_raw_bson_documents_still_works(mongo_url: str) -> None:
    """The collections kept the client's document class: MongoClient(document_class=
    RawBSONDocument) failed the first call ('RawBSONDocument' object does not support item
    assignment)."""
    from bson.raw_bson import RawBSONDocument

    mongo: MongoClient[Any] = MongoClient(mongo_url, document_class=RawBSONDocument)
    name = f"jp_test_raw_{ObjectId()}"
    try:
        client = JobClient(mongo[name], {"x": JobDef(handler=never)})
        job = client.schedule_job("x", {"a": 1})
        assert client.get_job(job.id).payload == {"a": 1}
    finally:
        mongo.drop_database(name)
        mongo.close()


def test_every_option_is_checked_when_the_client_is_made(sync_db: Database[Any]) -> None:
    """A logger that is none, and a job named like the webhook deliveries, passed construction
    and failed every call (an app imported under gunicorn --preload answered 500s); jobs= as
    a list raised a bare AttributeError."""
    from job_processor import InvalidDefinitionError

    with pytest.raises(InvalidDefinitionError, match="logger"):
        JobClient(sync_db, logger=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidDefinitionError, match="taken by event deliveries"):
        JobClient(sync_db, {"webhook-delivery": JobDef(handler=never)})
    with pytest.raises(InvalidDefinitionError, match="jobs must be a dict of name"):
        JobClient(sync_db, [JobDef(handler=never)])  # type: ignore[arg-type]
    assert "job_processor_jobs" not in sync_db.list_collection_names()


async def _exited(job: Any) -> None: ...


@pytest.mark.filterwarnings("ignore:JobClient.retry_job blocks:RuntimeWarning")
async def test_in_an_async_function_a_retry_never_holds_the_loop_for_an_owed_hook(
    sync_db: Database[Any],
) -> None:
    """retry_job of a job whose on_job_exited is still owed waits up to HOOK_WAIT (10 s),
    polling with time.sleep, for a worker to run the hook. Called in a thread running an event
    loop it only warned, then held the loop (every request, and a worker in that loop, the one
    that would run the hook) for the whole 10 s, and was refused anyway: refused at once now,
    saying to use the async API or a thread."""
    client = JobClient(sync_db, {"hooked": JobDef(handler=never, on_job_exited=_exited)})
    job = await asyncio.to_thread(client.schedule_job, "hooked", delay=3600)
    await asyncio.to_thread(client.kill_job, job.id)  # the hook is owed, to a worker's sweep
    stored = sync_db["job_processor_jobs"].find_one({"_id": ObjectId(job.id)})
    assert stored is not None and stored["exit_hook"] == "owed"
    began = time.monotonic()
    with pytest.raises(JobProcessorError, match=r"event loop.*asyncio\.to_thread") as refused:
        client.retry_job(job.id)
    assert time.monotonic() - began < 5, "the event loop was held waiting for the hook"
    assert "on_job_exited for the killed exit has not run yet" in str(refused.value)
    with (
        pytest.warns(RuntimeWarning, match=r"refused if the exit it retries still owes"),
        pytest.raises(JobProcessorError),
    ):
        client.retry_job(job.id)


def test_a_long_timeout_without_retries_waits_instead_of_overflowing(
    sync_db: Database[Any],
) -> None:
    """With producer_retry_seconds=0 each read was bounded by the whole wait: a timeout of
    1e10 s made a socket timeout past what the platform's time_t holds (a bare
    OverflowError, for a job long ended). Each read's bound is capped; the wait reads again."""
    client = JobClient(sync_db, CHECKED, producer_retry_seconds=0)
    job = client.schedule_job("ship", {"order_id": 1})
    client.kill_job(job.id)
    assert client.wait_for(job.id, timeout=1e10).status == S.KILLED


def test_a_retry_budget_past_a_year_is_refused_naming_the_option(sync_db: Database[Any]) -> None:
    """1e10 passed the check, then every call overflowed inside the driver's timeout."""
    with pytest.raises(InvalidDefinitionError, match=r"producer_retry_seconds .*at most"):
        JobClient(sync_db, CHECKED, producer_retry_seconds=1e10)


def test_a_first_call_to_a_server_that_never_answers_says_so_as_the_async_api_does() -> None:
    """A port that accepts connections but never answers (another kind of server, a MongoDB
    too busy): init_job_processor says "something listens there but does not answer as MongoDB
    does"; the JobClient said only the driver's "(No servers found yet)"."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # accepts, never answers
        port = sock.getsockname()[1]
        mongo: MongoClient[Any] = MongoClient(f"mongodb://127.0.0.1:{port}/app", connect=False)
        try:
            client = JobClient(mongo.get_default_database(), CHECKED, connect_timeout=0.5)
            with pytest.raises(DatabaseUnreachableError) as caught:
                client.get_jobs([])
        finally:
            mongo.close()
    assert "does not answer as MongoDB does" in str(caught.value), str(caught.value)


def test_a_refused_retry_of_a_killed_hookless_job_leaves_its_exit_owed(
    sync_db: Database[Any],
) -> None:
    """A JobClient's kill leaves the exit owed to a worker (only a worker knows the retention
    its record writes). A retry refused because another job holds the exclusive key leaves it
    owed (it recorded it as settled, with no expiry, first: the killed job was kept for ever,
    no sweep records an exit that is not owed); once the key is free the retry goes through."""
    client = JobClient(sync_db, {"report": JobDef(handler=never, concurrency="exclusive")})
    killed = client.schedule_job("report")
    assert client.kill_job(killed.id).status == S.KILLED
    holder = client.schedule_job("report")
    assert holder.status == S.PENDING
    with pytest.raises(JobProcessorError, match="cannot retry while"):
        client.retry_job(killed.id)
    doc = sync_db["job_processor_jobs"].find_one({"_id": ObjectId(killed.id)})
    assert doc is not None and doc["status"] == "killed" and doc["exit_hook"] == "owed"
    client.kill_job(holder.id)
    assert client.retry_job(killed.id).status == S.PENDING


def test_a_retry_of_a_killed_hookless_job_interrupted_midway_leaves_its_exit_owed(
    sync_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (a KeyboardInterrupt, raised in the calling thread, inside the retry's own
    write) after the retry recorded the exit as settled with no expiry: only an Exception
    restored the owed exit, so the killed job was kept for ever."""
    client = JobClient(sync_db, {"report": JobDef(handler=never)})
    killed = client.schedule_job("report")
    assert client.kill_job(killed.id).status == S.KILLED
    made = client._made
    assert made is not None

    async def interrupted(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(made.storage.jobs, "retry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.retry_job(killed.id)
    monkeypatch.undo()
    doc = sync_db["job_processor_jobs"].find_one({"_id": ObjectId(killed.id)})
    assert doc is not None and doc["status"] == "killed" and doc["exit_hook"] == "owed", doc
    assert client.retry_job(killed.id).status == S.PENDING
