"""How an action that makes one job is reported (no server needed)."""

from __future__ import annotations

import datetime as dt

import pytest

from job_processor.cli.common import report
from job_processor.core import documents as D
from job_processor.core.models import Job
from job_processor.ops.admin import ActionResult

NOW = dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC)


def held_by(status: str, **fields: object) -> ActionResult:
    doc = D.new_job("sync", {}, now=NOW - dt.timedelta(minutes=5), key="k1") | {
        "status": status,
        **fields,
    }
    job = Job.read(doc)
    return ActionResult(
        action="job_created", actor="cli", at=NOW, jobs=[job], skipped={job.id: "key held"}
    )


@pytest.mark.parametrize(
    ("status", "fields", "said"),
    [
        ("pending", {}, "(pending, due now)"),
        (
            "running",
            {"started_at": NOW - dt.timedelta(minutes=1)},
            "(running, since 2030-01-01T08:59:00+00:00)",
        ),
        ("paused", {}, "(paused)"),
    ],
)
def test_a_held_key_names_the_holder_as_it_is(
    capsys: pytest.CaptureFixture[str], status: str, fields: dict[str, object], said: str
) -> None:
    result = held_by(status, **fields)
    assert report(result, as_json=False) == 1
    out = capsys.readouterr().out
    job_id = result.jobs[0].id
    assert out == f"not created: job sync {job_id} {said} holds the key 'k1' while it is active\n"


async def test_an_empty_database_is_said_with_both_likely_causes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No database of the server holds job-processor collections: a typo, or a fresh one."""
    from types import SimpleNamespace

    from job_processor.cli.common import warn_if_empty

    async def no_collections() -> list[str]:
        return []

    async def databases() -> list[str]:
        return ["admin", "fresh"]

    client = SimpleNamespace(list_database_names=databases)
    fresh = SimpleNamespace(name="fresh", list_collection_names=no_collections, client=client)
    await warn_if_empty(fresh, "job_processor_")
    assert capsys.readouterr().err == (
        "warning: database 'fresh' holds no job-processor data (job_processor_*): check "
        "the database name in MONGODB_URL (or no worker or producer has used it yet)\n"
    )


def test_jobs_show_writes_every_time_in_one_form() -> None:
    from job_processor.cli.jobs import shown_time

    moment = dt.datetime(2030, 1, 31, 9, 0, 0, 123456, tzinfo=dt.UTC)
    assert shown_time(moment) == "2030-01-31T09:00:00.123Z"  # as the history's datetimes
    assert shown_time("2030-01-31T09:00:00.123456Z") == "2030-01-31T09:00:00.123Z"  # JSON's
    assert shown_time("2030-01-31T10:00:00+01:00") == "2030-01-31T09:00:00.000Z"
    assert shown_time("simple") == "simple" and shown_time(3) == 3
    assert shown_time("2030-01-31T09:00:00") == "2030-01-31T09:00:00"  # no zone: as it is


def test_jobs_show_leaves_a_key_that_looks_like_a_time_as_it_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from job_processor.cli.jobs import show_job

    key = "2024-05-01T00:00:00+02:00"
    show_job(Job.read(D.new_job("sync", {}, now=NOW, key=key)))
    out = capsys.readouterr().out
    assert f"key:                {key}\n" in out
    assert "created_at:         2030-01-01T09:00:00.000Z\n" in out


def test_a_job_created_for_a_paused_name_says_it_waits_for_the_resume(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = Job.read(D.new_job("sync", {}, now=NOW))
    result = ActionResult(
        action="job_created", actor="cli", at=NOW, jobs=[job], changed=[job.id], count=1
    )
    result.detail["paused"] = ["sync"]
    assert report(result, as_json=False) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"created job sync {job.id} (pending, due now)",
        "  'sync' is paused: no worker runs it until `job-processor names resume sync`",
    ]
    retried = ActionResult(action="jobs_retried", actor="cli", at=NOW, changed=[job.id], count=1)
    retried.detail["paused"] = ["sync"]
    assert report(retried, as_json=False) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"jobs retried: 1 ({job.id})",
        "  'sync' is paused: no worker runs it until `job-processor names resume sync`",
    ]


def test_the_resume_command_of_a_paused_name_quotes_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A name with a space: the command said to run was two arguments."""
    result = ActionResult(action="jobs_retried", actor="cli", at=NOW, changed=["x"], count=1)
    result.detail["paused"] = ["send email"]
    assert report(result, as_json=False) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "  'send email' is paused: no worker runs it until "
        "`job-processor names resume 'send email'`"
    )


def test_a_job_running_again_shows_its_last_error_as_the_previous_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from job_processor.cli.jobs import show_job

    doc = D.new_job("sync", {}, now=NOW) | {
        "status": "pending",
        "attempt": 1,
        "failures": 1,
        "max_attempts": 3,
        "output": {"error": "ValueError: boom", "result": None},
    }
    show_job(Job.read(doc))
    out = capsys.readouterr().out
    assert "error of the previous run:\n  ValueError: boom" in out
    show_job(Job.read(doc | {"status": "errored", "ended_at": NOW}))
    assert "\nerror:\n  ValueError: boom" in capsys.readouterr().out


