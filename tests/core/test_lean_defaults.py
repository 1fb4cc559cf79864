"""Lean documents (defaults left out) read and run as the complete shape did."""

from __future__ import annotations

import datetime as dt

from job_processor import JobDef
from job_processor.core.documents import end_update
from job_processor.core.models import JobStatus
from job_processor.core.outcome import Outcome
from job_processor.core.settings import Retention
from job_processor.engine.execution import policy_of
from job_processor.engine.sentry import _context

NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)


async def noop(job: object, signal: object) -> None:
    return None


def test_the_end_always_sets_updated_at_a_checkpoint_wrote_it_unseen_by_the_claim() -> None:
    lean = {"_id": 1, "name": "a", "run_id": "r", "run_started_at": NOW}
    update = end_update(lean, Outcome(JobStatus.FINISHED), NOW, end_id="e", writer="w")
    assert update["$set"]["updated_at"] == NOW == update["$set"]["ended_at"]


def test_a_document_without_resumable_is_not_resumable_whatever_the_definition() -> None:
    resumable = JobDef(handler=noop, resumable=True)
    assert policy_of(resumable, {"name": "a"}, Retention()).resumable is False
    assert policy_of(resumable, {"name": "a", "resumable": True}, Retention()).resumable


def test_sentry_context_of_a_lean_document_shows_the_defaults() -> None:
    context = _context({"name": "a", "priority": 0})
    assert context["type"] == "simple"
    assert context["max_attempts"] == "1" and context["failures"] == "0"
