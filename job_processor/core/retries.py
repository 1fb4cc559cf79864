"""Retries, pure: the backoff's delay after n failures, and why a `retry_job` did not apply."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .definitions import Backoff

#: The longest wait between two attempts: a year.
MAX_DELAY_SECONDS = 365 * 24 * 3600


def backoff_delay(
    backoff: Backoff, failures: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next attempt, after `failures` failed attempts (>= 1): at
    most a year, `max_seconds=None` included (an exponential delay past year 9999 cannot be
    written: the run was errored by an internal error, a crashed one never recovered)."""
    n = max(1, failures)
    if backoff.kind == "fixed":
        delay = backoff.base_seconds
    elif backoff.kind == "linear":
        delay = backoff.base_seconds * n
    else:
        delay = backoff.base_seconds * 2 ** min(n - 1, 60)
    if backoff.max_seconds is not None:
        delay = min(delay, backoff.max_seconds)
    delay = min(delay, MAX_DELAY_SECONDS)
    if backoff.jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


#: The statuses a retry applies to.
RETRYABLE = frozenset({"errored", "killed"})


def retry_refusal(doc: dict[str, Any] | None) -> str:
    """Why a retry (errored | killed -> pending) did not apply to the job as it is now."""
    if doc is None:
        return "not found"
    status = doc.get("status")
    if status not in RETRYABLE:
        return f"{status}: only errored or killed jobs can be retried"
    if doc.get("exit_hook") == "owed":
        return (
            f"its on_job_exited for the {status} exit has not run yet (a worker that defines "
            f"{doc.get('name')!r} runs it within about its worker_timeout, plus the hook's "
            "timeout when a process other than a worker recorded it); retry it once it has, "
            "so that the hook sees this exit"
        )
    return f"{status}: it changed meanwhile; try again"
