"""job_processor.sync.JobClient's producer verbs at their edges (an outside review's findings):
an emit that waits for sync subscribers, a Job given where an id is expected, what a wait
reads, the registry read again when a name is missing, one warning per batch, the first
call's wait bounded by its timeout, batch errors naming the item."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from job_processor import AbortSignal, Event, Subscriber, init_job_processor
from job_processor.sync import JobClient
from tests.helpers import FAST


async def never(job: Any, signal: Any) -> None:
    raise AssertionError("a JobClient never runs handlers")


async def test_an_emit_waits_for_its_sync_subscriber(mongo_url: str, db: Any) -> None:
    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    worker = await init_job_processor(
        db, subscribers={"paid": [Subscriber("audit", handler=audit, mode="sync")]}, **FAST
    )

    def from_a_web_app() -> Any:
        mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
        try:
            return JobClient(mongo[db.name]).emit("paid", {"n": 1}, sync_timeout=20)
        finally:
            mongo.close()

    async with worker:  # it runs the delivery
        event = await asyncio.to_thread(from_a_web_app)
    assert [d.status for d in event.deliveries] == ["finished"]


async def test_an_emit_whose_sync_subscriber_nobody_runs_times_out(db: Any, mongo_url: str) -> None:
    from job_processor import EventTimeoutError

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    # registers the subscriber; never started: no worker runs the delivery
    await init_job_processor(
        db, subscribers={"paid": [Subscriber("audit", handler=audit, mode="sync")]}, **FAST
    )

    def from_a_web_app() -> Any:
        mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
        try:
            return JobClient(mongo[db.name]).emit("paid", {"n": 1}, sync_timeout=0.5)
        finally:
            mongo.close()

    with pytest.raises(EventTimeoutError, match="'audit' is pending"):
        await asyncio.to_thread(from_a_web_app)


def test_a_job_given_for_its_id_is_taken_and_never_shown(sync_db: Database[Any]) -> None:
    from job_processor import JobDef, JobNotFoundError

    client = JobClient(sync_db, {"charge": JobDef(handler=never)})
    job = client.schedule_job("charge", {"card": "4111-1111-1111-1111"})
    assert client.get_job(job).id == job.id  # type: ignore[arg-type]
    with pytest.raises(TimeoutError) as caught:  # still pending at the deadline
        client.result(job, timeout=0.2)  # type: ignore[arg-type]
    assert "4111" not in str(caught.value)
    with pytest.raises(JobNotFoundError, match=r"^a dict is not a job id: pass the job's id"):
        client.get_job({"card": "4111-1111-1111-1111"})  # type: ignore[arg-type]
    with pytest.raises(JobNotFoundError, match=r"^'x{40}\.\.\.' is not a job id"):
        client.get_job("x" * 5000)


def test_get_jobs_given_one_id_says_it_takes_a_list(sync_db: Database[Any]) -> None:
    from job_processor import InvalidArgumentError, JobDef

    client = JobClient(sync_db, {"charge": JobDef(handler=never)})
    job = client.schedule_job("charge", {})
    with pytest.raises(InvalidArgumentError, match=r"get_jobs takes a list of job ids, got a str"):
        client.get_jobs(job.id)  # type: ignore[arg-type]
    assert [j.id for j in client.get_jobs([job.id, job])] == [job.id, job.id]  # type: ignore[list-item]


class FindReplies(monitoring.CommandListener):
    """The bytes of `find` replies on a client (PyMongo's command monitoring)."""

    def __init__(self) -> None:
        self.bytes = 0

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        import bson

        if event.command_name == "find":
            self.bytes += len(bson.encode(event.reply))

    def failed(self, event: Any) -> None:
        pass


def test_a_waits_polls_leave_out_what_can_be_large(mongo_url: str) -> None:
    from job_processor import JobDef

    mib = 1024 * 1024
    replies = FindReplies()
    mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True, event_listeners=[replies])
    db = mongo[f"jp_sync_{uuid.uuid4().hex[:10]}"]
    try:
        client = JobClient(db, {"big": JobDef(handler=never)})
        job = client.schedule_job("big", {"blob": "x" * (4 * mib)})
        replies.bytes = 0
        with pytest.raises(TimeoutError, match="pending"):
            client.wait_for(job.id, timeout=1.5)  # 5 polls or so, the job still pending
        assert replies.bytes < mib
        ended_now = {"$set": {"status": "finished"}}
        db["job_processor_jobs"].update_one({"_id": ObjectId(job.id)}, ended_now)
        replies.bytes = 0
        ended = client.wait_for(job.id, timeout=5)  # ended: read whole, once
        assert ended.payload["blob"] == "x" * (4 * mib) and 4 * mib < replies.bytes < 5 * mib
    finally:
        mongo.drop_database(db.name)
        mongo.close()


