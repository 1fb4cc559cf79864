"""Retention rules (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from job_processor import JobDef
from job_processor.core.outcome import Ending, Policy, RunEnd, decide
from job_processor.core.retention import Retention, check_keep, of
from job_processor.core.status import JobStatus

S = JobStatus
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def test_each_kind_of_retention() -> None:
    keep = Retention(finished=DAY, failed=False)
    assert keep.expires_at(S.FINISHED, NOW) == NOW + DAY
    assert keep.expires_at(S.SKIPPED, NOW) == NOW + DAY  # kept like finished
    assert keep.expires_at(S.ERRORED, NOW) == NOW  # deleted at once
    assert keep.expires_at(S.KILLED, NOW) == NOW
    assert keep.expires_at(S.PENDING, NOW) is None  # still active
    forever = Retention(finished=True, failed=100)
    assert forever.expires_at(S.FINISHED, NOW) is None
    assert forever.expires_at(S.ERRORED, NOW) is None  # a count: the trimming pass
    assert forever.counts() == [((S.ERRORED, S.KILLED), 100)]


def test_defaults_and_definitions() -> None:
    assert Retention() == Retention(finished=DAY, failed=dt.timedelta(days=30))
    job = JobDef(handler=lambda j, s: None, keep_finished=5)
    assert of(job, Retention()) == Retention(finished=5, failed=dt.timedelta(days=30))
    assert of(None, Retention()) is None  # unknown here: kept until someone who knows decides


@pytest.mark.parametrize(
    "bad",
    [0, -1, dt.timedelta(0), "7d", 1.5, 2**63, dt.timedelta(days=3_000_000), dt.timedelta.max],
)
def test_bad_retentions_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match="keep_finished"):
        check_keep(bad, "keep_finished")


def test_the_outcome_carries_the_expiry_unless_a_hook_is_owed() -> None:
    keep = Retention(finished=DAY)
    no_hook = Policy(has_hook=False, retention=keep)
    assert decide({}, no_hook, RunEnd(Ending.RETURNED), NOW).expires_at == NOW + DAY
    hooked = Policy(has_hook=True, retention=keep)
    owed = decide({}, hooked, RunEnd(Ending.RETURNED), NOW)
    assert owed.hook_owed
    assert owed.expires_at is None  # written with the hook's record instead
    retry = decide({"max_attempts": 3}, no_hook, RunEnd(Ending.RAISED, error="e"), NOW)
    assert retry.expires_at is None  # pending again: nothing expires


def test_no_ended_job_expires_within_the_floor() -> None:
    """2 x worker_timeout, or producer_retry_seconds + 30 s when longer: a retried insert or a
    fan-out completed late still finds what the first attempt made."""
    import datetime as dt

    from job_processor.core.retention import Retention, floor_of
    from job_processor.core.status import JobStatus

    assert floor_of(30, 10) == dt.timedelta(seconds=60)
    assert floor_of(5, 60) == dt.timedelta(seconds=90)
    ended = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    floor = dt.timedelta(seconds=60)
    keep = Retention(finished=False, failed=dt.timedelta(seconds=10), floor=floor)
    assert keep.expires_at(JobStatus.FINISHED, ended) == ended + floor
    assert keep.expires_at(JobStatus.ERRORED, ended) == ended + floor
    assert Retention(floor=floor).expires_at(JobStatus.FINISHED, ended) == ended + dt.timedelta(
        days=1
    )
