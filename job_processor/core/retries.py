"""Backoff maths: a pure function of the definition's Backoff and the failures so far."""

from __future__ import annotations

import random
from collections.abc import Callable

from .definitions import Backoff


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
