"""Runs, failures and attempts read so that they add up, and each run shows its own outcome
(the history entries as the final writes record them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor.core import documents as D
from job_processor.core.outcome import Ending, Policy, RunEnd, decide
from job_processor.core.runs import WORKER_SILENT, run_outcome, runs_summary

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def entry(end: RunEnd, resumable: bool = False, failures: int = 0, attempts: int = 3) -> Any:
    claimed = D.as_running(
        D.new_job("x", {}, now=NOW, max_attempts=attempts, resumable=resumable), "w", NOW
    ) | {"failures": failures}
    outcome = decide(claimed, Policy(resumable=resumable), end, NOW, rand=lambda: 0.5)
    return D.history_entry(claimed, outcome, NOW), outcome


def test_each_run_shows_what_it_came_to_not_the_status_after_it() -> None:
    failed, outcome = entry(RunEnd(Ending.RAISED, error="ValueError: boom"))
    assert outcome.status == "pending"  # retried later: the job is pending again...
    assert run_outcome(failed) == "failed"  # ...but this run failed
    assert run_outcome(entry(RunEnd(Ending.RAISED, error="x"), failures=2)[0]) == "failed"
    assert run_outcome(entry(RunEnd(Ending.RETURNED))[0]) == "finished"
    assert run_outcome(entry(RunEnd(Ending.CRASHED))[0]) == "crashed"
    assert run_outcome(entry(RunEnd(Ending.CRASHED), resumable=True)[0]) == "crashed"
    lost = RunEnd(
        Ending.LOST_TRACK, error="its worker lost track of the run (the final write failed)"
    )
    assert run_outcome(entry(lost)[0]) == "lost"  # reconciled: not the handler's failure
    graceful = RunEnd(Ending.RETURNED, abort_reason="shutdown")
    assert run_outcome(entry(graceful, resumable=True)[0]) == "paused"
    stopped = RunEnd(Ending.CANCELLED, abort_reason="shutdown")
    assert run_outcome(entry(stopped)[0]) == "interrupted"
    assert run_outcome(entry(RunEnd(Ending.RAISED, abort_reason="killed"))[0]) == "killed"


def test_a_run_recovered_from_a_silent_worker_reads_as_crashed_in_old_documents_too() -> None:
    """The error says what the sweeper knows (no heartbeat), not a crash it cannot tell from a
    lost network or a blocked event loop; documents written before, "worker crashed", read
    the same (the run's outcome, "crashed", is what readers match)."""
    assert WORKER_SILENT == (
        "worker stopped heartbeating (crashed, lost MongoDB, or its event loop was blocked)"
    )
    for error in (WORKER_SILENT, "worker crashed", "worker crashed: crashed during 3 attempts"):
        assert run_outcome({"status": "errored", "error": error}) == "crashed"
        assert run_outcome({"status": "paused", "error": error}) == "crashed"


def test_runs_failures_and_attempts_add_up() -> None:
    # a resumable job paused twice by graceful stops, now in its third run: no failure used
    assert runs_summary(3, 0, 3) == "run 3 · 0 of 3 failures used"
    # retried by hand after three failures (failures count afresh), then one more failure
    assert runs_summary(6, 1, 3) == "run 6 · 1 of 3 failures used"
    assert runs_summary(0, 0, 1) == "not run yet · 0 of 1 failure used"
    assert runs_summary(0, 0, 1, "skipped") == "never ran · 0 of 1 failure used"


def test_a_claim_put_back_unstarted_reads_as_not_started_whatever_put_it_back() -> None:
    """A claim whose reply came while its worker was stopping, or being declared dead, is
    put back with no attempt used, as one whose reply was lost: its run never started, it
    did not fail."""
    for why in (
        "its claim's reply was lost",
        "claimed while its worker was stopping",
        "claimed while its worker was being declared dead",
    ):
        record, outcome = entry(RunEnd(Ending.UNSTARTED, error=f"{why}: not run"), resumable=True)
        assert outcome.failures == 0
        assert run_outcome(record) == "not started", why


def test_a_paused_job_put_back_unstarted_is_paused_again() -> None:
    """A claim put back unstarted leaves the job as it was before the claim: a resumable job
    that was paused (its last run's record says so) is paused again, not pending; one that
    was pending (never run, or retried after a failure) is pending."""
    put_back = RunEnd(Ending.UNSTARTED, error="claimed while its worker was stopping: not run")
    for before, after in (("paused", "paused"), ("pending", "pending"), (None, "pending")):
        claimed = D.as_running(D.new_job("x", {}, now=NOW, resumable=True), "w", NOW)
        if before is not None:
            claimed["history"] = [{"attempt": 1, "status": before, "error": None}]
            claimed["output"] = {"result": None, "duration_ms": 5}  # its last end's
        outcome = decide(claimed, Policy(resumable=True), put_back, NOW)
        assert (outcome.status, outcome.failures, outcome.started) == (after, 0, False), before
        assert run_outcome(D.history_entry(claimed, outcome, NOW)) == "not started"


def test_a_job_retried_after_a_kill_while_paused_is_put_back_pending() -> None:
    """A resumable job killed while paused, then retried (errored | killed -> pending): its
    last run's record still says `paused` (the kill was no run), but it was `pending` when
    claimed, so a claim put back unstarted leaves it `pending`."""
    put_back = RunEnd(Ending.UNSTARTED, error="claimed while its worker was stopping: not run")
    job = D.new_job("x", {}, now=NOW, resumable=True)
    job["history"] = [{"attempt": 1, "status": "paused", "error": None}]
    job["output"] = {"result": None, "error": None, "duration_ms": 5}  # the paused run's
    killed = D.applied(job, D.kill_update(NOW, None))
    retried = D.applied(killed, D.retry_update(killed | {"_id": 1}, NOW, exclusive=False))
    claimed = D.as_running(retried, "w", NOW)
    outcome = decide(claimed, Policy(resumable=True), put_back, NOW)
    assert (outcome.status, outcome.failures, outcome.started) == ("pending", 0, False)
    # a paused job claimed as it was is paused again
    paused = D.as_running(job, "w", NOW)
    assert decide(paused, Policy(resumable=True), put_back, NOW).status == "paused"
