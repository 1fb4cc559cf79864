"""Jobs another program inserted in shapes beside the documented minimal one: a minimal
document that also gives `created_at`, dates written as ISO text without an offset."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from job_processor import AbortSignal, Job, JobDef, JobStatus
from tests.helpers import make, wait_status

S = JobStatus


async def send(job: Job, signal: AbortSignal) -> str:
    return f"sent to {job.payload['to']}"


async def test_a_minimal_document_that_also_gives_created_at_runs(db: Any) -> None:
    """The minimal document plus a `created_at` (mongosh's `created_at: new Date()`, what
    producers habitually add): the worker filled in the rest only when `created_at` was
    missing, so the job was errored for good, "invalid job document: field 'scheduled_for':
    Field required", a field scale.md never asks for."""
    processor = await make(db, {"send-email": JobDef(handler=send, max_attempts=3)})
    raw = {
        "name": "send-email",
        "claim_name": "send-email",
        "due_ms": int(time.time() * 1000),
        "payload": {"to": "ada@example.com"},
        "created_at": dt.datetime.now(dt.UTC),
    }
    inserted = await db["job_processor_jobs"].insert_one(raw)
    job_id = str(inserted.inserted_id)
    before = await processor.get_job(job_id)  # read before its first claim: no invalid fields
    assert before.status == S.PENDING and not before.invalid_fields, before.invalid_fields
    async with processor:
        done = await wait_status(processor, job_id, S.FINISHED, S.ERRORED)
    assert (done.status, done.error) == (S.FINISHED, None)
    assert done.result == "sent to ada@example.com"
    assert done.max_attempts == 3  # from its definition
    assert done.scheduled_for == dt.datetime.fromtimestamp(raw["due_ms"] / 1000, tz=dt.UTC)


@pytest.mark.parametrize("text", ["2024-01-02", "2024-01-02T10:00", "2024-01-02T10:00:00+02:00"])
async def test_a_date_written_as_text_reads_as_aware_utc(db: Any, text: str) -> None:
    """A date another program wrote as ISO text with no offset or no seconds (JSON has no
    date type) was read by pydantic as a NAIVE datetime: the handler's `job.scheduled_for`,
    and the dashboard's job page, which compared it with an aware now (500)."""
    seen: list[dt.datetime] = []

    async def record(job: Job, signal: AbortSignal) -> None:
        seen.append(job.scheduled_for)

    processor = await make(db, {"send": JobDef(handler=record)})
    doc = {
        "name": "send",
        "claim_name": "send",
        "due_ms": int(time.time() * 1000),
        "payload": {},
        "scheduled_for": text,
    }
    inserted = await db["job_processor_jobs"].insert_one(doc)
    expected = dt.datetime.fromisoformat(text)
    expected = expected if expected.tzinfo else expected.replace(tzinfo=dt.UTC)
    read = await processor.get_job(str(inserted.inserted_id))
    assert read.scheduled_for == expected and read.scheduled_for.utcoffset() == dt.timedelta(0)
    async with processor:
        await wait_status(processor, str(inserted.inserted_id), S.FINISHED, S.ERRORED)
    assert seen == [expected] and seen[0].utcoffset() == dt.timedelta(0), seen


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
async def test_a_bare_insert_with_an_out_of_range_text_date_never_stops_a_worker(
    db: Any, when: str
) -> None:
    """A bare insert whose scheduled_for is ISO text that parses but that UTC cannot hold:
    reading it raised OverflowError, which the start's sweep did not catch: no worker could
    start while it was there (and, kept as written, it broke jobs list, jobs show and the
    dashboard, and a bare insert due then ran at once). It reads as the nearest date UTC
    holds: a job due "never" is not run."""
    from bson import ObjectId

    processor = await make(db, {"send-email": JobDef(handler=send)})
    old = ObjectId.from_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2))
    coll = db["job_processor_jobs"]
    await coll.insert_one({"_id": old, "name": "send-email", "payload": {}, "scheduled_for": when})
    async with processor:
        good = await processor.schedule_job("send-email", {"to": "bob@example.com"})
        await wait_status(processor, good.id, S.FINISHED)
    read = await processor.get_job(str(old))  # read, not failing
    nearest = dt.datetime.max if when.startswith("9999") else dt.datetime.min
    assert read.scheduled_for == nearest.replace(tzinfo=dt.UTC), read
    if when.startswith("9999"):
        assert read.status == S.PENDING, read  # adopted, due "never": not run
    assert str(old) in [j.id for j in await processor.list_jobs()]
