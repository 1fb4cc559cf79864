"""What the registry tells an operator about names no live worker serves (no server needed)."""

from __future__ import annotations

import datetime as dt

from job_processor.core.coverage import coverage, defined_differently, registrar

NOW = dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC)
SEEN = {"kind": "job", "last_seen": NOW - dt.timedelta(minutes=5)}


def test_a_delivery_name_is_unserved_only_while_deliveries_wait() -> None:
    known = {
        "report": SEEN,
        "webhook-delivery": SEEN,
        "shipped:send-email": SEEN | {"delivery": True},
    }
    idle = coverage(known, [], {}, [], NOW)
    assert idle.unserved == ["report"]  # the built-in and the emitted names are not the user's
    assert idle.warnings == [
        "job 'report': no live worker can run it; start a worker that defines it, or, if it "
        "is gone from the code, job-processor names forget report"
    ]
    queued = {"webhook-delivery": {"pending": 2}, "shipped:send-email": {"pending": 1}}
    waiting = coverage(known, [], queued, [], NOW)
    assert waiting.unserved == ["report", "shipped:send-email", "webhook-delivery"]
    assert waiting.warnings[1:] == [
        "job 'shipped:send-email': no live worker can run it (1 queued); start a worker whose "
        "subscribers= has 'send-email'",
        "job 'webhook-delivery': no live worker can run it (2 queued); start a worker: each one "
        "delivers webhooks unless webhook_options={'deliver': False}",
    ]


def test_a_tagged_name_names_the_tag_to_serve() -> None:
    known = {"report": SEEN | {"tag": "main"}}
    (warning,) = coverage(known, [{"_id": "w1", "names": ["other"]}], {}, [], NOW).warnings
    assert warning == (
        "job 'report' (tag 'main'): no live worker can run it; start a worker that defines it, "
        "with worker_tags that include 'main' (or None), or, if it is gone from the code, "
        "job-processor names forget report"
    )


def test_the_registry_shows_the_last_started_live_worker_that_defines_a_name() -> None:
    """Of the live workers that define a name (its digest on their document, or they claim
    it), the most recently started; ties go to the greatest id."""
    at = NOW - dt.timedelta(hours=1)
    live = [
        {"_id": "w1", "started_at": at, "definitions": {"report": "aaa"}},
        {"_id": "w2", "started_at": at + dt.timedelta(seconds=5), "definitions": {"report": "bbb"}},
        {"_id": "w3", "started_at": at + dt.timedelta(seconds=9), "definitions": {"other": "ccc"}},
        {"_id": "w0", "started_at": at + dt.timedelta(seconds=5), "names": ["report"]},
    ]
    assert registrar("report", live) == "w2"  # w3 does not define it; w2 and w0 tie on time
    assert registrar("report", live[:1] + live[3:]) == "w0"
    assert registrar("other", live) == "w3"
    assert registrar("nowhere", live) is None
    assert registrar("report", [{"_id": "old", "names": ["report"]}, live[0]]) == "w1"


def test_a_starting_worker_names_the_live_workers_that_define_its_names_differently() -> None:
    live = [
        {"_id": "me", "definitions": {"report": "aaa", "mail": "mmm"}},
        {"_id": "w1", "definitions": {"report": "bbb", "mail": "mmm"}},
        {"_id": "w0", "definitions": {"report": "ccc"}},
        {"_id": "w2", "names": ["report"]},  # no digests (an older version): nothing to say
    ]
    mine = {"report": "aaa", "mail": "mmm", "new": "nnn"}
    assert defined_differently(mine, "me", live) == {"report": ["w0", "w1"]}


def test_the_resume_command_of_a_paused_name_can_be_run_as_it_is_shown() -> None:
    """Any non-empty text is a job name ("send email", an event's "order placed:mail"): the
    paused warning's command left it unquoted, so `job-processor names resume send email`, run
    as shown, failed (two arguments); the other warnings' commands quote their names."""
    known = {"send email": SEEN}
    live = [{"_id": "w1", "names": ["send email"]}]
    found = coverage(known, live, {"send email": {"pending": 1}}, ["send email"], NOW, {})
    assert found.warnings == []  # nothing due: nothing held
    held = coverage(
        known, live, {"send email": {"pending": 1}}, ["send email"], NOW, {"send email": 1}
    )
    assert held.warnings == [
        "'send email' is paused: 1 due job waits until it is resumed "
        "(job-processor names resume 'send email')"
    ]


def test_a_name_gone_from_the_code_with_queued_jobs_is_given_a_way_out() -> None:
    """Queued jobs of a name no worker defines: the warning said only "start a worker that
    defines it" (`names forget` refuses while jobs of it are queued): it also says how to end
    them first, with commands that run as printed."""
    (warning,) = coverage({"-dash": SEEN}, [], {"-dash": {"pending": 2}}, [], NOW).warnings
    assert warning == (
        "job '-dash': no live worker can run it (2 queued); start a worker that defines it, "
        "or, if it is gone from the code, kill its queued jobs (job-processor jobs list "
        "--name=-dash, then jobs kill ID...), then job-processor names forget -- -dash"
    )