def test_a_crons_next_slot_is_shown_in_its_own_time_zone() -> None:
    import zoneinfo

    from job_processor.cli.status import local_time

    paris = dt.datetime(2030, 1, 31, 9, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert local_time(paris) == "2030-01-31 09:00:00+01:00"
    assert local_time("2030-01-31T09:00:00.123+01:00") == "2030-01-31 09:00:00+01:00"
    assert local_time(None) == "-"


def test_ids_of_no_job_are_bad_input_not_nothing_done(capsys: pytest.CaptureFixture[str]) -> None:
    missing = ActionResult(
        action="jobs_killed", actor="cli", at=NOW, skipped={"0123456789ab0123456789ab": "not found"}
    )
    assert report(missing, as_json=False) == 2
    assert "0123456789ab0123456789ab: nothing done: not found" in capsys.readouterr().out
    ended = ActionResult(
        action="jobs_killed",
        actor="cli",
        at=NOW,
        skipped={"0123456789ab0123456789ab": "not found", "0123456789ab0123456789ac": "finished"},
    )
    assert report(ended, as_json=False) == 1  # one of them exists: nothing to do, as said


def test_events_show_prints_a_delivery_error_the_column_cuts_in_full(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from job_processor.cli.events import show_event
    from job_processor.core.models import Event

    why = "secret_ref 'crm' is not among this process's webhook_secrets: pass it to init"
    event = Event.model_validate(
        {
            "_id": "0123456789ab0123456789ab",
            "name": "shipped",
            "payload": {},
            "emitted_at": NOW,
            "deliveries": [
                {
                    "job_id": "0123456789ab0123456789ac",
                    "event_id": "0123456789ab0123456789ab",
                    "target": "webhook:abc",
                    "kind": "webhook",
                    "status": "errored",
                    "error": f"{why}\nTraceback ...",
                }
            ],
        }
    )
    show_event(event)
    out = capsys.readouterr().out
    assert f"errors:\n  webhook:abc: {why}\n" in out


def test_ports_and_timeouts_out_of_range_are_usage_errors() -> None:
    import argparse

    from job_processor.cli.parser import seconds
    from job_processor.cli.run import _metrics_port_in_use

    for port in (70000, 65536, -1):
        said = _metrics_port_in_use("127.0.0.1", port)
        assert said == f"--metrics-port {port}: a port is a number from 0 to 65535"
    assert _metrics_port_in_use("127.0.0.1", 0) is None
    assert seconds("2.5") == 2.5
    for bad in ("-1", "0", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)


def test_status_lists_each_workers_instance(capsys: pytest.CaptureFixture[str]) -> None:
    from job_processor.cli.status import show_status
    from job_processor.core.models import ProcessorStatus, WorkerInfo

    worker = WorkerInfo(
        id="vm-7-abc", hostname="vm", pid=7, instance_id="runner-1", started_at=NOW, last_seen=NOW
    )
    show_status(ProcessorStatus(now=NOW, worker_id="cli", workers=[worker], queue={}, jobs={}))
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split() == ["ID", "HOST", "PID", "INSTANCE", "TAGS", "SLOTS", "RUNNING", "SEEN"]
    assert row.split()[:5] == ["vm-7-abc", "vm", "7", "runner-1", "any"]


def test_jobs_list_marks_a_running_job_whose_kill_was_requested() -> None:
    from job_processor.cli.jobs import job_rows

    def row_status(status: str, **fields: object) -> str:
        doc = D.new_job("sync", {}, now=NOW) | {"status": status, **fields}
        return str(job_rows([Job.read(doc)])[0][2])

    assert row_status("running", kill_requested_at=NOW) == "running (killing)"
    assert row_status("running") == "running"
    assert row_status("killed", kill_requested_at=NOW) == "killed"


def test_status_shows_a_limits_starts_in_its_rate_window() -> None:
    """A rate-only limit read "limit partner-api: 0 of - running": its starts were missing."""
    from job_processor.cli.status import limit_line

    rate_only = {"key": "partner-api", "running": 0, "concurrency": None}
    rate_only |= {"started_in_window": 3, "rate": 10, "per_seconds": 60.0}
    assert limit_line(rate_only) == "limit partner-api: 0 of - running, 3 of 10 starts per 60 s"
    folded = {"key": "tenant:{t} (other keys)", "running": 5, "concurrency": 10, "keys": 5}
    assert limit_line(folded) == "limit tenant:{t} (other keys): 5 of 10 running (across 5 keys)"
    # keys of two deploys (4 per key, 10 per 60 s; 2 per key, 100 per 1 s): no one window
    mixed = folded | {"concurrency": 6, "keys": 2, "started_in_window": 2, "rate": None}
    mixed |= {"per_seconds": None, "varies": ["concurrency", "rate"]}
    assert limit_line(mixed) == (
        "limit tenant:{t} (other keys): 5 of 6 running, 2 starts, each in its key's rate"
        " window (across 2 keys, their concurrency/rate settings differ)"
    )
