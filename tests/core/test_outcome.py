"""The one outcome function, rule by rule (pure: no server, no clock)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from job_processor import Backoff
from job_processor.core.outcome import Ending, Policy, RunEnd, decide
from job_processor.core.runs import WORKER_SILENT
from job_processor.core.status import JobStatus

S = JobStatus
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
FIXED = Backoff(kind="fixed", base_seconds=5, jitter=False)
PLAIN = Policy(backoff=FIXED, has_hook=True)
RESUMABLE = Policy(resumable=True, backoff=FIXED, has_hook=True)


def job(failures: int = 0, max_attempts: int = 3) -> dict[str, Any]:
    return {"failures": failures, "max_attempts": max_attempts}


def test_returned_is_finished_with_its_result_and_owes_the_hook() -> None:
    out = decide(job(), PLAIN, RunEnd(Ending.RETURNED, result=42), NOW)
    assert (out.status, out.result, out.error, out.hook_owed) == (S.FINISHED, 42, None, True)
    no_hook = Policy(has_hook=False)
    assert not decide(job(), no_hook, RunEnd(Ending.RETURNED), NOW).hook_owed
    unknown = Policy()  # the definition is unknown here: owed, a process that knows decides
    assert decide(job(), unknown, RunEnd(Ending.RETURNED), NOW).hook_owed


def test_a_failed_attempt_retries_at_the_backoff_time_until_attempts_run_out() -> None:
    end = RunEnd(Ending.RAISED, error="ValueError: x")
    out = decide(job(0, 3), PLAIN, end, NOW)
    assert (out.status, out.failures, out.retry_at) == (S.PENDING, 1, NOW + dt.timedelta(seconds=5))
    assert not out.hook_owed
    last = decide(job(2, 3), PLAIN, end, NOW)
    assert (last.status, last.failures, last.error, last.hook_owed) == (
        S.ERRORED,
        3,
        "ValueError: x",
        True,
    )


def test_retry_later_sets_the_delay_and_do_not_retry_ends_it() -> None:
    later = decide(job(0, 5), PLAIN, RunEnd(Ending.RAISED, error="e", retry_in=0.25), NOW)
    assert later.retry_at == NOW + dt.timedelta(milliseconds=250)
    final = decide(job(0, 5), PLAIN, RunEnd(Ending.RAISED, error="e", final=True), NOW)
    assert final.status == S.ERRORED


def test_timeout_is_a_failed_attempt() -> None:
    end = RunEnd(Ending.CANCELLED, abort_reason="timeout")
    assert decide(job(0, 2), PLAIN, end, NOW).status == S.PENDING
    out = decide(job(1, 2), PLAIN, end, NOW)
    assert (out.status, out.error) == (S.ERRORED, "max runtime exceeded")


@pytest.mark.parametrize("how", [Ending.RAISED, Ending.CANCELLED, Ending.RETURNED])
def test_the_kill_signal_always_kills(how: Ending) -> None:
    out = decide(job(0, 5), PLAIN, RunEnd(how, abort_reason="killed", error="e"), NOW)
    assert (out.status, out.error, out.hook_owed) == (S.KILLED, "killed", True)


@pytest.mark.parametrize(
    ("end", "policy"),
    [
        (RunEnd(Ending.RAISED, error="e"), PLAIN),  # would retry
        (RunEnd(Ending.CANCELLED, abort_reason="timeout"), PLAIN),  # would retry
        (RunEnd(Ending.RAISED, abort_reason="shutdown"), RESUMABLE),  # would pause
        (RunEnd(Ending.RETURNED, abort_reason="shutdown"), RESUMABLE),  # would pause
        (RunEnd(Ending.RAISED, abort_reason="shutdown"), PLAIN),  # would be re-queued
        (RunEnd(Ending.CRASHED), RESUMABLE),  # would resume
        (RunEnd(Ending.CRASHED), PLAIN),  # would retry
    ],
)
def test_a_kill_requested_in_the_database_wins_over_retry_and_pause(
    end: RunEnd, policy: Policy
) -> None:
    from dataclasses import replace

    assert decide(job(0, 5), policy, end, NOW).status in (S.PENDING, S.PAUSED)
    out = decide(job(0, 5), policy, replace(end, kill_requested=True), NOW)
    assert out.status == S.KILLED


def test_a_finished_run_stands_even_if_a_kill_was_requested_meanwhile() -> None:
    end = RunEnd(Ending.RETURNED, result="done", kill_requested=True)
    assert decide(job(), PLAIN, end, NOW).status == S.FINISHED


def test_after_the_shutdown_signal_a_resumable_job_is_paused_however_it_returned() -> None:
    for end in (
        RunEnd(Ending.RETURNED, abort_reason="shutdown", result="half done"),
        RunEnd(Ending.RAISED, abort_reason="shutdown", error="JobAbortedError"),
        RunEnd(Ending.CANCELLED, abort_reason="shutdown"),
    ):
        out = decide(job(1, 3), RESUMABLE, end, NOW)
        assert (out.status, out.failures, out.hook_owed) == (S.PAUSED, 1, False)


def test_a_non_resumable_job_interrupted_by_a_stop_is_requeued_without_using_an_attempt() -> None:
    out = decide(job(0, 1), PLAIN, RunEnd(Ending.RAISED, abort_reason="shutdown"), NOW)
    assert (out.status, out.failures, out.error, out.retry_at) == (
        S.PENDING,
        0,
        "interrupted",
        NOW,
    )
    assert out.event == "job_interrupted"  # not read as a failure in the worker's log
    returned = RunEnd(Ending.RETURNED, abort_reason="shutdown", result=1)
    assert decide(job(0, 1), PLAIN, returned, NOW).status == S.FINISHED


def test_a_handlers_own_verdict_stands_after_the_shutdown_signal() -> None:
    """DoNotRetry or RetryLater raised during the stop's grace (a webhook answered 422 or 429
    with Retry-After while its worker stopped) is the job's outcome, not an interruption run
    again at once."""
    for policy in (PLAIN, RESUMABLE):
        final = RunEnd(Ending.RAISED, abort_reason="shutdown", error="422", final=True)
        out = decide(job(0, 5), policy, final, NOW)
        assert (out.status, out.error) == (S.ERRORED, "422")
        later = RunEnd(Ending.RAISED, abort_reason="shutdown", error="429", retry_in=600.0)
        out = decide(job(0, 5), policy, later, NOW)
        assert (out.status, out.failures) == (S.PENDING, 1)
        assert out.retry_at == NOW + dt.timedelta(seconds=600)


def test_a_crash_counts_as_an_attempt_for_resumable_jobs_too() -> None:
    crash = RunEnd(Ending.CRASHED)
    first = decide(job(0, 3), RESUMABLE, crash, NOW)
    assert (first.status, first.failures) == (S.PAUSED, 1)
    second = decide(job(1, 3), RESUMABLE, crash, NOW)
    assert (second.status, second.failures) == (S.PAUSED, 2)
    third = decide(job(2, 3), RESUMABLE, crash, NOW)
    assert third.status == S.ERRORED
    assert third.error == f"{WORKER_SILENT}: crashed during 3 attempts, not resumed again"
    assert third.hook_owed


def test_a_crash_of_a_plain_job_is_a_failed_attempt() -> None:
    out = decide(job(0, 1), PLAIN, RunEnd(Ending.CRASHED), NOW)
    assert (out.status, out.error) == (S.ERRORED, WORKER_SILENT)
    killed = decide(job(0, 1), PLAIN, RunEnd(Ending.CRASHED, kill_requested=True), NOW)
    assert (killed.status, killed.error) == (S.KILLED, "killed (its worker stopped heartbeating)")


def test_lost_track_is_recovered_like_a_crash_with_its_reason() -> None:
    end = RunEnd(Ending.LOST_TRACK, error="its worker lost track of the run")
    out = decide(job(0, 2), PLAIN, end, NOW)
    assert (out.status, out.failures, out.error) == (
        S.PENDING,
        1,
        "its worker lost track of the run",
    )


@pytest.mark.parametrize("how", [Ending.INVALID, Ending.UNRECORDABLE])
def test_invalid_or_unrecordable_runs_are_errored_for_good(how: Ending) -> None:
    out = decide(job(0, 5), PLAIN, RunEnd(how, error="why"), NOW)
    assert (out.status, out.error, out.hook_owed) == (S.ERRORED, "why", True)


@pytest.mark.parametrize("how", [Ending.INVALID, Ending.UNRECORDABLE])
def test_a_kill_wins_over_an_invalid_or_unrecordable_run(how: Ending) -> None:
    for end in (
        RunEnd(how, error="why", kill_requested=True),
        RunEnd(how, error="why", abort_reason="killed"),
    ):
        out = decide(job(0, 5), PLAIN, end, NOW)
        assert (out.status, out.error, out.hook_owed) == (S.KILLED, "killed; why", True)


def test_a_kill_of_a_lost_run_says_why_it_was_lost() -> None:
    end = RunEnd(Ending.LOST_TRACK, error="its worker lost track of the run", kill_requested=True)
    out = decide(job(0, 2), PLAIN, end, NOW)
    assert (out.status, out.error) == (S.KILLED, "killed (its worker lost track of the run)")


@pytest.mark.parametrize(
    "bad", ["x", None, True, [1], {"n": 1}, float("nan"), float("inf"), -float("inf"), 1e300]
)
def test_wrong_typed_counts_written_by_another_program_never_raise(bad: Any) -> None:
    doc = {"failures": bad, "max_attempts": bad}
    invalid = decide(doc, PLAIN, RunEnd(Ending.INVALID, error="invalid job document: x"), NOW)
    assert (invalid.status, invalid.failures) == (S.ERRORED, 1)  # a failed attempt, the last
    crashed = decide(doc, PLAIN, RunEnd(Ending.CRASHED), NOW)
    assert (crashed.status, crashed.failures) == (S.ERRORED, 1)  # max_attempts read as 1


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -1, 1e12, "5", True, 1j])
def test_retry_later_refuses_a_delay_that_cannot_be_scheduled(delay: Any) -> None:
    """Raised in a handler, the ValueError fails the attempt like any error, naming the fix."""
    from job_processor import RetryLater

    with pytest.raises(ValueError, match=r"RetryLater\(delay=...\) must be a number of seconds"):
        RetryLater(delay)
    assert RetryLater(0).delay == 0.0 and RetryLater(365 * 24 * 3600).delay == 31536000.0
    assert RetryLater(Decimal("1.5")).delay == 1.5 and RetryLater(Fraction(1, 4)).delay == 0.25


@pytest.mark.parametrize("delay", [10**400, Fraction(10**400, 1), -(10**400)])
def test_retry_later_refuses_a_huge_exact_number_with_its_value_error(delay: Any) -> None:
    """float() of an int or Fraction past a float's range raised OverflowError: RetryLater says
    what the documented ValueError says (0 to a year)."""
    from job_processor import RetryLater

    with pytest.raises(ValueError, match=r"RetryLater\(delay=\.\.\.\) must be a number of seconds"):
        RetryLater(delay)
