from __future__ import annotations

import pytest

from job_processor import Backoff
from job_processor.core.documents import HISTORY_LIMIT, with_history
from job_processor.core.retries import backoff_delay


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


def test_history_is_bounded() -> None:
    doc = {"history": [{"attempt": i} for i in range(HISTORY_LIMIT)]}
    h = with_history(doc, {"attempt": 99})
    assert len(h) == HISTORY_LIMIT
    assert h[-1] == {"attempt": 99}
    assert h[0] == {"attempt": 1}


def test_an_uncapped_backoff_waits_a_year_at_most() -> None:
    """Backoff(max_seconds=None): base * 2**(n-1) passed year 9999 after about 33 failures
    (base 60 s): the retry's date could not be computed, the run was errored by an internal
    error, and a crashed run's recovery failed at every sweep, the job left running."""
    import datetime as dt

    from job_processor.core.definitions import Backoff
    from job_processor.core.retries import MAX_DELAY_SECONDS, backoff_delay

    uncapped = Backoff(kind="exponential", base_seconds=60, max_seconds=None, jitter=False)
    assert backoff_delay(uncapped, 33) == MAX_DELAY_SECONDS == 365 * 24 * 3600
    assert backoff_delay(uncapped, 3) == 240
    far = dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=backoff_delay(uncapped, 99))
    assert far.year == 2031
