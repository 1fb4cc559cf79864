"""What the registry tells an operator about names no live worker serves (no server needed)."""

from __future__ import annotations

import datetime as dt

from job_processor.core.coverage import coverage

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
        "job 'report': no live worker can run it; start a worker that defines it"
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
        "with worker_tags that include 'main' (or None)"
    )