def test_an_open_client_reads_the_registry_again_for_a_name_it_does_not_hold(
    sync_db: Database[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from job_processor.engine import jobs_api

    client = JobClient(sync_db)
    with caplog.at_level(logging.WARNING):
        client.schedule_job("ping")  # reads the registry (and warns: no worker has "ping")
    # a worker deployed since registers "nightly"
    sync_db["job_processor_definitions"].insert_one(
        {"_id": "nightly", "kind": "job", "concurrency": "exclusive", "max_attempts": 5}
    )
    monkeypatch.setattr(jobs_api, "REGISTRY_MISS_TTL", 0.0)  # the last read is old enough
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        job = client.schedule_job("nightly")
    assert "job_name_not_registered" not in caplog.text
    assert job.max_attempts == 5


def test_a_batch_of_an_unregistered_name_warns_once(
    sync_db: Database[Any], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    client = JobClient(sync_db)
    with caplog.at_level(logging.WARNING):
        jobs = client.schedule_jobs([("new-name", {"i": i}) for i in range(300)])
    assert len(jobs) == 300
    assert caplog.text.count("job_name_not_registered") == 1


def test_a_tag_for_an_unregistered_name_is_said_so(sync_db: Database[Any]) -> None:
    """It said the tag "differs from its definition's (None)" for a name with no definition
    known at all; nothing is written."""
    from job_processor import InvalidArgumentError, JobSpec

    client = JobClient(sync_db)
    said = r"^item 0: job 'new-name': tag 'gpu' given for a name no worker has registered"
    with pytest.raises(InvalidArgumentError, match=said):
        client.schedule_jobs([JobSpec("new-name", {}, tag="gpu")])
    assert sync_db["job_processor_jobs"].count_documents({}) == 0


def test_a_batchs_errors_name_the_item(sync_db: Database[Any]) -> None:
    from job_processor import InvalidArgumentError, JobDef, JobNotFoundError, JobSpec

    client = JobClient(sync_db, {"b": JobDef(handler=never)})
    missing = "0" * 24
    with pytest.raises(JobNotFoundError, match=rf"^item 2: job 'b': after names .*{missing}"):
        client.schedule_jobs([("b", {}), ("b", {}), JobSpec("b", {}, after=[missing])])
    with pytest.raises(InvalidArgumentError, match=r"^item 1: job 'b': after must be a list"):
        client.schedule_jobs([("b", {}), JobSpec("b", {}, after=5)])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"^schedule_jobs takes a list .* NoneType"):
        client.schedule_jobs(None)  # type: ignore[arg-type]
    assert sync_db["job_processor_jobs"].count_documents({}) == 0  # nothing written


def test_a_sync_call_cut_by_its_own_budget_between_two_commands_says_so(mongo_url: str) -> None:
    """pymongo.timeout running out between two commands raises ExecutionTimeout (not a
    transient error): it went through raw, and a schedule_job whose registration outlasted
    producer_retry_seconds raised after its job was stored."""
    import time

    from job_processor import DatabaseUnreachableError
    from job_processor.storage.sync_adapter import drive
    from job_processor.storage.transient import ProducerRetry

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    coll = client[f"jp_sync_{uuid.uuid4().hex[:10]}"]["c"]
    answered: list[float] = []
    try:
        coll.insert_one({"x": 1})
        retry = ProducerRetry(0.5, sync=True, where=lambda: "db.example:27017")

        async def op(retried: bool) -> None:
            while True:  # a long call: each command answered at once
                coll.find_one({})
                answered.append(time.monotonic())

        # cut between two commands: "did not all complete"; on a loaded machine the budget
        # may run out inside a command instead (a network timeout, transient): "did not answer"
        with pytest.raises(
            DatabaseUnreachableError, match=r"did not all complete within|did not answer for"
        ):
            drive(retry.run(op))
    finally:
        client.drop_database(coll.database.name)
        client.close()
    assert len(answered) >= 2, "commands were answered: the budget cut the call between two"


async def test_an_open_client_refuses_to_schedule_an_event_delivery_by_hand(
    mongo_url: str, db: Any
) -> None:
    """A delivery job ('<event>:<subscriber>', 'webhook-delivery') is made by emit() and
    replays only: the async API and the admin refuse the name; a JobClient without jobs=
    wrote it, and the worker failed it ("'None' is not an event id"), retrying it."""
    from job_processor import InvalidArgumentError

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    worker = await init_job_processor(
        db, subscribers={"paid": [Subscriber("audit", handler=audit)]}, **FAST
    )
    mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
    client = JobClient(mongo[db.name])  # open names: the registry the workers keep
    try:
        async with worker:  # registers 'paid:audit' and 'webhook-delivery' (delivery: true)
            for name in ("paid:audit", "webhook-delivery"):
                with pytest.raises(InvalidArgumentError, match="event delivery"):
                    await asyncio.to_thread(client.schedule_job, name, {"n": 1})
                with pytest.raises(InvalidArgumentError, match="event delivery"):
                    await asyncio.to_thread(client.schedule_jobs, [(name, {"n": 1})])
        assert await db["job_processor_jobs"].count_documents({}) == 0
    finally:
        mongo.close()


async def test_an_open_client_refuses_a_delivery_registered_before_the_mark(
    mongo_url: str, db: Any
) -> None:
    """A registry row of '<event>:<subscriber>' written by a worker of a version before the
    `delivery` mark: the admin refuses it (it reads the subscribers); the open JobClient
    wrote the job, which no emit made."""
    from job_processor import InvalidArgumentError
    from job_processor.admin import Admin

    async def audit(event: Event, signal: AbortSignal) -> None:
        return None

    worker = await init_job_processor(
        db, subscribers={"paid": [Subscriber("audit", handler=audit)]}, **FAST
    )
    async with worker:
        pass  # registers 'paid:audit' and its subscriber
    await db["job_processor_definitions"].update_one(
        {"_id": "paid:audit"}, {"$unset": {"delivery": ""}}
    )
    with pytest.raises(InvalidArgumentError, match="event delivery"):
        await Admin(db).new_job("paid:audit", {"n": 1})
    mongo: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
    try:
        client = JobClient(mongo[db.name])
        with pytest.raises(InvalidArgumentError, match="event delivery"):
            await asyncio.to_thread(client.schedule_job, "paid:audit", {"n": 1})
        assert await db["job_processor_jobs"].count_documents({}) == 0
    finally:
        mongo.close()
