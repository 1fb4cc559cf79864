"""Bad input: clear errors naming the job, the field and the fix; nothing half-written."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from job_processor import (
    AbortSignal,
    InvalidDatabaseError,
    InvalidDefinitionError,
    InvalidPayloadError,
    Job,
    JobDef,
    JobNotFoundError,
    JobStatus,
    UnknownJobError,
    init_job_processor,
)

from .helpers import make


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


JOBS = {"send-email": JobDef(handler=noop)}


async def test_sync_database_is_refused_with_the_fix(mongo_url: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        with pytest.raises(InvalidDatabaseError, match="AsyncMongoClient"):
            await init_job_processor(client["x"], jobs=JOBS)
    finally:
        client.close()


async def test_client_instead_of_database_is_refused(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        with pytest.raises(InvalidDatabaseError, match=r"client\['mydb'\]"):
            await init_job_processor(client, jobs=JOBS)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"worker_tags": []}, "worker_tags=[]"),
        ({"worker_tags": "main"}, "list of strings"),
        ({"concurrency": 0}, "concurrency"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"heartbeat_interval": 10, "worker_timeout": 5}, "twice heartbeat_interval"),
        ({"collection_prefix": "a.b"}, "collection_prefix"),
        ({"jobs": {"x": {"handler": noop, "resumable": "maybe"}}}, "job 'x': field 'resumable'"),
    ],
)
async def test_invalid_options(db: Any, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        await init_job_processor(db, **({"jobs": JOBS} | kwargs))
    assert needle in str(err.value)


async def test_bad_job_calls_name_the_job(db: Any) -> None:
    processor = await make(db, JOBS)
    with pytest.raises(UnknownJobError, match=r"unknown job .send-mail.*known jobs: send-email"):
        await processor.schedule_job("send-mail", {})
    with pytest.raises(InvalidPayloadError, match=r"job .send-email.: payload must be a dict"):
        await processor.schedule_job("send-email", ["a"])  # type: ignore[arg-type]
    with pytest.raises(InvalidPayloadError, match=r"job .send-email.: payload cannot be stored"):
        await processor.schedule_job("send-email", {"obj": object()})
    with pytest.raises(UnknownJobError):
        await processor.run_job("nope")
    with pytest.raises(JobNotFoundError, match="not a job id"):
        await processor.get_job("123")
    with pytest.raises(JobNotFoundError, match="no job with id"):
        await processor.kill_job("0123456789ab0123456789ab")
    assert await processor.list_jobs() == []  # nothing half-written


async def test_get_status_shows_workers_jobs_and_queue(db: Any) -> None:
    import asyncio

    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    processor = await make(db, {"hold": JobDef(handler=hold), "later": JobDef(handler=noop)})
    async with processor:
        running = await processor.schedule_job("hold")
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        await processor.schedule_job("later", scheduled_for=future)
        for _ in range(100):
            if (await processor.get_job(running.id)).status == JobStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
        status = await processor.get_status()
        release.set()
    (me,) = status.workers
    assert me.id == processor.worker_id
    assert me.alive
    assert [j["id"] for j in me.running_jobs] == [running.id]
    assert status.queue == {"pending": 1, "due": 0, "paused": 0, "running": 1}
    assert status.jobs["hold"] == {"running": 1}
    assert status.jobs["later"] == {"pending": 1}


async def test_stdlib_logger_gets_structured_events(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("myservice.jobs")
    processor = await init_job_processor(db, logger=logger, jobs=JOBS)
    with caplog.at_level(logging.INFO, logger="myservice.jobs"):
        done = await processor.run_job("send-email")
    events = [r.__dict__.get("event") for r in caplog.records]
    assert "job_started" in events
    assert "job_finished" in events
    finished = next(r for r in caplog.records if r.__dict__.get("event") == "job_finished")
    assert finished.__dict__["fields"]["job_id"] == done.id
    assert finished.__dict__["fields"]["job_name"] == "send-email"
