"""What a webhook receiver's answer means for the delivery: delivered, retried (after its
Retry-After, capped), failed for good, or gone (410: the endpoint is disabled)."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass
from typing import Literal

#: Retry-After is honoured up to this many seconds.
RETRY_AFTER_CAP = 3600.0

Verdict = Literal["delivered", "retry", "retry_later", "fail", "gone"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay: float | None = None


def retry_after_seconds(value: str | None, now: dt.datetime) -> float | None:
    """Retry-After as seconds (a number of seconds, or an HTTP date), capped; None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def classify(status: int, retry_after: str | None, now: dt.datetime) -> Decision:
    """What an HTTP status means for the delivery (the issue's list, in order)."""
    if 200 <= status < 300:
        return Decision("delivered")
    if status == 410:
        return Decision("gone")
    if status in (429, 503):
        delay = retry_after_seconds(retry_after, now)
        if delay is not None:
            return Decision("retry_later", delay)
        return Decision("retry")
    if status in (408, 425):
        return Decision("retry")
    if 400 <= status < 500:
        return Decision("fail")
    return Decision("retry")  # 5xx, 3xx (redirects are not followed), 1xx
