"""Retry decisions and backoff maths: pure functions of the definition, the job and `now`."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from .definitions import Backoff
from .models import JobStatus

S = JobStatus
#: Run records kept on a job.
HISTORY_LIMIT = 20


def backoff_delay(
    backoff: Backoff, failures: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next attempt, after `failures` failed attempts (>= 1)."""
    n = max(1, failures)
    if backoff.kind == "fixed":
        delay = backoff.base_seconds
    elif backoff.kind == "linear":
        delay = backoff.base_seconds * n
    else:
        delay = backoff.base_seconds * 2 ** min(n - 1, 60)
    if backoff.max_seconds is not None:
        delay = min(delay, backoff.max_seconds)
    if backoff.jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


def history_entry(
    doc: dict[str, Any], status: JobStatus, error: str | None, now: dt.datetime
) -> dict[str, Any]:
    return {
        "attempt": doc.get("attempt"),
        "worker_id": doc.get("worker_id"),
        "started_at": doc.get("run_started_at"),
        "ended_at": now,
        "status": status.value,
        "error": error.splitlines()[0][:500] if error else None,
    }


def with_history(doc: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(doc.get("history") or []), entry][-HISTORY_LIMIT:]


def after_failure(
    doc: dict[str, Any],
    backoff: Backoff,
    now: dt.datetime,
    retry_in: float | None = None,
    final: bool = False,
    rand: Callable[[], float] = random.random,
) -> tuple[JobStatus, dict[str, Any]]:
    """A failed attempt: back to pending (with its time) while attempts remain, else errored.
    Returns the status and the extra fields to write."""
    failures = int(doc.get("failures") or 0) + 1
    extra: dict[str, Any] = {"failures": failures}
    if final or failures >= int(doc.get("max_attempts") or 1):
        return S.ERRORED, extra
    delay = retry_in if retry_in is not None else backoff_delay(backoff, failures, rand)
    extra["scheduled_for"] = now + dt.timedelta(milliseconds=int(delay * 1000))
    return S.PENDING, extra
