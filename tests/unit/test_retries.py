from __future__ import annotations

import datetime as dt

import pytest

from job_processor import Backoff
from job_processor.models import JobStatus
from job_processor.retries import HISTORY_LIMIT, after_failure, backoff_delay, with_history

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("fixed", [3, 3, 3, 3]),
        ("linear", [3, 6, 9, 12]),
        ("exponential", [3, 6, 12, 24]),
    ],
)
def test_backoff_kinds(kind: str, expected: list[float]) -> None:
    b = Backoff(kind=kind, base_seconds=3, max_seconds=None, jitter=False)  # type: ignore[arg-type]
    assert [backoff_delay(b, n) for n in (1, 2, 3, 4)] == expected


def test_backoff_cap_and_jitter_bounds() -> None:
    b = Backoff(kind="exponential", base_seconds=2, max_seconds=600, jitter=False)
    assert backoff_delay(b, 30) == 600
    j = Backoff(kind="exponential", base_seconds=2, max_seconds=600, jitter=True)
    assert backoff_delay(j, 3, rand=lambda: 0.0) == 4
    assert backoff_delay(j, 3, rand=lambda: 1.0) == 8


def test_after_failure_retries_until_attempts_run_out() -> None:
    b = Backoff(kind="fixed", base_seconds=5, jitter=False)
    doc = {"failures": 0, "max_attempts": 3}
    status, extra = after_failure(doc, b, NOW)
    assert status == JobStatus.PENDING
    assert extra == {"failures": 1, "scheduled_for": NOW + dt.timedelta(seconds=5)}
    status, extra = after_failure({"failures": 2, "max_attempts": 3}, b, NOW)
    assert (status, extra) == (JobStatus.ERRORED, {"failures": 3})


def test_retry_later_and_do_not_retry() -> None:
    b = Backoff(jitter=False)
    status, extra = after_failure({"failures": 0, "max_attempts": 5}, b, NOW, retry_in=0.25)
    assert extra["scheduled_for"] == NOW + dt.timedelta(milliseconds=250)
    status, _ = after_failure({"failures": 0, "max_attempts": 5}, b, NOW, final=True)
    assert status == JobStatus.ERRORED


def test_history_is_bounded() -> None:
    doc = {"history": [{"attempt": i} for i in range(HISTORY_LIMIT)]}
    h = with_history(doc, {"attempt": 99})
    assert len(h) == HISTORY_LIMIT
    assert h[-1] == {"attempt": 99}
    assert h[0] == {"attempt": 1}
