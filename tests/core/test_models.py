from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from bson import ObjectId

from job_processor import Job, JobStatus
from job_processor.core.status import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransitionError,
    check_transition,
)

S = JobStatus


def test_every_status_is_active_or_terminal() -> None:
    assert set(S) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL


def test_terminal_statuses_change_only_by_explicit_retry() -> None:
    leaving_terminal = {(old, new) for old, new in TRANSITIONS if old in TERMINAL}
    assert leaving_terminal == {  # retry_job (back to waiting: killed while it waited)
        (S.ERRORED, S.PENDING),
        (S.KILLED, S.PENDING),
        (S.ERRORED, S.WAITING),
        (S.KILLED, S.WAITING),
    }
    assert not any(old in (S.FINISHED, S.SKIPPED) for old, _ in TRANSITIONS)


def test_allowed_and_forbidden_transitions() -> None:
    check_transition(S.PENDING, S.RUNNING)
    check_transition(S.RUNNING, S.PAUSED)
    check_transition(S.PAUSED, S.RUNNING)
    for old, new in [
        (S.FINISHED, S.RUNNING),
        (S.PAUSED, S.FINISHED),
        (S.PENDING, S.FINISHED),
        (None, S.FINISHED),
        (S.FINISHED, S.PENDING),
    ]:
        with pytest.raises(InvalidTransitionError):
            check_transition(old, new)


def test_job_from_document_normalises_ids_and_dates() -> None:
    naive = dt.datetime(2030, 1, 1, 12, 0)
    doc = {
        "_id": ObjectId(),
        "name": "x",
        "status": "running",
        "scheduled_for": naive,
        "created_at": naive,
        "updated_at": naive,
        "started_at": None,
        "run_started_at": naive,
        "conflicting_job_id": ObjectId(),
        "unknown_future_field": 1,
        "progress": {"done": 1, "total": 2, "fraction": 0.5, "at": naive},
        "logs": [{"at": naive, "run": 1, "level": "info", "message": "m"}],
        "history": [{"attempt": 1, "started_at": naive, "ended_at": naive, "status": "errored"}],
    }
    job = Job.model_validate(doc)
    aware = naive.replace(tzinfo=dt.UTC)  # a client without tz_aware=True reads naive UTC
    assert job.progress is not None and job.progress["at"] == aware
    assert job.logs[0]["at"] == aware
    assert (job.history[0]["started_at"], job.history[0]["ended_at"]) == (aware, aware)
    assert job.id == str(doc["_id"])
    assert job.scheduled_for.tzinfo is not None
    assert job.scheduled_for == naive.replace(tzinfo=dt.UTC)
    assert job.started_at == job.run_started_at  # first run: started_at is the run's start
    assert job.conflicting_job_id == str(doc["conflicting_job_id"])


async def test_checkpoint_outside_a_handler_is_an_error() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job = Job(id="x", name="x", status=S.PENDING, scheduled_for=now, created_at=now, updated_at=now)
    with pytest.raises(RuntimeError, match="inside a running handler"):
        await job.checkpoint({"a": 1})


def test_reading_a_job_with_wrong_typed_fields_shows_them_apart() -> None:
    from bson import ObjectId

    from job_processor.core.models import Job

    oid = ObjectId()
    doc = {
        "_id": oid,
        "name": "send-email",
        "status": "errored",
        "created_at": "yesterday",
        "scheduled_for": "soon",
        "updated_at": "later",
        "priority": "high",
        "payload": {},
    }
    job = Job.read(doc)
    assert job.invalid_fields == {
        "created_at": "yesterday",
        "priority": "high",
        "scheduled_for": "soon",
        "updated_at": "later",
    }
    assert job.created_at == job.scheduled_for == oid.generation_time  # its insert time
    assert job.priority == 0


def test_a_foreign_document_with_a_bad_created_at_or_a_string_id_still_reads() -> None:
    from bson import ObjectId

    from job_processor.core.models import Job

    oid = ObjectId()
    base = {"name": "send-email", "claim_name": "send-email", "due_ms": 1_900_000_000_000}
    job = Job.read(base | {"_id": oid, "created_at": "yesterday"})
    assert job.status == "pending" and job.created_at == oid.generation_time
    assert job.invalid_fields == {"created_at": "yesterday"}
    named = Job.read(base | {"_id": "job-1"})  # mongosh insertOne({_id: "job-1", ...})
    assert named.id == "job-1" and named.status == "pending"
    assert named.scheduled_for == named.created_at  # when it is due stands for its creation


def test_a_bare_insert_or_a_status_we_do_not_know_still_reads() -> None:
    """One such document must not break a listing (jobs list, the dashboard, Admin.list_jobs):
    a bare insert reads as the pending job it becomes once adopted; a status another program
    invented is shown as errored, the stored value in `invalid_fields`."""
    import datetime as dt

    from bson import ObjectId

    from job_processor.core.models import Job

    bare = Job.read({"_id": ObjectId(), "name": "send-email", "payload": {"to": "a"}})
    assert bare.status == "pending" and bare.invalid_fields == {}
    now = dt.datetime.now(dt.UTC)
    for status in ("queued", 5):
        for dated in ({}, {"created_at": now}):
            job = Job.read({"_id": ObjectId(), "name": "x", "status": status} | dated)
            assert job.status == "errored"
            assert job.invalid_fields == {"status": status}


def test_a_status_given_by_a_user_is_read_in_any_case() -> None:
    from job_processor.core.errors import InvalidArgumentError
    from job_processor.core.status import JobStatus, parse_status

    assert parse_status("Finished") is JobStatus.FINISHED
    assert parse_status(" ERRORED ") is JobStatus.ERRORED
    with pytest.raises(InvalidArgumentError, match="unknown status 'done': use one of pending"):
        parse_status("done")


async def test_dependencies_outside_a_handler_say_where_to_read_them() -> None:
    from job_processor.core import documents as D
    from job_processor.core.models import Job

    doc = D.new_job("page", {}, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)) | {
        "after": ["0123456789ab0123456789ab"]
    }
    with pytest.raises(RuntimeError, match=r"elsewhere, read them with await processor.get_jobs"):
        await Job.read(doc).dependencies()


def test_a_failed_jobs_error_says_its_status_once() -> None:
    from job_processor.core.errors import JobFailedError

    said = [
        str(JobFailedError("6b1", "killed", "killed")),
        str(JobFailedError("6b1", "killed", "killed (its worker stopped heartbeating)")),
        str(JobFailedError("6b1", "errored", "ValueError: bad\n  File ...")),
        str(JobFailedError("6b1", "errored", None)),
    ]
    assert said == [
        "job 6b1 killed",
        "job 6b1 killed (its worker stopped heartbeating)",
        "job 6b1 errored: ValueError: bad",
        "job 6b1 errored: no error recorded",
    ]


async def test_mocks_of_a_job_make_checkpoint_and_report_progress_awaitable() -> None:
    """They note the call before returning their coroutine (a forgotten await is said), and
    still look async to introspection: a handler's unit test with a mocked Job awaits them."""
    import inspect
    from unittest import mock

    from job_processor import Job

    for job in (mock.create_autospec(Job, instance=True), mock.AsyncMock(spec=Job)):
        await job.checkpoint({"step": 1})
        await job.report_progress(1, 2)
        job.checkpoint.assert_awaited_once_with({"step": 1})
    assert inspect.iscoroutinefunction(Job.checkpoint) or asyncio.iscoroutinefunction(
        Job.checkpoint
    )
